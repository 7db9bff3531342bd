"""Paired per-prompt score differences between two evaluated models of experiments/ella_shapes/run.sh.

    python experiments/ella_shapes/paired.py runs/ella_shapes_short tsc:unet tsc:ln [--report=report_legacy.json]
        [--prefix=eval100] [name=path/to/eval100_x ...]

Each `a:b` reads <run>/eval_<a>_<split>/report.json and <run>/eval_<b>_<split>/report.json (same prompts,
same seeds) and prints, for each split evaluated, the mean difference of the per-prompt DPG-style scores with
its standard error. `--report` reads another file of the same layout instead (e.g. the `report_<judge>.json`
written by experiments/judge/rejudge.py); `--prefix` reads <run>/<prefix>_<a>_<split> (run.sh's EVAL_PREFIX).
A `name=path` argument names eval folders outside <run>: `name` in a pair then reads <path>_<split>
(e.g. `llama_tsc=runs/ella_llms/llama/eval100_tsc llama_tsc:unet`).
"""

import json
import os
import sys

import numpy as np


def folder(run: str, name: str, split: str, prefix: str = "eval", names: dict | None = None) -> str:
    """The eval folder of model `name` on `split`: <names[name]>_<split>, else <run>/<prefix>_<name>_<split>."""
    if names and name in names:
        return f"{names[name]}_{split}"
    return os.path.join(run, f"{prefix}_{name}_{split}")


def per_prompt(run: str, name: str, split: str, report: str = "report.json", prefix: str = "eval",
               names: dict | None = None) -> dict:
    with open(os.path.join(folder(run, name, split, prefix, names), report)) as f:
        return json.load(f)["per_prompt"]


def main(run: str, pairs: list[str], report: str = "report.json", prefix: str = "eval",
         names: dict | None = None) -> None:
    for split in ("test", "validation"):
        for pair in pairs:
            a, b = pair.split(":")
            if not all(os.path.exists(folder(run, n, split, prefix, names)) for n in (a, b)):
                continue  # that split was not evaluated for both models (e.g. a validation-only sweep arm)
            pa, pb = (per_prompt(run, a, split, report, prefix, names),
                      per_prompt(run, b, split, report, prefix, names))
            if list(pa) != list(pb):
                raise ValueError(f"{a} and {b} were scored on different {split} scenes")
            note = ("" if [v["prompt"] for v in pa.values()] == [v["prompt"] for v in pb.values()]
                    else " same scenes, different caption kinds;")
            d = np.array([pa[k]["score"] - pb[k]["score"] for k in pa])
            print(f"{split:10s} {a} - {b}: {d.mean():+.2f} +- {d.std(ddof=1) / np.sqrt(len(d)):.2f} "
                  f"(n={len(d)};{note} prompts better/worse/equal {(d > 0).sum()}/{(d < 0).sum()}/{(d == 0).sum()})")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--") and "=" not in a]
    named = dict(a.split("=", 1) for a in sys.argv[1:] if not a.startswith("--") and "=" in a)
    options = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    if len(args) < 2 or set(options) - {"report", "prefix"}:
        sys.exit(__doc__)
    main(args[0], args[1:], options.get("report", "report.json"), options.get("prefix", "eval"), named)
