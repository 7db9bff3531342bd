"""Calibrate the Shapes judge's rejection thresholds on train-split renders (never the test split).

    python experiments/judge/calibrate.py [--num_scenes 250] [--out runs/judge_calibration.json]

Draws train-split scenes (data seed 0, the demo's) as `shapes_stress.realistic` renders (sub-pixel jitter,
scale jitter, anti-aliasing, colour shift, noise, JPEG 4:4:4) at blur sigma 0 / 0.5 / 0.8 / 1.2, at 32 and
64 px, and the shapeless cheats (bars, 3:1 ellipses, lobed blobs) under the same degradations. For every
true object found it records the soft IoU of its best template, its elongation (ratio of the principal
standard deviations of its ink) and the fitted side, and the same for every cheat component.

  MIN_FIT        MARGIN above the 99th percentile of the best fits of bars and 3:1 ellipses, rounded up to
                 0.01 (not their maximum: a 2-pixel bar blurred with sigma 1.2 at 32 px is a round dot):
                 shapeless marks do not pass on their fit, and everything that fits a shape better than
                 they do is accepted (generated shapes are far from the renders: a rounded square or a lumpy
                 circle is still a square or a circle; see docs/judge.md). The 1st percentile of the
                 correctly classified true objects' fits is printed beside it: a threshold there would
                 reject most generated shapes.
  MAX_ELONGATION printed beside the largest elongation of a true object and the smallest of a bar or
                 ellipse; the judge's 1.5 lies between them, below a 2:1 rectangle (2.0).

It prints these next to the values in t2ijax/eval/judge.py and, at the judge's values, the fraction of true
objects kept and of cheat components accepted.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from t2ijax.data import shapes
from t2ijax.eval import judge
from t2ijax.eval import shapes_stress as st

BLURS = (0.0, 0.5, 0.8, 1.2)
RESOLUTIONS = (32, 64)
NEGATIVES = ("bars", "ellipses", "blobs")
SHAPELESS = ("bars", "ellipses")
MARGIN = 0.03


def _match(components, obj, resolution):
    """The component of the object's colour whose fitted centre is nearest to the object's, within a third
    of the small side; None if there is none."""
    reach = shapes.side_length("small", resolution) / 3
    best, best_d = None, reach
    for c in components:
        d = math.dist(c.detection.centre, obj.centre)
        if c.colour == obj.colour and d <= best_d:
            best, best_d = c, d
    return best


def collect(num_scenes: int) -> dict:
    rows = {"true": [], "negative": []}
    for resolution in RESOLUTIONS:
        for blur in BLURS:
            rng = np.random.default_rng([resolution, int(blur * 10)])
            for i in range(num_scenes):
                scene = shapes.sample_scene(0, "train", i, resolution)
                image, objects = st.realistic(scene, rng, blur=blur)
                components = judge.analyse(image)
                for obj in objects:
                    c = _match(components, obj, resolution)
                    rows["true"].append({
                        "resolution": resolution, "blur": blur, "shape": obj.shape, "found": c is not None,
                        "correct": c is not None and c.detection.shape == obj.shape,
                        "fit": c.fits[obj.shape] if c else 0.0, "side": c.side[obj.shape] if c else 0.0,
                        "elongation": c.elongation if c else 0.0,
                        "kept": c is not None and not c.rejected and c.detection.shape == obj.shape})
                for kind in NEGATIVES:
                    marks = st.cheat(scene, kind, rng)
                    image = st.degrade(st.draw(marks, resolution), rng, blur=blur, noise=6.0, jpeg_quality=85)
                    for c in judge.analyse(image):
                        shape = max(c.fits, key=c.fits.get)
                        rows["negative"].append({"resolution": resolution, "blur": blur, "kind": kind,
                                                 "fit": c.fits[shape], "side": c.side[shape],
                                                 "elongation": c.elongation,
                                                 "accepted": not c.rejected})
    return rows


def thresholds(rows: dict) -> dict:
    shapeless = [r for r in rows["negative"] if r["kind"] in SHAPELESS]
    correct = [r for r in rows["true"] if r["correct"]]
    return {
        "MIN_FIT": math.ceil(100 * (float(np.percentile([r["fit"] for r in shapeless], 99)) + MARGIN)) / 100,
        "fit, best of a bar or ellipse": round(max(r["fit"] for r in shapeless), 3),
        "fit, 1st percentile of true objects": round(float(np.percentile([r["fit"] for r in correct], 1)), 3),
        "elongation, largest of a true object": round(max(r["elongation"] for r in correct), 3),
        "elongation, smallest of a bar or ellipse": round(min(r["elongation"] for r in shapeless), 3),
    }


def report(rows: dict) -> str:
    lines = ["| px | blur | true objects | found | shape right | kept by the judge | "
             + " | ".join(f"{k} accepted" for k in NEGATIVES) + " |", "|---" * (6 + len(NEGATIVES)) + "|"]
    for resolution in RESOLUTIONS:
        for blur in BLURS:
            t = [r for r in rows["true"] if r["resolution"] == resolution and r["blur"] == blur]
            neg = {k: [r for r in rows["negative"] if r["resolution"] == resolution and r["blur"] == blur
                       and r["kind"] == k] for k in NEGATIVES}
            pct = lambda xs, key: 100.0 * np.mean([x[key] for x in xs]) if xs else float("nan")  # noqa: E731
            lines.append(f"| {resolution} | {blur} | {len(t)} | {pct(t, 'found'):.1f}% | {pct(t, 'correct'):.1f}% | "
                         f"{pct(t, 'kept'):.1f}% | " + " | ".join(f"{pct(neg[k], 'accepted'):.1f}%"
                                                                     for k in NEGATIVES) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_scenes", type=int, default=250)
    parser.add_argument("--out", default=None, help="write every row as JSON here")
    args = parser.parse_args()
    rows = collect(args.num_scenes)
    proposed = thresholds(rows)
    print(f"calibrated (MIN_FIT: 99th percentile of bar and 3:1 ellipse fits + {MARGIN}): {proposed}")
    print(f"in t2ijax/eval/judge.py: MIN_FIT={judge.MIN_FIT} MAX_ELONGATION={judge.MAX_ELONGATION}")
    print(report(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"proposed": proposed, "rows": rows}, f)


if __name__ == "__main__":
    main()
