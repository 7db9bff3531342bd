"""Evaluation: the Shapes judge, DPG-Bench scoring, T2I-CompBench-style accuracy, FID, CLIP score, reports.

Modules (functions of the same name live in them, e.g. `t2ijax.eval.evaluate.evaluate`):
  evaluate    evaluate(sampler, *, benchmark, out_dir, ...): generate, score, write report + grid
  judge       detect / judge / JudgeVQA: the programmatic Shapes judge
  dpg         read_dpg_csv / score_grids / score_folder / DPGOptions / shapes_questions
  compbench   compbench_scores
  fid         fid / frechet_distance
  clip_score  clip_score / clip_embedders (Flax CLIP features from a local CLIPModel folder)
  report      write_report
  grid        save_grid

Names re-exported lazily here: the ones that do not collide with a module name.
"""

import importlib

_API = {
    "detect": "judge", "JudgeVQA": "judge",
    "read_dpg_csv": "dpg", "score_grids": "dpg", "score_folder": "dpg", "DPGOptions": "dpg",
    "shapes_questions": "dpg", "compbench_scores": "compbench", "frechet_distance": "fid", "clip_embedders": "clip_score",
    "write_report": "report", "save_grid": "grid",
}


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
