"""Image-text retrieval accuracy of a CLIP: top-k image->text and text->image over galleries of held-out pairs.

`retrieval_accuracy(image_embeds, text_embeds)`: pair i is (image i, text i); every image ranks all texts of
the set by cosine similarity (and every text all images); top-k is the fraction of queries whose partner is
among the k most similar (ranks sorted by descending similarity, ties to the lower index). With `groups`
(one label per pair), a retrieved item counts when it is in the query's group: with groups = the caption
strings, a text->image hit is any image whose caption is the query, and an image->text hit any text equal
to its caption (Shapes' one-object scenes repeat captions: "a small red circle" describes scenes that differ
only in position, so exact-pair ranks among them are a coin toss).

`evaluate_retrieval(clip_path, data_config, split)`: embeds a split of the dataset with an exported CLIP
(through `t2ijax.eval.clip_score.clip_embedders`, the same path CLIP score takes), cuts it into consecutive
galleries of `gallery_size` pairs (the remainder is dropped) and averages the accuracies over the galleries,
both exact-pair and caption-match.

    python -m t2ijax.eval.retrieval --clip=runs/clip_shapes/export --config=configs/clip_shapes.py:base \
        --split=test [--gallery_size=100] [--caption=dense] [--out=retrieval_test.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

import numpy as np

SPLITS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


def _normalise(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _topk_hits(sim: np.ndarray, groups: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """For each row (query), whether an item of its group is among its k most similar columns."""
    order = np.argsort(-sim, axis=1, kind="stable")  # ties: lower index first
    same = groups[order] == groups[:, None]  # (N, N): is the r-th retrieved item in the query's group
    first = np.where(same.any(1), same.argmax(1), sim.shape[1])  # rank (0-based) of the first hit
    return {k: float(np.mean(first < k)) for k in ks}


def retrieval_accuracy(image_embeds, text_embeds, *, ks: Sequence[int] = (1, 5), groups=None) -> dict[str, float]:
    """Top-k retrieval over one set of N pairs: {"i2t_top1", "i2t_top5", "t2i_top1", "t2i_top5", "n"}.

    image_embeds, text_embeds: (N, D) (normalised here). groups: optional (N,) labels (ints or strings),
    pairs with equal labels are interchangeable (default: every pair its own group).
    """
    img, txt = _normalise(image_embeds), _normalise(text_embeds)
    if img.shape != txt.shape:
        raise ValueError(f"need matching (N, D) embeddings, got {img.shape} and {txt.shape}")
    n = img.shape[0]
    if n == 0:
        raise ValueError("retrieval over an empty set")
    labels = np.arange(n) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    if labels.shape != (n,):
        raise ValueError(f"groups must have one label per pair ({n}), got {np.shape(groups)}")
    sim = img @ txt.T
    out = {"n": n}
    for name, s in (("i2t", sim), ("t2i", sim.T)):
        for k, acc in _topk_hits(s, labels, ks).items():
            out[f"{name}_top{k}"] = acc
    return out


def gallery_retrieval(image_embeds, text_embeds, gallery_size: int, *, groups=None,
                      ks: Sequence[int] = (1, 5)) -> dict:
    """`retrieval_accuracy` within consecutive galleries of `gallery_size` pairs, averaged over the galleries
    (the last partial gallery is dropped); also "num_galleries", "gallery_size" and "num_pairs" (used)."""
    n = len(image_embeds)
    if gallery_size < 2:
        raise ValueError(f"gallery_size must be >= 2, got {gallery_size}")
    count = n // gallery_size
    if count == 0:
        raise ValueError(f"{n} pairs make no gallery of {gallery_size}")
    groups = None if groups is None else np.asarray(groups)
    results = []
    for g in range(count):
        sl = slice(g * gallery_size, (g + 1) * gallery_size)
        results.append(retrieval_accuracy(image_embeds[sl], text_embeds[sl], ks=ks,
                                          groups=None if groups is None else groups[sl]))
    keys = [k for k in results[0] if k != "n"]
    out = {k: float(np.mean([r[k] for r in results])) for k in keys}
    out.update(num_galleries=count, gallery_size=gallery_size, num_pairs=count * gallery_size)
    return out


def split_pairs(data_config, split: str, caption: str | None = None, limit: int | None = None):
    """(uint8 images (N, H, W, 3), captions) of a dataset split in row order (Shapes or an image folder)."""
    from t2ijax.data import preprocess
    from t2ijax.data.pipeline import folder_caption, load_split

    split = SPLITS.get(split, split)
    kind = caption or data_config.caption
    source = load_split(data_config, split)
    n = len(source) if limit is None else min(limit, len(source))
    images, captions = [], []
    for i in range(n):
        row = source[i]
        if data_config.name == "shapes":
            images.append(np.asarray(row["image"], np.uint8))
            text = row[kind]
        else:
            image = preprocess.decode_image(row["image_bytes"])
            images.append(preprocess.from_unit_range(preprocess.preprocess_image(image, int(data_config.resolution))))
            text = folder_caption(json.loads(row["fields"]), kind)
        captions.append(text.decode("utf-8") if isinstance(text, bytes) else str(text))
    return np.stack(images), captions


def embed_pairs(clip_path: str, images, captions, *, batch_size: int = 250):
    """(image embeds, text embeds) (N, E) float32 by the exported CLIP at `clip_path` (its own tokenizer, its
    text tower's max length), through `clip_score.clip_embedders`."""
    from t2ijax.eval.clip_score import clip_embedders
    from t2ijax.methods.clip import export_folder
    from t2ijax.weights.torch_layout import read_config

    folder = export_folder(clip_path)
    max_length = int(read_config(folder).get("text_config", {}).get("max_position_embeddings", 77))
    image_embed, text_embed = clip_embedders(folder, max_length=max_length)
    img = np.concatenate([image_embed(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    txt = np.concatenate([text_embed(list(captions[i:i + batch_size])) for i in range(0, len(captions), batch_size)])
    return img, txt


def evaluate_retrieval(clip_path: str, data_config, split: str = "test", *, gallery_size: int = 100,
                       caption: str | None = None, limit: int | None = None) -> dict:
    """Retrieval accuracy of the exported CLIP on `split` (galleries of `gallery_size` consecutive pairs):
    {"exact": ..., "caption_match": ..., "split", "caption", "clip", ...}."""
    t0 = time.perf_counter()
    images, captions = split_pairs(data_config, split, caption, limit)
    img, txt = embed_pairs(clip_path, images, captions)
    return {"clip": os.path.abspath(clip_path), "split": SPLITS.get(split, split),
            "caption": caption or data_config.caption, "gallery_size": gallery_size,
            "exact": gallery_retrieval(img, txt, gallery_size),
            "caption_match": gallery_retrieval(img, txt, gallery_size, groups=np.asarray(captions)),
            "distinct_captions_per_gallery": float(np.mean([len(set(captions[i:i + gallery_size]))
                                                            for i in range(0, len(captions) // gallery_size
                                                                           * gallery_size, gallery_size)])),
            "seconds": round(time.perf_counter() - t0, 2)}


def format_report(result: dict) -> str:
    lines = [f"CLIP {result['clip']} on {result['split']} ({result['caption']} captions): "
             f"{result['exact']['num_galleries']} galleries of {result['gallery_size']} pairs "
             f"({result['exact']['num_pairs']} pairs, {result['distinct_captions_per_gallery']:.1f} distinct captions "
             "per gallery)"]
    for name in ("exact", "caption_match"):
        r = result[name]
        lines.append(f"  {name:13s} i->t top1 {100 * r['i2t_top1']:.1f}%  top5 {100 * r['i2t_top5']:.1f}%   "
                     f"t->i top1 {100 * r['t2i_top1']:.1f}%  top5 {100 * r['t2i_top5']:.1f}%")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m t2ijax.eval.retrieval", description=__doc__.split("\n")[0])
    parser.add_argument("--clip", required=True, help="exported CLIP folder (a `t2ijax convert` export or its clip/)")
    parser.add_argument("--config", required=True, help="experiment config, path.py[:arg]; its data section is used")
    parser.add_argument("--split", default="test", choices=sorted(SPLITS))
    parser.add_argument("--gallery_size", type=int, default=100)
    parser.add_argument("--caption", default=None, help="caption kind (default: the config's data.caption)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N pairs of the split only")
    parser.add_argument("--out", default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    from t2ijax.config_utils import load_config

    config = load_config(args.config)
    result = evaluate_retrieval(args.clip, config.data, args.split, gallery_size=args.gallery_size,
                                caption=args.caption, limit=args.limit)
    print(format_report(result))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
