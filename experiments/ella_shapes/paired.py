"""Paired per-prompt score differences between two evaluated models of experiments/ella_shapes/run.sh.

    python experiments/ella_shapes/paired.py runs/ella_shapes_short tsc:unet tsc:ln [--report=report_legacy.json]

Each `a:b` reads <run>/eval_<a>_<split>/report.json and <run>/eval_<b>_<split>/report.json (same prompts,
same seeds) and prints, for each split evaluated, the mean difference of the per-prompt DPG-style scores with
its standard error. `--report` reads another file of the same layout instead (e.g. the `report_<judge>.json`
written by experiments/judge/rejudge.py).
"""

import json
import os
import sys

import numpy as np


def per_prompt(run: str, name: str, split: str, report: str = "report.json") -> dict:
    with open(os.path.join(run, f"eval_{name}_{split}", report)) as f:
        return json.load(f)["per_prompt"]


def main(run: str, pairs: list[str], report: str = "report.json") -> None:
    for split in ("test", "validation"):
        for pair in pairs:
            a, b = pair.split(":")
            if not any(os.path.exists(os.path.join(run, f"eval_{n}_{split}")) for n in (a, b)):
                continue  # that split was not evaluated for these models
            pa, pb = per_prompt(run, a, split, report), per_prompt(run, b, split, report)
            if [v["prompt"] for v in pa.values()] != [v["prompt"] for v in pb.values()]:
                raise ValueError(f"{a} and {b} were scored on different {split} prompts")
            d = np.array([pa[k]["score"] - pb[k]["score"] for k in pa])
            print(f"{split:10s} {a} - {b}: {d.mean():+.2f} +- {d.std(ddof=1) / np.sqrt(len(d)):.2f} "
                  f"(n={len(d)}; prompts better/worse/equal {(d > 0).sum()}/{(d < 0).sum()}/{(d == 0).sum()})")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--report")]
    reports = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--report=")]
    if len(args) < 2:
        sys.exit(__doc__)
    main(args[0], args[1:], *reports[:1])
