"""Embedding-level metrics of trained priors on a held-out CLIP feature cache (no decoder involved).

    python experiments/eclipse_shapes/prior_metrics.py CACHE NAME=PRIOR_DIR [NAME=PRIOR_DIR ...] [--json=F]
        [--guidance=4.0] [--steps=25]     (a diffusion prior's sampling; ECLIPSE priors ignore them)

For each prior (an exported folder, `load_eclipse_prior`), from the same noise (seed = example id): the cosine
similarity of the predicted image embedding to the true one, and image retrieval top-1 in galleries of 100: the
true image's embedding ranked first among 100 scenes' image embeddings by the prediction. Paired differences of the
per-example cosine against the first prior, with standard errors.
"""

import json
import sys

import jax.numpy as jnp
import numpy as np

from t2ijax.data.feature_cache import FeatureCache
from t2ijax.methods.eclipse import predict_image_embeds
from t2ijax.weights import load_eclipse_prior

GALLERY = 100


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def evaluate(cache: FeatureCache, prior_dir: str, batch: int = 250, guidance: float = 4.0, steps: int = 25) -> dict:
    module, params = load_eclipse_prior(prior_dir)
    ids = cache.example_ids
    preds, images = [], []
    for i in range(0, len(ids), batch):
        b = cache.lookup(ids[i:i + batch])
        preds.append(np.asarray(predict_image_embeds(
            module, params, jnp.asarray(b["text_embeds"]), jnp.asarray(b["text_token_states"]),
            jnp.asarray(b["attention_mask"]), seeds=[int(s) for s in ids[i:i + batch]], guidance_scale=guidance,
            num_steps=steps)))
        images.append(b["image_embeds"])
    pred, image = unit(np.concatenate(preds)), unit(np.concatenate(images))
    cos = np.sum(pred * image, -1)
    hits = []
    for g in range(0, len(ids) - GALLERY + 1, GALLERY):
        sim = pred[g:g + GALLERY] @ image[g:g + GALLERY].T
        hits.extend(np.argmax(sim, 1) == np.arange(GALLERY))
    return {"cosine": cos, "top1": float(np.mean(hits)), "n_retrieval": len(hits)}


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    options = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    if len(args) < 2:
        sys.exit(__doc__)
    cache = FeatureCache(args[0])
    priors = dict(a.split("=", 1) for a in args[1:])
    sampling = dict(guidance=float(options.get("guidance", 4.0)), steps=int(options.get("steps", 25)))
    results = {name: evaluate(cache, path, **sampling) for name, path in priors.items()}
    first = next(iter(results))
    out = {}
    for name, r in results.items():
        cos = r["cosine"]
        line = {"cosine": float(cos.mean()), "cosine_se": float(cos.std(ddof=1) / np.sqrt(len(cos))),
                "retrieval_top1_gallery100": r["top1"], "n": len(cos)}
        if name != first:
            d = r["cosine"] - results[first]["cosine"]
            line.update(cosine_diff_vs_first=float(d.mean()), cosine_diff_se=float(d.std(ddof=1) / np.sqrt(len(d))))
        out[name] = line
        extra = (f"; {name} - {first}: {line['cosine_diff_vs_first']:+.4f} +- {line['cosine_diff_se']:.4f}"
                 if name != first else "")
        print(f"{name:12s} cosine(pred, image) {line['cosine']:.4f} +- {line['cosine_se']:.4f}, image retrieval "
              f"top-1 in galleries of {GALLERY}: {100 * line['retrieval_top1_gallery100']:.1f}% (n={line['n']}){extra}")
    if "json" in options:
        with open(options["json"], "w") as f:
            json.dump({"cache": args[0], "priors": priors, "results": out}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
