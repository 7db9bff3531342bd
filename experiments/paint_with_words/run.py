"""Paint-with-words placement accuracy on Shapes (issue 15): do painted layouts move the objects?

    python experiments/paint_with_words/run.py --split=validation --num_prompts=32 --images=2 \\
        --scales=0,0.5,1,2,4 --setup=ddim=runs/knowledge_shapes/plain:ddim ... --json=OUT.json

For scene i of the split, the prompt is its caption (the run's caption kind) and the painted layout is its
true one: each object's box (pixels) painted with its phrase "<colour> <shape>" (objects sharing a phrase share
its mask). An object is placed when the sound judge (`t2ijax.eval.judge.detect`) finds an object of its colour
and shape whose centre lies in the object's box (the nearest such detection; none = not placed). Placement
accuracy = the fraction of objects placed. "Colour placement" asks only for a patch of the object's colour
centred in its box: any colour component the judge analyses (`judge.analyse`), including those it rejects as
no clean shape (a CPU-trained 32 px model draws blobs more often than clean shapes). Every w' (`--scales`, 0 = no painting) uses the same prompts and
seeds, so differences are paired per prompt (mean over its images and objects); the standard error is over
prompts. `--setup=name=workdir:sampler[:steps]` names a trained run and the sampler to paint with (ddim, euler,
heun, dpm; EDM runs: heun, euler, dpm).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


def layout(example, resolution: int):
    """(phrases, masks (P, H, W), painted objects) of a Shapes example: one box mask per distinct phrase."""
    from t2ijax.methods.paint_with_words import Paint

    phrases, masks, painted = [], [], []
    for o in example.scene.objects:
        phrase = f"{o.colour} {o.shape}"
        x0, y0, x1, y1 = o.box
        if phrase not in phrases:
            phrases.append(phrase)
            masks.append(np.zeros((resolution, resolution), np.float32))
        masks[phrases.index(phrase)][int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = 1.0
        painted.append({"colour": o.colour, "shape": o.shape, "box": (x0, y0, x1, y1)})
    return Paint(phrases, np.stack(masks)), painted


def placement_hits(detections, painted, keys=("colour", "shape")) -> list[bool]:
    """For the placement metric: for each painted object {"colour", "shape", "box" (x0, y0, x1, y1) pixels},
    whether the nearest detection that matches it on `keys` has its centre inside the box (none: False)."""
    hits = []
    for obj in painted:
        x0, y0, x1, y1 = obj["box"]
        cands = [d for d in detections if all(getattr(d, k) == obj[k] for k in keys)]
        if not cands:
            hits.append(False)
            continue
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        best = min(cands, key=lambda d: math.hypot(d.centre[0] - cx, d.centre[1] - cy))
        hits.append(bool(x0 <= best.centre[0] <= x1 and y0 <= best.centre[1] <= y1))
    return hits


def load(workdir: str, sampler: str, steps: int | None, weight: str = "community", after: bool = False):
    import ml_collections

    from t2ijax.train.sampling import load_for_inference

    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    config.sample.sampler = sampler
    config.sample.paint = {"weight": weight, "before_scale": not after}
    if steps:
        config.sample.num_steps = steps
    method, params, frozen, _ = load_for_inference(config, workdir)
    return method, params, frozen, config


def evaluate(setup: str, args) -> dict:
    from t2ijax.data import shapes
    from t2ijax.eval import judge

    name, spec = setup.split("=", 1)
    parts = spec.split(":")
    workdir, sampler = parts[0], parts[1]
    steps = int(parts[2]) if len(parts) > 2 and parts[2] else None
    weight = parts[3] if len(parts) > 3 else "community"
    after = len(parts) > 4 and parts[4] == "after"
    method, params, frozen, config = load(workdir, sampler, steps, weight, after)
    res, kind = int(config.data.resolution), config.data.caption
    examples = [shapes.make_example(int(config.data.seed), args.split, i, res) for i in range(args.num_prompts)]
    prompts = [ex.captions[kind] for ex in examples]
    layouts = [layout(ex, res) for ex in examples]
    per_scale = {}
    for scale in args.scales:
        start = time.time()
        acc = np.zeros((len(prompts), args.images))
        colour = np.zeros((len(prompts), args.images))
        for k in range(args.images):
            seeds = [1000 * k + i for i in range(len(prompts))]
            paint = [p for p, _ in layouts] if scale > 0 else None
            images = []
            for lo in range(0, len(prompts), args.batch):
                sl = slice(lo, lo + args.batch)
                images.extend(method.sample(params, frozen, prompts[sl], seeds=seeds[sl],
                                            **({"paint": paint[sl], "paint_scale": scale} if paint else {})))
            for i, image in enumerate(images):
                components = judge.analyse(image)
                detections = [c.detection for c in components if not c.rejected]
                acc[i, k] = np.mean(placement_hits(detections, layouts[i][1]))
                colour[i, k] = np.mean(placement_hits([c.detection for c in components], layouts[i][1],
                                                      keys=("colour",)))
        per_scale[scale] = {"placement": acc.mean(axis=1), "colour_placement": colour.mean(axis=1)}
        print(f"[{name}] w'={scale}: placement {acc.mean():.3f}, colour placement {colour.mean():.3f} "
              f"({time.time() - start:.0f} s)", flush=True)
    base = per_scale[min(args.scales)]
    rows = {}
    for scale, metrics in per_scale.items():
        rows[str(scale)] = {}
        for metric, acc in metrics.items():
            d = acc - base[metric]
            se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
            rows[str(scale)][metric] = {"mean": float(acc.mean()), "diff_vs_unpainted": float(d.mean()), "se": se,
                                        "shown": bool(abs(d.mean()) > 2 * se)}
    return {"workdir": workdir, "sampler": sampler, "num_steps": int(config.sample.num_steps), "caption": kind,
            "paint": dict(method.paint_settings.__dict__), "per_scale": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="validation", choices=["validation", "test"])
    parser.add_argument("--num_prompts", type=int, default=32)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--scales", default="0,0.5,1,2,4")
    parser.add_argument("--setup", action="append", required=True)
    parser.add_argument("--best_from", default=None, help="a validation JSON of this script: each setup is run at "
                        "w'=0 and at the w' of its best validation placement accuracy (the test split, once)")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    args.scales = [float(s) for s in args.scales.split(",")]
    best = {}
    if args.best_from:
        with open(args.best_from) as f:
            tuned = json.load(f)["setups"]
        for name, res in tuned.items():
            rows = res["per_scale"]
            best[name] = max((float(w) for w in rows if float(w) > 0),
                             key=lambda w: (rows[str(w)]["placement"]["mean"], rows[str(w)]["colour_placement"]["mean"]))
    if min(args.scales) != 0:
        sys.exit("--scales must include 0 (the unpainted baseline)")
    results = {"split": args.split, "num_prompts": args.num_prompts, "images_per_prompt": args.images,
               "setups": {}}
    if os.path.exists(args.json):
        with open(args.json) as f:
            results = json.load(f)
    for setup in args.setup:
        name = setup.split("=", 1)[0]
        if name in results["setups"]:
            continue
        if args.best_from:
            if name not in best:
                sys.exit(f"--best_from has no setup {name!r}")
            args.scales = [0.0, best[name]]
        results["setups"][name] = evaluate(setup, args)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
