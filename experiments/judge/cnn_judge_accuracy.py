"""Accuracy of the CNN Shapes judge (`t2ijax.eval.cnn_judge`) against the truth of what was drawn.

    python experiments/judge/cnn_judge_accuracy.py [--num_scenes 200] [--split validation] [--weights PATH]
                                                   [--out runs/cnn_judge_accuracy.json] [--sweep_only]

For every resolution (32, 64 px) and blur sigma (0, 0.5, 0.8, 1.2): `shapes_stress.realistic` renders of the
split's scenes (data seed 0; sub-pixel and scale jitter, anti-aliasing, colour shift, noise, JPEG 4:4:4 q85),
the DSG questions of each scene (`dpg.shapes_questions`) answered on the CNN judge's detections and on the
truth (`shapes_stress.truth`), right when the two answers agree; and the cheats at the objects' true boxes
under the same degradations, with the number of objects the judge accepts per mark drawn: bars and 3:1
ellipses are not shapes (every accepted one is a false detection), lobed blobs are lumpy compact patches and
so shapes by the benchmark's definition (accepting them is right).

Then the definitions' sweep (`sweep`): one object per image at the place of a scene's first object, blur 0.5 /
noise / JPEG q85, 32 and 64 px: superellipses of exponent n (circle below n = 3, square above; the training
data leaves 2.6 < n < 3.6 out) and triangles with rounded corners (radius 0-0.2 x side: still triangles) with
the share called circle / square / triangle / rejected, and ellipses (at
any angle) and axis-aligned rectangles of aspect 1-3 with the share accepted (a patch whose principal standard
deviations differ by more than 1.5 is not a shape). `--programmatic` adds the programmatic judge's verdicts on the same images.
The validation split measures; `--split train` is what the judge's post-processing constants were chosen on.
"""

from __future__ import annotations

import argparse
import collections
import json

import math

import numpy as np

from t2ijax.data import shapes
from t2ijax.eval import cnn_judge, judge
from t2ijax.eval import cnn_judge_data as data
from t2ijax.eval import shapes_stress as st
from t2ijax.eval.dpg import shapes_questions

BLURS = (0.0, 0.5, 0.8, 1.2)
RESOLUTIONS = (32, 64)
NEGATIVES = ("bars", "ellipses", "blobs")  # blobs: accepted is right (lumpy compact patches are shapes)
EXPONENTS = (2.0, 2.3, 2.6, 2.8, 3.0, 3.2, 3.4, 3.6, 4.5, 6.0, math.inf)
ASPECTS = (1.0, 1.25, 1.4, 1.5, 1.6, 1.75, 2.0, 3.0)
ROUNDINGS = (0.0, 0.1, 0.2)  # triangle corner radius / side


def measure(model: cnn_judge.CNNJudge, split: str, resolution: int, blur: float, num_scenes: int) -> dict:
    """Per-category [right, asked] of the questions, and [accepted, drawn] per cheat, at one setting."""
    rng = np.random.default_rng([resolution, int(blur * 10), 7])
    scenes = [shapes.sample_scene(0, split, i, resolution) for i in range(num_scenes)]
    renders = [st.realistic(s, rng, blur=blur) for s in scenes]
    found = model.detect_batch(np.stack([image for image, _ in renders]))
    categories = collections.defaultdict(lambda: [0, 0])
    for scene, (_, truth), detections in zip(scenes, renders, found):
        for q in shapes_questions(scene.to_graph()).questions:
            right = judge.answer(q.query, detections) == judge.answer(q.query, truth)
            categories[q.category][0] += int(right)
            categories[q.category][1] += 1
    cheats = {}
    for kind in NEGATIVES:
        marks = [st.cheat(s, kind, rng) for s in scenes]
        images = np.stack([st.degrade(st.draw(m, resolution), rng, blur=blur, noise=6.0, jpeg_quality=85)
                           for m in marks])
        accepted = sum(len(d) for d in model.detect_batch(images))
        cheats[kind] = [accepted, sum(len(m) for m in marks)]
    return {"resolution": resolution, "blur": blur, "categories": dict(categories), "cheats": cheats}


def table(rows: list[dict]) -> str:
    categories = sorted({c for r in rows for c in r["categories"]})
    head = ["px", "blur", "all"] + categories + [f"{k} accepted" for k in NEGATIVES]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        right = sum(v[0] for v in r["categories"].values())
        asked = sum(v[1] for v in r["categories"].values())
        cells = [str(r["resolution"]), str(r["blur"]), f"{100 * right / asked:.1f}% of {asked}"]
        cells += [f"{100 * r['categories'][c][0] / r['categories'][c][1]:.1f}%" if c in r["categories"] else "-"
                  for c in categories]
        cells += [f"{100 * r['cheats'][k][0] / max(r['cheats'][k][1], 1):.1f}%" for k in NEGATIVES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _sweep_images(split: str, num: int, make, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(num):
        resolution = RESOLUTIONS[i % 2]
        obj = shapes.sample_scene(0, split, i, resolution).objects[0]
        mark = make(tuple(float(v) for v in obj.box), obj.colour, rng)
        images.append(st.degrade(data.draw([mark], resolution), rng, blur=0.5, noise=6.0, jpeg_quality=85))
    return images


def _verdict_cnn(model, images) -> list[str]:
    out = {}
    for parity in (0, 1):
        idx = list(range(parity, len(images), 2))
        for i, found in zip(idx, model.analyse_batch(np.stack([images[j] for j in idx]))):
            accepted = [f.detection.shape for f in found if not f.rejected]
            out[i] = accepted[0] if len(accepted) == 1 else "several" if accepted else "rejected"
    return [out[i] for i in range(len(images))]


def _verdict_programmatic(images) -> list[str]:
    out = []
    for image in images:
        accepted = [d.shape for d in judge.detect(image)]
        out.append(accepted[0] if len(accepted) == 1 else "several" if accepted else "rejected")
    return out


def sweep(model, split: str, num: int, programmatic: bool) -> list[dict]:
    """Verdict shares on superellipses of each exponent and on stretched ellipses / rectangles (module doc)."""
    rows = []
    cases = [(f"superellipse n={n:g}", lambda b, c, r, n=n: data.Mark("circle", c, b, exponent=n)) for n in EXPONENTS]
    cases += [(f"triangle rounded {k:g}", lambda b, c, r, k=k: data.Mark("triangle", c, b, outline="triangle", rounding=k))
              for k in ROUNDINGS]
    for outline, n in (("ellipse", 2.0), ("rectangle", math.inf)):
        for aspect in ASPECTS:
            def make(box, colour, rng, n=n, aspect=aspect):
                x0, y0, x1, y1 = box
                cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
                thin = half / aspect
                angle = rng.uniform(0, np.pi) if outline == "ellipse" else np.pi / 2 * int(rng.integers(2))
                return data.Mark("none", colour, (cx - half, cy - thin, cx + half, cy + thin), exponent=n, angle=angle)
            cases.append((f"{outline} aspect {aspect:g}", make))
    for k, (name, make) in enumerate(cases):
        images = _sweep_images(split, num, make, seed=100 + k)
        judges = {"cnn": _verdict_cnn(model, images)}
        if programmatic:
            judges["programmatic"] = _verdict_programmatic(images)
        for who, verdicts in judges.items():
            rows.append({"case": name, "judge": who, **{v: verdicts.count(v) / len(verdicts) for v in
                                                         ("circle", "square", "triangle", "rejected", "several")}})
    return rows


def sweep_table(rows: list[dict]) -> str:
    head = ["case", "judge", "circle", "square", "triangle", "rejected", "several"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        lines.append("| " + " | ".join([r["case"], r["judge"]] + [f"{100 * r[k]:.0f}%" for k in head[2:]]) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_scenes", type=int, default=200)
    parser.add_argument("--split", default="validation", choices=shapes.SPLITS)
    parser.add_argument("--weights", default=None, help="safetensors of the judge (default: the committed asset)")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument("--sweep_num", type=int, default=100, help="images per case of the definitions' sweep")
    parser.add_argument("--sweep_only", action="store_true")
    parser.add_argument("--programmatic", action="store_true", help="the programmatic judge's sweep verdicts too")
    args = parser.parse_args()
    model = cnn_judge.load(args.weights)
    rows = []
    if not args.sweep_only:
        rows = [measure(model, args.split, r, b, args.num_scenes) for r in RESOLUTIONS for b in BLURS]
        print(f"CNN judge vs the truth, {args.num_scenes} {args.split}-split scenes per row")
        print(table(rows))
    sweep_rows = sweep(model, args.split, args.sweep_num, args.programmatic)
    print(f"\nDefinitions: one object per image, {args.sweep_num} {args.split}-split places per case, 32 and 64 px")
    print(sweep_table(sweep_rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"renders": rows, "sweep": sweep_rows}, f, indent=1)


if __name__ == "__main__":
    main()
