"""FID-style distance of generated Shapes images to the real ones, in the feature space of the Shapes CLIP.

    python experiments/experts_shapes/fid.py --split=validation --clip=runs/clip_shapes/export/clip \
        EVAL_DIR_BASELINE EVAL_DIR_B [EVAL_DIR_C ...] [--json=out.json] [--reference=2000]

Each EVAL_DIR holds the images.npz that `t2ijax eval --benchmark=shapes` wrote (same prompts and seeds in every
directory). The reference is the first `--reference` images of the Shapes train split (the same distribution as
every split; the held-out splits have only 100 scenes). The features are the Shapes CLIP's projected image
embeddings (64 dims), so the numbers are comparable only with each other. Uncertainty: a paired bootstrap over
prompts (all images of a resampled prompt go together, the same resample for every directory) gives each FID's
standard error and the standard error of each directory's difference to the first one.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))


def reference_images(config_spec: str, count: int) -> np.ndarray:
    from t2ijax.config_utils import load_config
    from t2ijax.data.pipeline import make_loader

    c = load_config(config_spec)
    loader = make_loader(c.data, split="train", batch_size=1, seed=0, shuffle=False, drop_remainder=False)
    n = min(count, len(loader.source))
    return np.stack([np.asarray(loader.example(i)["image"]) for i in range(n)])


def to_uint8(images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    return np.clip((images + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


def main(argv=None) -> dict:
    from t2ijax.eval.clip_score import clip_embedders
    from t2ijax.eval.evaluate import load_generated
    from t2ijax.eval.fid import encode, feature_statistics, frechet_distance

    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--split", required=True)
    ap.add_argument("--clip", required=True)
    ap.add_argument("--config", default="configs/experts_shapes.py:parent")
    ap.add_argument("--reference", type=int, default=2000)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)

    image_embed, _ = clip_embedders(args.clip)
    ref = encode(to_uint8(reference_images(args.config, args.reference)), image_embed)
    mu_r, cov_r = feature_statistics(ref)
    feats, prompts = {}, None
    for d in args.dirs:
        gen = load_generated(d)
        if prompts is None:
            prompts = gen["prompts"]
        elif gen["prompts"] != prompts:
            raise ValueError(f"{d} was not sampled on the same prompts as {args.dirs[0]}")
        p, k = gen["images"].shape[:2]
        feats[d] = encode(gen["images"].reshape((p * k,) + gen["images"].shape[2:]), image_embed).reshape(p, k, -1)

    def fid_of(f):
        return frechet_distance(*feature_statistics(f.reshape(-1, f.shape[-1])), mu_r, cov_r)

    rng = np.random.default_rng(0)
    n_prompts = len(prompts)
    boots = {d: [] for d in args.dirs}
    for _ in range(args.bootstrap):
        idx = rng.integers(0, n_prompts, n_prompts)
        for d in args.dirs:
            boots[d].append(fid_of(feats[d][idx]))
    base = args.dirs[0]
    out = {"split": args.split, "reference_images": len(ref), "prompts": n_prompts, "rows": []}
    for d in args.dirs:
        b = np.asarray(boots[d])
        row = {"dir": d, "fid": fid_of(feats[d]), "se": float(b.std(ddof=1))}
        if d != base:
            diff = b - np.asarray(boots[base])
            row["minus_first"] = row["fid"] - fid_of(feats[base])
            row["minus_first_se"] = float(diff.std(ddof=1))
            row["shown"] = abs(row["minus_first"]) > 2 * row["minus_first_se"]
        out["rows"].append(row)
        extra = (f"  {d} - {base}: {row['minus_first']:+.4f} +/- {row['minus_first_se']:.4f}"
                 f" ({'shown' if row['shown'] else 'not shown'})") if d != base else ""
        print(f"{args.split} FID-CLIP {d}: {row['fid']:.4f} +/- {row['se']:.4f}{extra}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
