"""Evaluation reports: a JSON file with everything and a Markdown summary."""

from __future__ import annotations

import json
import math
import os

import numpy as np


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _is_scalar(value) -> bool:
    return isinstance(value, (int, float, str, bool, np.generic)) or value is None


def to_markdown(results: dict, title: str = "Evaluation report") -> str:
    """Scalars as a key/value table; dicts of scalars as their own tables; dicts of dicts of scalars as
    a table with one row per key. Larger structures stay in the JSON only."""
    lines = [f"# {title}", ""]
    scalars = {k: v for k, v in results.items() if _is_scalar(v)}
    if scalars:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in scalars.items()] + [""]
    for key, value in results.items():
        if not isinstance(value, dict) or not value:
            continue
        if all(_is_scalar(v) for v in value.values()):
            if len(value) > 50:
                continue
            lines += [f"## {key}", "", "| name | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in value.items()] + [""]
        elif all(isinstance(v, dict) and all(_is_scalar(x) for x in v.values()) for v in value.values()):
            columns = sorted({c for v in value.values() for c in v})
            lines += [f"## {key}", "", "| name | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
            lines += [f"| {k} | " + " | ".join(_fmt(v.get(c, "")) for c in columns) + " |" for k, v in value.items()]
            lines.append("")
    return "\n".join(lines)


def write_report(results: dict, out_dir: str, name: str = "report", title: str = "Evaluation report") -> dict:
    """Write `<name>.json` (all results) and `<name>.md` (summary tables) into `out_dir`; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f"{name}.json")
    md_path = os.path.join(out_dir, f"{name}.md")
    with open(json_path, "w") as f:
        json.dump(_jsonable(results), f, indent=1, sort_keys=False)
    with open(md_path, "w") as f:
        f.write(to_markdown(results, title) + "\n")
    return {"json": json_path, "markdown": md_path}
