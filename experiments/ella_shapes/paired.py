"""Paired per-prompt score differences between two evaluated models of experiments/ella_shapes/run.sh.

    python experiments/ella_shapes/paired.py runs/ella_shapes_short tsc:unet tsc:ln [--report=report_legacy.json]
        [--prefix=eval100]

Each `a:b` reads <run>/eval_<a>_<split>/report.json and <run>/eval_<b>_<split>/report.json (same prompts,
same seeds) and prints, for each split evaluated, the mean difference of the per-prompt DPG-style scores with
its standard error. `--report` reads another file of the same layout instead (e.g. the `report_<judge>.json`
written by experiments/judge/rejudge.py); `--prefix` reads <run>/<prefix>_<a>_<split> (run.sh's EVAL_PREFIX).
"""

import json
import os
import sys

import numpy as np


def per_prompt(run: str, name: str, split: str, report: str = "report.json", prefix: str = "eval") -> dict:
    with open(os.path.join(run, f"{prefix}_{name}_{split}", report)) as f:
        return json.load(f)["per_prompt"]


def main(run: str, pairs: list[str], report: str = "report.json", prefix: str = "eval") -> None:
    for split in ("test", "validation"):
        for pair in pairs:
            a, b = pair.split(":")
            if not any(os.path.exists(os.path.join(run, f"{prefix}_{n}_{split}")) for n in (a, b)):
                continue  # that split was not evaluated for these models
            pa, pb = per_prompt(run, a, split, report, prefix), per_prompt(run, b, split, report, prefix)
            if list(pa) != list(pb):
                raise ValueError(f"{a} and {b} were scored on different {split} scenes")
            note = ("" if [v["prompt"] for v in pa.values()] == [v["prompt"] for v in pb.values()]
                    else " same scenes, different caption kinds;")
            d = np.array([pa[k]["score"] - pb[k]["score"] for k in pa])
            print(f"{split:10s} {a} - {b}: {d.mean():+.2f} +- {d.std(ddof=1) / np.sqrt(len(d)):.2f} "
                  f"(n={len(d)};{note} prompts better/worse/equal {(d > 0).sum()}/{(d < 0).sum()}/{(d == 0).sum()})")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    options = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    if len(args) < 2 or set(options) - {"report", "prefix"}:
        sys.exit(__doc__)
    main(args[0], args[1:], options.get("report", "report.json"), options.get("prefix", "eval"))
