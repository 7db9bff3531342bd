"""ECLIPSE on Shapes: the paper's three priors (Tab. 2) trained on the Shapes CLIP's cached features.

The frozen CLIP is configs/clip_shapes.py's (text width = projection = 64, so the prior's embedding_dim is 64 and
its text length is the data's 80 tokens); the prior is the paper's architecture scaled down (4 heads x 16, 4 layers,
~0.2M params, the CLIP's own size); the recipe is the paper's (AdamW, lr with cosine warm restarts, lambda 0.2)
at a higher lr for the short CPU run (1,000 steps at batch 128). The caches are built once by ``t2ijax prepare``
(the CLIP over the train / validation / test splits of the dense-caption Shapes data); the decoder that turns the
predicted embeddings into images is configs/unclip_shapes.py.

Arguments (after ``:``, comma separated):
  variant   "base" (default) or "tiny" (smoke run)
  prior     "eclipse" (lambda 0.2), "projection" (lambda 0) or "diffusion" (see configs/eclipse_kandinsky22.py)
  clip      the CLIP export (default runs/clip_shapes/export/clip)
  features  folder of the caches (default runs/eclipse_shapes_features)

Launch:
  t2ijax prepare --config=configs/eclipse_shapes.py --workdir=runs/eclipse_shapes
  t2ijax train --config=configs/eclipse_shapes.py --workdir=runs/eclipse_shapes
  t2ijax train --config=configs/eclipse_shapes.py:prior=diffusion --workdir=runs/eclipse_shapes_diffusion
  t2ijax train --config=configs/eclipse_shapes.py --config.model.contrastive_weight=0.4 --workdir=runs/eclipse_l04
  t2ijax convert --workdir=runs/eclipse_shapes --out=runs/eclipse_shapes/export      # -> export/prior
"""

import os

import ml_collections

from t2ijax.config_utils import import_sibling, parse_arg

common = import_sibling(__file__, "common")
kandinsky22 = import_sibling(__file__, "eclipse_kandinsky22")
clip_shapes = import_sibling(__file__, "clip_shapes")


def get_config(arg=None):
    arg = parse_arg(arg, variant="base", prior="eclipse", clip="runs/clip_shapes/export/clip",
                    features="runs/eclipse_shapes_features")
    if arg.variant not in ("base", "tiny"):
        raise ValueError(f"eclipse_shapes variant {arg.variant!r}; choose 'base' or 'tiny'")
    tiny = arg.variant == "tiny"
    c = common.runtime_defaults(
        method="eclipse",
        total_steps=6 if tiny else 1000,
        batch_size=8 if tiny else 128,
        compute_dtype="float32",
        ema_decay=0.0,
        log_every=2 if tiny else 100,
        checkpoint_every=3 if tiny else 500,
        keep_last=1,
        tensorboard=not tiny,
    )
    c.optim = common.optim_defaults(lr=1e-3 if tiny else 5e-4, weight_decay=0.01, schedule="cosine_restarts",
                                    restart_steps=3 if tiny else 500, restart_mult=1, warmup_steps=0 if tiny else 100,
                                    grad_clip_norm=1.0)
    source = clip_shapes.get_config("tiny" if tiny else "base").data
    c.data = ml_collections.ConfigDict(dict(name="feature_cache", path="", paths={
        split: os.path.join(arg.features, f"{split}.array_record") for split in ("train", "validation", "test")}))
    width = 32 if tiny else 64  # the CLIP's text width = projection_dim
    fields = dict(num_attention_heads=2 if tiny else 4, attention_head_dim=16,
                  num_layers=1 if tiny else 4, embedding_dim=width, num_embeddings=int(source.max_length))
    c.model = kandinsky22.prior_model(arg.prior, fields)
    c.model.clip = arg.clip
    c.model.source_data = source
    c.sample = ml_collections.ConfigDict(dict(num_steps=25, guidance_scale=4.0))
    return c
