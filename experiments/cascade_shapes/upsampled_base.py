"""Reference row of the cascade experiment: the 32 px base's samples bilinearly upsampled to 64 px, judged like the
cascade (same 64 px prompts, scenes and seeds): what the SR stage adds over plain interpolation.

    python experiments/cascade_shapes/upsampled_base.py --workdir=runs/experts_shapes/parent \\
        --out=runs/cascade_shapes/eval_upsampled_test --split=test --num_prompts=32 [--method=bilinear|nearest]

The base samples with its own config.sample (steps, guidance) and image i's seed, exactly as the cascade's stage 0.
"""

import argparse
import os

import jax
import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="test", choices=["test", "validation"])
    p.add_argument("--num_prompts", type=int, default=32)
    p.add_argument("--images_per_prompt", type=int, default=4)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--method", default="bilinear", choices=["bilinear", "nearest"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from t2ijax.config_utils import import_sibling
    from t2ijax.eval.evaluate import evaluate
    from t2ijax.train.sampling import config_from_workdir, load_for_inference, make_sampler

    configs = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs")
    sr_shapes = import_sibling(os.path.join(configs, "sr_shapes.py"), "sr_shapes")
    config = config_from_workdir(args.workdir)
    method, params, frozen, _ = load_for_inference(config, args.workdir)
    base = make_sampler(method, params, frozen)
    r = args.resolution

    def sampler(prompts, seeds):
        x = np.asarray(base(prompts, seeds)).astype(np.float32) / 127.5 - 1.0
        up = jax.image.resize(x, (x.shape[0], r, r, 3), "linear" if args.method == "bilinear" else "nearest")
        return np.clip(np.round((np.asarray(up) + 1.0) * 127.5), 0, 255).astype(np.uint8)

    sampler.settings = {**base.settings, "upsample": f"{args.method} {method.resolution} -> {r}"}
    results = evaluate(sampler, benchmark="shapes", out_dir=args.out, data_config=sr_shapes.data_config(False, r),
                       num_prompts=args.num_prompts, images_per_prompt=args.images_per_prompt, seed=args.seed,
                       split=args.split)
    print(f"[upsampled_base] DPG-style {results['dpg_score']:.2f} ({args.num_prompts} {args.split} prompts) "
          f"-> {args.out}")


if __name__ == "__main__":
    main()
