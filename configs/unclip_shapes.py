"""The unCLIP decoder on Shapes 32x32 and the text -> prior -> decoder pipeline (`t2ijax/methods/unclip.py`).

The decoder is the demo's pixel-space U-Net (x0 prediction, cosine schedule, attention only at 8x8) conditioned on
a CLIP image embedding alone, as Kandinsky 2.2's decoder (`addition_embed_type="image"`,
`encoder_hid_dim_type="image_proj"`, 32 context tokens), with 10% of the embeddings replaced by the zero-image
embedding for guidance. The frozen CLIP is the Shapes CLIP of configs/clip_shapes.py; the prior at sampling time
is any exported prior folder (configs/eclipse_shapes.py runs after `t2ijax convert`).

Arguments (after ``:``, comma separated):
  variant   "base" (default; 2,000 steps at batch 16, about 12 minutes on 2 cores) or "tiny" (smoke run)
  clip      the CLIPModel folder (default runs/clip_shapes/export/clip)
  prior     the prior folder used by sample / eval (default: none; set it per prior to compare)

Launch:
  t2ijax train --config=configs/unclip_shapes.py --workdir=runs/unclip_decoder
  t2ijax eval --config=configs/unclip_shapes.py:prior=runs/eclipse_shapes/export/prior \\
      --workdir=runs/unclip_decoder --split=validation --out=runs/unclip_decoder/eval_eclipse
  t2ijax sample --config=configs/unclip_shapes.py:prior=runs/eclipse_shapes/export/prior \\
      --workdir=runs/unclip_decoder --prompt="a big red circle left of a small blue square"
"""

import ml_collections

from t2ijax.config_utils import import_sibling, parse_arg

common = import_sibling(__file__, "common")
demo = import_sibling(__file__, "demo_shapes")


def get_config(arg=None):
    arg = parse_arg(arg, variant="base", clip="runs/clip_shapes/export/clip", prior="")
    if arg.variant not in ("base", "tiny"):
        raise ValueError(f"unclip_shapes variant {arg.variant!r}; choose 'base' or 'tiny'")
    tiny = arg.variant == "tiny"
    c = common.runtime_defaults(
        method="unclip",
        total_steps=4 if tiny else 2000,
        batch_size=4 if tiny else 16,
        compute_dtype="float32",
        ema_decay=0.9 if tiny else 0.99,
        log_every=2 if tiny else 100,
        checkpoint_every=4 if tiny else 1000,
        keep_last=1,
        tensorboard=not tiny,
    )
    c.optim = common.optim_defaults(lr=2e-3, weight_decay=0.0, schedule="warmup_cosine",
                                    warmup_steps=1 if tiny else 50, end_lr_factor=0.1, grad_clip_norm=1.0)
    c.data = demo.data_config(tiny)
    c.data.tokenizer = arg.clip  # the CLIP's own tokenizer, saved with its export

    c.model = ml_collections.ConfigDict()
    c.model.clip = arg.clip
    c.model.prior = arg.prior
    unet = demo._unet(tiny)
    unet.update(encoder_hid_dim=0,  # 0: the CLIP projection_dim
                 encoder_hid_dim_type="image_proj", addition_embed_type="image")
    c.model.unet = unet
    c.model.embed_dropout = 0.1
    c.model.negative = "zero_image"
    c.model.prior_steps = 25
    c.model.prior_guidance_scale = 4.0
    c.model.prediction_type = "sample"
    c.model.schedule = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                            beta_schedule="squaredcos_cap_v2")
    c.sample = ml_collections.ConfigDict(dict(num_steps=2 if tiny else 20, guidance_scale=1.0))
    return c
