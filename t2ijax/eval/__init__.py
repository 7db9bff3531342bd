"""Evaluation: the Shapes judges, DPG-Bench scoring, T2I-CompBench-style accuracy, FID, CLIP score, reports.

Modules (functions of the same name live in them, e.g. `t2ijax.eval.evaluate.evaluate`):
  evaluate    evaluate(sampler, *, benchmark, out_dir, judge=, ...): generate, score, write report + grid;
              score_shapes, rejudge (score saved images again), load_generated, shapes_scenes
  judge       analyse / detect / judge / JudgeVQA: the programmatic Shapes judge (docs/judge.md)
  cnn_judge   load / detect / detect_batch: the independent CNN Shapes judge (committed weights)
  shapes_stress  realistic renders, cheats and the oracle's truth that the judges are tested against
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
    "detect": "judge", "JudgeVQA": "judge", "score_shapes": "evaluate", "rejudge": "evaluate",
    "load_generated": "evaluate",
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
