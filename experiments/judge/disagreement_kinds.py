"""What the two Shapes judges disagree on, object by object, on generated images.

    python experiments/judge/disagreement_kinds.py runs/demo_r1/eval_val48 [more eval dirs] [--weights PATH]
                                                   [--examples 8] [--grid runs/disagreement_kinds.png]

`experiments/judge/agreement.py` counts differing answers; this script says why they differ. In every image
the programmatic judge's components (accepted and rejected, `judge.analyse`) and the CNN judge's groups
(accepted and rejected, `CNNJudge.analyse_batch`) are matched one to one by centre distance (greedy, nearest
first, within MATCH_DISTANCE of the image side, any colour). Each object then falls in one kind:

  agree         both accept it with the same colour, shape and size
  only P        the programmatic judge accepts it; the CNN rejects it ("C rejects": the CNN's class
                probabilities are printed) or has no group there ("C misses")
  only C        the CNN accepts it; the programmatic judge rejects it (its reason is printed) or has no
                component there
  shape         both accept, the shapes differ (P's shape -> C's shape, C's probabilities)
  colour, size  both accept, the colour / size differ (shape agreeing)

Beside each disagreement: the shape the prompt asks for at that place (what the generator tried to draw; not
the truth of the image, but a hint of which judge reads it as intended).

Images with disagreeing objects can be drawn into a grid: each tile shows the image (x5) with P's objects
above and C's below, and the disagreements written under it.
"""

from __future__ import annotations

import argparse
import collections
import math

import numpy as np

from t2ijax.data import shapes
from t2ijax.eval import cnn_judge, judge
from t2ijax.eval.evaluate import load_generated, shapes_scenes

MATCH_DISTANCE = 0.12  # of the image side


def _p_objects(image):
    return [{"colour": c.detection.colour, "shape": c.detection.shape, "size": c.detection.size,
             "centre": c.detection.centre, "rejected": c.rejected, "elongation": c.elongation,
             "fits": c.fits} for c in judge.analyse(image)]


def _c_objects(instances):
    return [{"colour": i.detection.colour, "shape": i.detection.shape, "size": i.detection.size,
             "centre": i.detection.centre, "rejected": i.rejected, "probs": i.shape_probs} for i in instances]


def match(ps: list[dict], cs: list[dict], side: int) -> list[tuple]:
    """(p or None, c or None) pairs, nearest centres first, within MATCH_DISTANCE * side."""
    pairs = sorted(((math.dist(p["centre"], c["centre"]), i, j) for i, p in enumerate(ps) for j, c in enumerate(cs)))
    used_p, used_c, out = set(), set(), []
    for d, i, j in pairs:
        if d > MATCH_DISTANCE * side or i in used_p or j in used_c:
            continue
        used_p.add(i)
        used_c.add(j)
        out.append((ps[i], cs[j]))
    out += [(p, None) for i, p in enumerate(ps) if i not in used_p]
    out += [(None, c) for j, c in enumerate(cs) if j not in used_c]
    return out


def _probs(c) -> str:
    return " ".join(f"{k[:3]}{v:.2f}" for k, v in c["probs"].items())


def classify(p, c) -> tuple[str, str]:
    """(kind, detail) of one matched pair (see the module doc); kind "" when neither accepts it."""
    p_ok, c_ok = p is not None and not p["rejected"], c is not None and not c["rejected"]
    if not p_ok and not c_ok:
        return "", ""
    if p_ok and not c_ok:
        if c is None:
            return "only P (C misses)", f"P {p['colour']} {p['shape']}"
        return "only P (C rejects)", f"P {p['colour']} {p['shape']}; C {_probs(c)}"
    if c_ok and not p_ok:
        if p is None:
            return "only C (P misses)", f"C {c['colour']} {c['shape']}"
        return "only C (P rejects)", f"C {c['colour']} {c['shape']}; P: {p['rejected']}"
    if p["colour"] != c["colour"]:
        return "colour", f"P {p['colour']} C {c['colour']}"
    if p["shape"] != c["shape"]:
        fits = " ".join(f"{k[:3]}{v:.2f}" for k, v in p["fits"].items())
        return "shape", f"{p['shape']} -> {c['shape']}; P fits {fits}; C {_probs(c)}"
    if p["size"] != c["size"]:
        return "size", f"P {p['size']} C {c['size']}"
    return "agree", ""


def asked(p, c, graph, side: int) -> str:
    """The shape the prompt asks for nearest the object (within MATCH_DISTANCE x 1.5 of the image side, the
    prompt's own layout), "-" when none: what the generator was trying to draw, not the truth of the image."""
    centre = (p or c)["centre"]
    best = min(((math.dist(centre, [(o["box"][0] + o["box"][2]) / 2 * side, (o["box"][1] + o["box"][3]) / 2 * side]),
                 o["shape"]) for o in graph["objects"]), default=(math.inf, "-"))
    return best[1] if best[0] <= 1.5 * MATCH_DISTANCE * side else "-"


def analyse_dirs(dirs, model) -> list[dict]:
    import json

    records = []
    for d in dirs:
        generated = load_generated(d)
        with open(f"{d}/report.json") as f:
            report = json.load(f)
        graphs = shapes_scenes(report["data"], report["split"], len(generated["prompts"]))
        for k, images in enumerate(generated["images"]):
            for t, (image, instances) in enumerate(zip(images, model.analyse_batch(list(images)))):
                side = image.shape[0]
                pairs = match(_p_objects(image), _c_objects(instances), side)
                kinds = [(classify(p, c), p, c) for p, c in pairs]
                records.append({"dir": d, "prompt": k, "tile": t, "image": image,
                                "objects": [(kind, detail, p, c, asked(p, c, graphs[k], side))
                                            for (kind, detail), p, c in kinds if kind]})
    return records


def _tile(record, scale=5):
    from PIL import Image, ImageDraw

    image = record["image"]
    h, w = image.shape[:2]
    bad = [o for o in record["objects"] if o[0] != "agree"]
    panel = Image.new("RGB", (max(w * scale, 300), h * scale + 12 + 11 * len(bad)), "white")
    panel.paste(Image.fromarray(image).resize((w * scale, h * scale), Image.NEAREST), (0, 0))
    draw = ImageDraw.Draw(panel)
    for n, (kind, detail, p, c, _) in enumerate(bad):
        for obj, colour in ((p, (0, 0, 0)), (c, (0, 0, 220))):
            if obj is not None:
                x, y = obj["centre"]
                draw.ellipse([x * scale - 3, y * scale - 3, x * scale + 3, y * scale + 3], outline=colour)
                draw.text((x * scale + 4, y * scale - 5), str(n), fill=colour)
        draw.text((2, h * scale + 2 + 11 * n), f"{n} {kind}: {detail}"[:60], fill=(0, 0, 0))
    draw.text((2, h * scale - 11), f"{record['dir'].split('/')[-1][:12]} #{record['prompt']}.{record['tile']}",
              fill=(120, 120, 120))
    return panel


def grid(records, path, count=24, cols=4):
    from PIL import Image

    bad = [r for r in records if any(o[0] != "agree" for o in r["objects"])][:count]
    if not bad:
        return ""
    tiles = [_tile(r) for r in bad]
    tw, th = max(t.size[0] for t in tiles), max(t.size[1] for t in tiles)
    out = Image.new("RGB", (cols * tw, -(-len(tiles) // cols) * th), "white")
    for i, t in enumerate(tiles):
        out.paste(t, ((i % cols) * tw, (i // cols) * th))
    out.save(path)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--examples", type=int, default=8, help="details printed per kind")
    parser.add_argument("--grid", default=None)
    parser.add_argument("--only", default=None, help="draw only images with this kind (substring)")
    args = parser.parse_args()
    model = cnn_judge.load(args.weights)
    records = analyse_dirs(args.dirs, model)
    counts = collections.Counter(o[0] for r in records for o in r["objects"])
    total = sum(counts.values())
    print(f"{len(records)} images, {total} objects accepted by at least one judge")
    for kind, n in counts.most_common():
        print(f"  {kind:22s} {n:5d} ({100 * n / total:.1f}%)")
    shape_pairs = collections.Counter(o[1].split(";")[0] for r in records for o in r["objects"] if o[0] == "shape")
    if shape_pairs:
        print("shape (P -> C):", dict(shape_pairs.most_common()))
        prompted = collections.defaultdict(collections.Counter)
        for r in records:
            for o in r["objects"]:
                if o[0] == "shape":
                    prompted[o[1].split(";")[0]][o[4]] += 1
        print("  the prompt's shape there:", {k: dict(v) for k, v in prompted.items()})
    for kind in ("only P (C rejects)", "only C (P rejects)", "only P (C misses)", "only C (P misses)"):
        prompted = collections.Counter(o[4] for r in records for o in r["objects"] if o[0] == kind)
        if prompted:
            print(f"{kind}: the prompt's shape there: {dict(prompted)}")
    by_kind = collections.defaultdict(list)
    for r in records:
        for kind, detail, _, _, wanted in r["objects"]:
            if kind != "agree":
                by_kind[kind].append(f"{r['dir'].split('/')[-1][:12]} #{r['prompt']}.{r['tile']}: {detail} "
                                     f"(prompt: {wanted})")
    for kind, lines in by_kind.items():
        print(f"--- {kind}")
        for line in lines[:args.examples]:
            print("   ", line)
    if args.grid:
        chosen = [r for r in records if args.only is None or any(args.only in o[0] for o in r["objects"])]
        print("grid:", grid(chosen, args.grid))


if __name__ == "__main__":
    main()
