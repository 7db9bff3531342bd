"""ECLIPSE prior for the Kandinsky 2.2 decoder (arXiv 2312.04655): 34.2M params, CLIP ViT-bigG/14 width 1280.

Paper recipe (methods notes §4.6): global batch 1,024 (256 x 4 GPUs), lr 5e-5 with cosine annealing with warm
restarts, about 60,000 iterations, trained on precomputed CLIP features (LAION-HighRes 5M for the release).
Unpublished, chosen here and switchable: AdamW (b 0.9/0.999, weight decay 0.01), restart period T_0 10,000 steps
(T_mult 1), tau 0.01, no text dropout, the projection MSE averaged over elements (see t2ijax/methods/eclipse.py).

Arguments (after ``:``, comma separated):
  variant   "paper" (default) or "tiny" (CPU smoke run on a small random feature cache; set data.path)
  prior     "eclipse" (lambda 0.2, default), "projection" (lambda 0, the paper's Projection baseline) or
            "diffusion" (the Diffusion-Baseline: same network + timestep token, linear schedule, 1,000 steps,
            25 DDPM steps with CFG 4 at sampling, 10% text dropout)
  features  the CLIP feature cache of the training pairs (t2ijax.data.clip_features.build_clip_feature_cache;
            text token states (77, 1280), pooled text and image embeddings of ViT-bigG/14)

Launch:
  t2ijax train --config=configs/eclipse_kandinsky22.py:features=/data/laion_hr5m_bigg.array_record \\
      --workdir=/shared/runs/eclipse_kandinsky22 --config.mesh.fsdp=4
  TPU_NAME=my-v5e-8 ZONE=us-west4-a launch/tpu_pod.sh train \\
      --config=configs/eclipse_kandinsky22.py:features=gs://bucket/laion_hr5m_bigg.array_record \\
      --workdir=gs://bucket/runs/eclipse_kandinsky22
  t2ijax convert --workdir=/shared/runs/eclipse_kandinsky22 --out=/shared/export/eclipse_kandinsky22
      # -> prior/ in the released ECLIPSE_KandinskyV22_Prior layout
  t2ijax train --config=configs/eclipse_kandinsky22.py:tiny --config.data.path=runs/features/train.array_record \\
      --workdir=runs/eclipse_tiny
"""

import ml_collections

from t2ijax.config_utils import import_sibling, parse_arg

common = import_sibling(__file__, "common")

PRIORS = ("eclipse", "projection", "diffusion")


def prior_model(prior: str, fields: dict) -> ml_collections.ConfigDict:
    """config.model for one of the paper's three priors (Tab. 2) over PriorTransformer `fields`."""
    if prior not in PRIORS:
        raise ValueError(f"prior={prior!r}; choose one of {PRIORS}")
    m = ml_collections.ConfigDict()
    m.prior = dict(fields)
    m.objective = "diffusion" if prior == "diffusion" else "eclipse"
    m.contrastive_weight = 0.2 if prior == "eclipse" else 0.0
    m.temperature = 0.01
    m.learn_temperature = False
    m.projection_reduction = "mean"
    m.text_dropout = 0.1 if prior == "diffusion" else 0.0
    m.schedule = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    return m


def paper_config(arg, *, embedding_dim: int, name: str) -> ml_collections.ConfigDict:
    """The ECLIPSE recipe for a CLIP of width `embedding_dim` (1280 Kandinsky 2.2, 768 Karlo)."""
    arg = parse_arg(arg, variant="paper", prior="eclipse", features="")
    if arg.variant not in ("paper", "tiny"):
        raise ValueError(f"{name} variant {arg.variant!r}; choose 'paper' or 'tiny'")
    tiny = arg.variant == "tiny"
    c = common.runtime_defaults(
        method="eclipse",
        total_steps=6 if tiny else 60_000,
        batch_size=8 if tiny else 1024,
        compute_dtype="float32" if tiny else "bfloat16",
        ema_decay=0.0,
        log_every=2 if tiny else 100,
        checkpoint_every=3 if tiny else 5000,
        keep_period=0 if tiny else 20_000,
    )
    c.optim = common.optim_defaults(lr=5e-5, weight_decay=0.01, schedule="cosine_restarts",
                                    restart_steps=3 if tiny else 10_000, restart_mult=1, grad_clip_norm=1.0)
    c.data = ml_collections.ConfigDict(dict(name="feature_cache", path=arg.features,
                                            paths=dict(train="", val="", test="")))
    fields = (dict(num_attention_heads=2, attention_head_dim=8, num_layers=2, embedding_dim=16, num_embeddings=8)
              if tiny else dict(num_attention_heads=16, attention_head_dim=32, num_layers=10,
                                embedding_dim=embedding_dim, num_embeddings=77))
    c.model = prior_model(arg.prior, fields)
    c.sample = ml_collections.ConfigDict(dict(num_steps=25, guidance_scale=4.0))
    return c


def get_config(arg=None):
    return paper_config(arg, embedding_dim=1280, name="eclipse_kandinsky22")
