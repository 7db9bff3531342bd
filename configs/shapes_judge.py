"""The CNN Shapes judge (t2ijax/eval/cnn_judge.py): a 246k-param per-pixel segmenter of augmented train-split
Shapes renders (t2ijax/eval/cnn_judge_data.py), method t2ijax/methods/shapes_judge.py.

Variants (the string after ``:``):
  cpu    (default) the run behind the committed weights t2ijax/eval/assets/cnn_judge.safetensors: batch 32,
         4,000 steps, 18.5 min wall on 2 CPU cores (3.4-4.0 steps/s; final loss 0.089, pixel accuracy
         0.993 colour / 0.989 shape, measured 2026-12-01).
  tiny   a few steps of a 6k-param network at batch 4 (tests).

Launch, then export the EMA params to the asset the judge loads:
  t2ijax train --config=configs/shapes_judge.py --workdir=runs/shapes_judge
  python -m t2ijax.eval.cnn_judge export --workdir=runs/shapes_judge
Overrides: --config.total_steps=6000 --config.data.blur_max=2.0 --config.model.widths=[32,64,96]
"""

import ml_collections

from t2ijax.config_utils import import_sibling, parse_arg

common = import_sibling(__file__, "common")


def get_config(arg=None):
    arg = parse_arg(arg, variant="cpu")
    if arg.variant not in ("cpu", "tiny"):
        raise ValueError(f"shapes_judge variant {arg.variant!r}; choose 'cpu' or 'tiny'")
    tiny = arg.variant == "tiny"
    c = common.runtime_defaults(
        method="shapes_judge",
        total_steps=3 if tiny else 4000,
        batch_size=4 if tiny else 32,
        compute_dtype="float32",
        ema_decay=0.9 if tiny else 0.995,
        log_every=1 if tiny else 50,
        checkpoint_every=3 if tiny else 500,
        prefetch=0 if tiny else 2,
    )
    c.optim = common.optim_defaults(lr=2e-3, weight_decay=1e-4, schedule="warmup_cosine",
                                    warmup_steps=1 if tiny else 150, end_lr_factor=0.02, grad_clip_norm=1.0)

    from t2ijax.eval.cnn_judge_data import data_config
    c.data = data_config()
    c.model = ml_collections.ConfigDict(dict(widths=[8, 8, 8] if tiny else [24, 48, 64], deep_convs=1 if tiny else 3,
                                             box_weight=2.0))
    return c
