"""Score saved Shapes evaluations again with other judges, without sampling (old vs new numbers).

    python experiments/judge/rejudge.py runs/demo/eval/test/conditional [more eval dirs] \
        [--judges programmatic,cnn,legacy] [--legacy_commit 8a3ae0e]

Each eval dir is one written by `t2ijax eval` / `t2ijax demo` (report.json + images.npz). For each judge
it writes `<dir>/report_<judge>.json` (DPG-style score, categories, per-prompt scores; the layout of
report.json, so `experiments/ella_shapes/paired.py --report report_<judge>.json` pairs them) and prints
the scores side by side.

Judges:
  programmatic  t2ijax.eval.judge (the reported one), DPGOptions.fixed()
  cnn           t2ijax.eval.cnn_judge, DPGOptions.fixed()
  legacy        the instrument before issue #10, taken from git (`--legacy_commit`, default the last commit
                before it): its judge (forced three-way shape choice, no rejection, axis-only relations),
                its question graph (colour-shape binding asked twice) and the official DPG protocol (category
                scores from the last image only), as every earlier report of this repository used it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

from t2ijax.eval import dpg
from t2ijax.eval.evaluate import load_generated, rejudge, shapes_scenes
from t2ijax.eval.report import _jsonable

LEGACY_COMMIT = "8a3ae0e"
LEGACY_FILES = {"shapes": "t2ijax/data/shapes.py", "dpg": "t2ijax/eval/dpg.py", "judge": "t2ijax/eval/judge.py"}


def load_legacy(commit: str = LEGACY_COMMIT):
    """(shapes, dpg, judge) modules of `commit`, importable side by side with the current package."""
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                          check=True).stdout.strip()
    folder = tempfile.mkdtemp(prefix="t2ijax_legacy_")
    modules = {}
    for name, path in LEGACY_FILES.items():
        source = subprocess.run(["git", "-C", root, "show", f"{commit}:{path}"], capture_output=True, text=True,
                                check=True).stdout
        source = source.replace("from t2ijax.data import shapes", "import t2ijax_legacy_shapes as shapes")
        source = source.replace("from t2ijax.eval.judge import", "from t2ijax_legacy_judge import")
        file = os.path.join(folder, f"t2ijax_legacy_{name}.py")
        with open(file, "w") as f:
            f.write(source)
        spec = importlib.util.spec_from_file_location(f"t2ijax_legacy_{name}", file)
        modules[name] = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = modules[name]
        spec.loader.exec_module(modules[name])
    return modules["shapes"], modules["dpg"], modules["judge"]


def legacy_rejudge(out_dir: str, commit: str = LEGACY_COMMIT) -> dict:
    """The pre-#10 instrument on the images of `out_dir` (see the module doc)."""
    _, old_dpg, old_judge = load_legacy(commit)
    with open(os.path.join(out_dir, "report.json")) as f:
        report = json.load(f)
    generated = load_generated(out_dir)
    prompts = [str(p) for p in generated["prompts"]]
    options = old_dpg.DPGOptions.official()
    scores = []
    for k, (graph, images) in enumerate(zip(shapes_scenes(report["data"], report["split"], len(prompts)),
                                            generated["images"])):
        pq = old_dpg.shapes_questions(graph, item_id=str(k), prompt=prompts[k])
        vqa = old_judge.JudgeVQA([q.query for q in pq.questions])
        scores.append(old_dpg.score_tiles(list(images), pq, vqa, options))
    result = old_dpg.aggregate(scores, {}, options)
    return {"judge": f"legacy ({commit})", "dpg_score": result.score, "dpg_l1": result.l1, "dpg_l2": result.l2,
            "per_prompt": {str(k): {"prompt": p, "score": 100.0 * s.score}
                           for k, (p, s) in enumerate(zip(prompts, scores))}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("--judges", default="programmatic,cnn,legacy")
    parser.add_argument("--legacy_commit", default=LEGACY_COMMIT)
    args = parser.parse_args()
    judges = args.judges.split(",")
    print("| eval dir | " + " | ".join(judges) + " |\n|---" * 1 + "|---" * len(judges) + "|")
    for out_dir in args.dirs:
        cells = []
        for name in judges:
            result = (legacy_rejudge(out_dir, args.legacy_commit) if name == "legacy"
                      else rejudge(out_dir, judge=name, options=dpg.DPGOptions.fixed()))
            with open(os.path.join(out_dir, f"report_{name}.json"), "w") as f:
                json.dump(_jsonable(result), f, indent=1)
            cells.append(f"{result['dpg_score']:.2f}")
        print(f"| {out_dir} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
