"""How often the two Shapes judges give the same answer on generated images, and where they do not.

    python experiments/judge/agreement.py runs/demo/eval/test/conditional [more eval dirs] \
        [--grid docs/judge_disagreements.png] [--json runs/agreement.json]

For every saved image of each eval dir (report.json + images.npz from `t2ijax eval` / `t2ijax demo`),
every question of its prompt's graph is answered by the programmatic judge (t2ijax.eval.judge) and by the
independent CNN judge (t2ijax.eval.cnn_judge). It prints the fraction of answers on which they agree,
overall and per question category, and draws the images with the most disagreements into a grid: each
tile shows the programmatic judge's objects (black boxes, rejected components red) above the CNN's, and
lists the questions they answer differently (P = programmatic's answer, C = the CNN's).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

from t2ijax.eval import cnn_judge, dpg, judge
from t2ijax.eval.evaluate import load_generated, shapes_scenes

SHORT = {"entity-whole": "entity", "attribute-color": "binding", "attribute-size": "size",
         "relation-spatial": "spatial", "other-count": "count"}


def compare(out_dir: str, model: cnn_judge.CNNJudge | None = None) -> list[dict]:
    """One record per image: prompt index, image, both judges' detections, and each question's two answers
    (`model`: the CNN judge, default the committed weights)."""
    model = model or cnn_judge.load()
    with open(f"{out_dir}/report.json") as f:
        report = json.load(f)
    generated = load_generated(out_dir)
    graphs = shapes_scenes(report["data"], report["split"], len(generated["prompts"]))
    records = []
    for k, (graph, images) in enumerate(zip(graphs, generated["images"])):
        questions = dpg.shapes_questions(graph).questions
        for image, cnn_found in zip(images, model.detect_batch(list(images))):
            programmatic = judge.analyse(image)
            found = [c.detection for c in programmatic if not c.rejected]
            answers = [(q, judge.answer(q.query, found), judge.answer(q.query, cnn_found)) for q in questions]
            records.append({"dir": out_dir, "prompt": k, "text": str(generated["prompts"][k]), "image": image,
                            "programmatic": programmatic, "cnn": cnn_found, "answers": answers})
    return records


def summary(records: list[dict]) -> dict:
    per_category = defaultdict(list)
    for r in records:
        for q, p, c in r["answers"]:
            per_category[SHORT[q.category]].append(p == c)
    every = [x for v in per_category.values() for x in v]
    images = [all(p == c for _, p, c in r["answers"]) for r in records]
    return {"answers": len(every), "agreement": 100 * float(np.mean(every)),
            "images_fully_agreeing": 100 * float(np.mean(images)), "images": len(records),
            **{f"agreement_{k}": 100 * float(np.mean(v)) for k, v in per_category.items()}}


def _tile(record: dict, scale: int = 5):
    from PIL import Image, ImageDraw

    image = record["image"]
    h, w = image.shape[:2]
    panel = Image.new("RGB", (w * scale, 2 * h * scale + 4 + 11 * 7), "white")
    for row, (boxes, colour_of) in enumerate((
            ([(c.detection.box, c.rejected, c.detection.shape) for c in record["programmatic"]], "P"),
            ([(d.box, "", d.shape) for d in record["cnn"]], "C"))):
        top = row * (h * scale + 4)
        panel.paste(Image.fromarray(image).resize((w * scale, h * scale), Image.NEAREST), (0, top))
        draw = ImageDraw.Draw(panel)
        for (x0, y0, x1, y1), rejected, shape in boxes:
            draw.rectangle([x0 * scale, top + y0 * scale, x1 * scale, top + y1 * scale],
                           outline=(220, 0, 0) if rejected else (0, 0, 0))
            draw.text((x0 * scale + 1, top + y0 * scale), shape[:3], fill=(220, 0, 0) if rejected else (0, 0, 0))
        draw.text((2, top + 2), colour_of, fill=(0, 0, 0))
    draw = ImageDraw.Draw(panel)
    differing = [(q, p, c) for q, p, c in record["answers"] if p != c]
    y = 2 * h * scale + 6
    draw.text((2, y), f"#{record['prompt']}: {len(differing)} differ", fill=(0, 0, 0))
    for q, p, c in differing[:6]:
        y += 11
        text = q.text if len(q.text) <= 40 else q.text[:38] + ".."
        draw.text((2, y), f"{text} P{'y' if p else 'n'} C{'y' if c else 'n'}", fill=(0, 0, 0))
    return panel


def disagreement_grid(records: list[dict], path: str, count: int = 16, cols: int = 4) -> str:
    from PIL import Image

    worst = sorted(records, key=lambda r: -sum(p != c for _, p, c in r["answers"]))[:count]
    worst = [r for r in worst if any(p != c for _, p, c in r["answers"])]
    if not worst:
        return ""
    tiles = [_tile(r) for r in worst]
    tw, th = tiles[0].size
    tw = max(tw, 240)
    grid = Image.new("RGB", (cols * tw, -(-len(tiles) // cols) * th), "white")
    for i, t in enumerate(tiles):
        grid.paste(t, ((i % cols) * tw, (i // cols) * th))
    grid.save(path)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("--grid", default=None, help="PNG of the images with the most disagreements")
    parser.add_argument("--json", default=None, help="write the summaries here")
    parser.add_argument("--weights", default=None, help="the CNN judge's safetensors (default: the committed asset)")
    args = parser.parse_args()
    model = cnn_judge.load(args.weights)
    all_records, out = [], {}
    for d in args.dirs:
        records = compare(d, model)
        all_records += records
        out[d] = summary(records)
        print(d, json.dumps({k: round(v, 2) for k, v in out[d].items()}))
    out["all"] = summary(all_records)
    print("all", json.dumps({k: round(v, 2) for k, v in out["all"].items()}))
    if args.grid:
        print("grid:", disagreement_grid(all_records, args.grid))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
