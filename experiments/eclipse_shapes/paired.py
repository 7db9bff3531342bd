"""Paired per-prompt differences between two Shapes evaluations of the same prompts and seeds.

    python experiments/eclipse_shapes/paired.py EVAL_DIR_A EVAL_DIR_B [EVAL_DIR_A2 EVAL_DIR_B2 ...]

Each directory holds a report.json of `t2ijax eval --benchmark=shapes`. For each pair it prints the mean
difference A - B of the per-prompt DPG-style score and of each CompBench-style category's per-prompt question
accuracy (colour binding, shape = entity, spatial, size, count; over the prompts that have the category), with its
standard error, and whether it is shown (|mean| > 2 SE). `--json=F` also writes the numbers.
"""

import json
import os
import sys

import numpy as np

METRICS = ("score", "binding", "entity", "spatial", "size", "count")
LABELS = {"score": "DPG-style score", "binding": "colour (binding)", "entity": "shape (entity)",
          "spatial": "spatial", "size": "size", "count": "count"}


def per_prompt(path: str) -> dict:
    with open(os.path.join(path, "report.json")) as f:
        return json.load(f)["per_prompt"]


def value(entry: dict, metric: str):
    return entry["score"] if metric == "score" else entry.get("compbench", {}).get(metric)


def paired(a_dir: str, b_dir: str) -> dict:
    a, b = per_prompt(a_dir), per_prompt(b_dir)
    if list(a) != list(b) or any(a[k]["prompt"] != b[k]["prompt"] or a[k].get("seeds") != b[k].get("seeds")
                                 for k in a):
        raise ValueError(f"{a_dir} and {b_dir} were not scored on the same prompts and seeds")
    out = {}
    for metric in METRICS:
        d = np.array([value(a[k], metric) - value(b[k], metric) for k in a
                      if value(a[k], metric) is not None and value(b[k], metric) is not None])
        if len(d) < 2:
            continue
        mean, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
        out[metric] = {"a": float(np.mean([value(a[k], metric) for k in a if value(a[k], metric) is not None])),
                       "b": float(np.mean([value(b[k], metric) for k in b if value(b[k], metric) is not None])),
                       "diff": mean, "se": se, "n": int(len(d)), "shown": abs(mean) > 2 * se}
    return out


def main(argv):
    dirs = [a for a in argv if not a.startswith("--")]
    options = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    if len(dirs) < 2 or len(dirs) % 2:
        sys.exit(__doc__)
    results = {}
    for a_dir, b_dir in zip(dirs[::2], dirs[1::2]):
        res = paired(a_dir, b_dir)
        results[f"{a_dir} - {b_dir}"] = res
        print(f"{a_dir} - {b_dir}")
        for metric, r in res.items():
            print(f"  {LABELS[metric]:18s} {r['a']:6.2f} vs {r['b']:6.2f}: {r['diff']:+6.2f} +- {r['se']:.2f} "
                  f"(n={r['n']}, {'shown' if r['shown'] else 'not shown'})")
    if "json" in options:
        with open(options["json"], "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
