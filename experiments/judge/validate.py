"""Validate the Shapes judges against the truth of what was drawn, and against cheats (docs/judge.md).

    python experiments/judge/validate.py [--num_scenes 100] [--judges programmatic,cnn] [--out docs/judge_tables.md]

1. Accuracy per question category: validation- and test-split scenes (data seed 0, the demo's), drawn as the
   dataset draws them (hard edges) and as `shapes_stress.realistic` renders (sub-pixel and scale jitter,
   anti-aliasing, colour shift, noise sd 6, JPEG q85 4:4:4) at blur sigma 0 / 0.5 / 0.8 / 1.2, plus JPEG with
   4:2:0 chroma subsampling, at 32 and 64 px. An answer is right when it equals the answer on the truth of
   what was drawn (the jittered objects, whose relations can differ from the caption's near a tie).
2. Cheats: the DPG-style score (DPGOptions.fixed(), 4 images per prompt) that the judge gives each cheat of
   `shapes_stress.CHEATS`, beside the score of an oracle that knows what was drawn.
3. Issue #10's bars through the public `t2ijax.eval.evaluate` on the demo config's data (all prompts of
   both held-out splits, 4 images each): ground-truth renders, renders blurred with sigma 0.8, bars and
   3:1 ellipses at the true boxes, the blank canvas.
"""

from __future__ import annotations

import argparse
import importlib
from collections import defaultdict

import numpy as np

from t2ijax.data import shapes
from t2ijax.eval import dpg, judge
from t2ijax.eval import shapes_stress as st

SPLITS = ("validation", "test")
RESOLUTIONS = (32, 64)
CATEGORIES = ("entity-whole", "attribute-color", "attribute-size", "relation-spatial", "other-count")
SHORT = {"entity-whole": "entity", "attribute-color": "binding", "attribute-size": "size",
         "relation-spatial": "spatial", "other-count": "count"}


def detectors(names) -> dict:
    out = {}
    for name in names:
        if name == "programmatic":
            out[name] = judge.detect
        elif name == "cnn":
            out[name] = importlib.import_module("t2ijax.eval.cnn_judge").detect
        else:
            raise ValueError(f"unknown judge {name!r}; expected programmatic or cnn")
    return out


def conditions():
    hard = lambda scene, rng: (shapes.render(scene)[0], st.truth(st.scene_marks(scene)))  # noqa: E731
    out = {"dataset render (hard edges)": hard}
    for blur in (0.0, 0.5, 0.8, 1.2):
        out[f"realistic, blur {blur}"] = lambda scene, rng, b=blur: st.realistic(scene, rng, blur=b)
    out["realistic, blur 0.8, JPEG 4:2:0"] = lambda scene, rng: st.realistic(scene, rng, blur=0.8,
                                                                            chroma_subsampling=True)
    return out


def category_accuracy(num_scenes: int, dets: dict) -> list[dict]:
    rows = []
    for resolution in RESOLUTIONS:
        for name, make in conditions().items():
            right = {j: defaultdict(list) for j in dets}
            rng = np.random.default_rng([resolution, len(name)])
            for split in SPLITS:
                for i in range(num_scenes):
                    scene = shapes.sample_scene(0, split, i, resolution)
                    image, true_objects = make(scene, rng)
                    questions = dpg.shapes_questions(scene.to_graph()).questions
                    truth = [judge.answer(q.query, true_objects) for q in questions]
                    for j, detector in dets.items():
                        found = detector(image)
                        for q, t in zip(questions, truth):
                            right[j][q.category].append(judge.answer(q.query, found) == t)
            for j in dets:
                everything = [x for v in right[j].values() for x in v]
                rows.append({"px": resolution, "condition": name, "judge": j, "all": 100 * np.mean(everything),
                             "questions": len(everything),
                             **{SHORT[c]: 100 * np.mean(right[j][c]) for c in CATEGORIES}})
    return rows


def cheat_scores(num_scenes: int, dets: dict) -> list[dict]:
    options = dpg.DPGOptions.fixed()
    rows = []
    for resolution in RESOLUTIONS:
        for split in SPLITS:
            for kind in ("truth",) + st.CHEATS:
                rng = np.random.default_rng([resolution, SPLITS.index(split), len(kind)])
                scores = {j: [] for j in ["oracle", *dets]}
                for i in range(num_scenes):
                    scene = shapes.sample_scene(0, split, i, resolution)
                    pq = dpg.shapes_questions(scene.to_graph(), str(i))
                    queries = [q.query for q in pq.questions]
                    marks = [st.scene_marks(scene) if kind == "truth" else st.cheat(scene, kind, rng)
                             for _ in range(dpg.PIC_NUM)]
                    images = [st.draw(m, resolution) for m in marks]
                    scores["oracle"].append(dpg.score_tiles([st.truth(m) for m in marks], pq,
                                                            judge.JudgeVQA(queries, detector=lambda d: d), options))
                    for j, detector in dets.items():
                        scores[j].append(dpg.score_tiles(images, pq, judge.JudgeVQA(queries, detector=detector),
                                                         options))
                for j, s in scores.items():
                    result = dpg.aggregate(s, {}, options)
                    rows.append({"px": resolution, "split": split, "image": kind, "judge": j, "score": result.score,
                                 "entity": result.l2.get("entity-whole", float("nan"))})
    return rows


def through_evaluate(dets: dict) -> list[dict]:
    import tempfile

    from t2ijax.config_utils import load_config
    from t2ijax.eval.evaluate import evaluate

    data = load_config("configs/demo_shapes.py").data
    rows = []
    for split in SPLITS:
        for label, kind, blur in (("ground truth", "truth", 0.0), ("ground truth, blur 0.8", "truth", 0.8),
                                  ("bars", "bars", 0.0), ("3:1 ellipses", "ellipses", 0.0), ("blank", "blank", 0.0)):
            for name, detector in dets.items():
                with tempfile.TemporaryDirectory() as out:
                    r = evaluate(st.scene_sampler(data, split, kind=kind, blur=blur), benchmark="shapes",
                                 data_config=data, split=split, out_dir=out, grid_images=1, judge=detector)
                rows.append({"split": split, "images": label, "judge": name, "score": r["dpg_score"],
                             "entity": r["dpg_l2"].get("entity-whole", float("nan")), "prompts": r["num_prompts"]})
    return rows


def markdown(accuracy: list[dict], cheats: list[dict], num_scenes: int, done: list[dict] = ()) -> str:
    lines = [f"### Accuracy per question category (% answers equal to the truth; {num_scenes} validation + "
             f"{num_scenes} test scenes per row)", "",
             "| px | images | judge | all | " + " | ".join(SHORT[c] for c in CATEGORIES) + " | questions |",
             "|---" * (5 + len(CATEGORIES)) + "|"]
    for r in accuracy:
        lines.append(f"| {r['px']} | {r['condition']} | {r['judge']} | {r['all']:.1f} | "
                     + " | ".join(f"{r[SHORT[c]]:.1f}" for c in CATEGORIES) + f" | {r['questions']} |")
    judges = list(dict.fromkeys(r["judge"] for r in cheats))
    lines += ["", f"### Cheats: DPG-style score (entity-question score) per judge, {num_scenes} prompts x 4 images",
              "", "| px | split | image | " + " | ".join(judges) + " |", "|---" * (3 + len(judges)) + "|"]
    keys = list(dict.fromkeys((r["px"], r["split"], r["image"]) for r in cheats))
    for key in keys:
        cells = {r["judge"]: r for r in cheats if (r["px"], r["split"], r["image"]) == key}
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | "
                     + " | ".join(f"{cells[j]['score']:.1f} ({cells[j]['entity']:.1f})" for j in judges) + " |")
    if done:
        names = list(dict.fromkeys(r["judge"] for r in done))
        lines += ["", f"### Through `evaluate` on the demo config's data ({done[0]['prompts']} prompts x 4 images per "
                  "split): DPG-style score (entity-question score)", "",
                  "| split | images | " + " | ".join(names) + " |", "|---" * (2 + len(names)) + "|"]
        for key in dict.fromkeys((r["split"], r["images"]) for r in done):
            cells = {r["judge"]: r for r in done if (r["split"], r["images"]) == key}
            lines.append(f"| {key[0]} | {key[1]} | "
                         + " | ".join(f"{cells[j]['score']:.1f} ({cells[j]['entity']:.1f})" for j in names) + " |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_scenes", type=int, default=100)
    parser.add_argument("--judges", default="programmatic")
    parser.add_argument("--out", default=None, help="write the tables (Markdown) here too")
    args = parser.parse_args()
    dets = detectors(args.judges.split(","))
    text = markdown(category_accuracy(args.num_scenes, dets), cheat_scores(args.num_scenes, dets), args.num_scenes,
                    through_evaluate(dets))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
