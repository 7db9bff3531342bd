"""A CLIP trained from scratch on Shapes (`t2ijax/methods/clip.py`): both towers, symmetric InfoNCE.

The export feeds ECLIPSE (text and image embeddings, text token states), FID-style features and CLIP score
offline. Captions: the dense kind (every object's colour, shape and size, the relation between consecutive
objects and the per-shape counts: what a Shapes prior must read), mixed per example with the short kind
(colour and shape only) at ``model.caption_mix``; all at ``data.max_length`` = 80 (the longest dense caption
has 76 tokens). Images: 32x32, OpenAI CLIP mean/std normalisation (the method's docstring).

Variants (the string after ``:``):
  tiny   CI smoke run: a one-layer ViT and text transformer of width 32, batch 8, 10 steps (seconds).
  base   2-core CPU in about 10-20 minutes: a ViT (patch 4 on 32x32: 64 patches) and a causal text transformer,
         each 2 layers of width 64 with 4 heads, projection 64 (227K params), batch 128, 1,000 steps
         (6.4 epochs of 20,000 scenes), AdamW 2e-3 with warmup and cosine decay, random flips (captions'
         left / right swapped with them); val / test 1,000 scenes each (10 retrieval galleries of 100).

Launch:
  t2ijax prepare --config=configs/clip_shapes.py:base
  t2ijax train --config=configs/clip_shapes.py:base --workdir=runs/clip_shapes
  t2ijax convert --workdir=runs/clip_shapes --out=runs/clip_shapes/export
  python -m t2ijax.eval.retrieval --clip=runs/clip_shapes/export --config=configs/clip_shapes.py:base --split=test
Overrides: --config.optim.lr=1e-3 --config.batch_size=256 --config.model.caption_mix.short=0 (dense only)
"""

import ml_collections

from t2ijax.config_utils import import_sibling, parse_arg

common = import_sibling(__file__, "common")


def get_config(arg=None):
    arg = parse_arg(arg, variant="base")
    if arg.variant not in ("tiny", "base"):
        raise ValueError(f"clip_shapes variant {arg.variant!r}; choose 'tiny' or 'base'")
    tiny = arg.variant == "tiny"
    steps = 10 if tiny else 1000
    c = common.runtime_defaults(
        method="clip",
        total_steps=steps,
        batch_size=8 if tiny else 128,
        compute_dtype="float32",  # CPU: bfloat16 is slower there
        ema_decay=0.0,            # short runs: the raw params at the end of the cosine schedule
        log_every=5 if tiny else 100,
        checkpoint_every=5 if tiny else 500,
    )
    c.optim = common.optim_defaults(lr=1e-3 if tiny else 2e-3, weight_decay=0.1, b2=0.98, eps=1e-6,
                                    schedule="warmup_cosine", warmup_steps=2 if tiny else 100, grad_clip_norm=1.0)

    from t2ijax.data.config import default_data_config
    c.data = default_data_config(resolution=32, caption="dense", max_length=80, num_train=64 if tiny else 20000,
                                 num_val=16 if tiny else 1000, num_test=16 if tiny else 1000, with_regions=False,
                                 random_flip=True, extra_captions={"short": "short"})

    c.model = ml_collections.ConfigDict()
    width = 32 if tiny else 64
    layers = 1 if tiny else 2
    c.model.text = dict(vocab_size=0, max_position_embeddings=0,  # 0: from the tokenizer / data.max_length
                        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                        num_attention_heads=2 if tiny else 4, hidden_act="gelu")
    c.model.vision = dict(image_size=32, patch_size=8 if tiny else 4, hidden_size=width, intermediate_size=4 * width,
                          num_hidden_layers=layers, num_attention_heads=2 if tiny else 4, hidden_act="gelu")
    c.model.projection_dim = 32 if tiny else 64
    c.model.logit_scale_init = 2.6592  # log(1 / 0.07)
    c.model.max_logit_scale = 100.0
    # per-example caption kind: data.caption ("dense") or a data.extra_captions name
    c.model.caption_mix = {"dense": 0.8, "short": 0.2}
    return c
