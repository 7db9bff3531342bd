"""Text-to-image from scratch on the Shapes dataset: a 32x32 pixel-space U-Net + a CLIP-style text encoder.

Variants (the string after ``:``):
  tiny   2-core CPU smoke run: a few hundred K params, batch 8, 20 steps, synthetic-free
         (uses the real Shapes loader at 32x32).
  base   one accelerator: ~30M-param U-Net, 4-layer text encoder, batch 128, 100k steps.

Launch:
  t2ijax train --config=configs/txt2img_shapes.py:tiny --workdir=runs/txt2img_tiny
  t2ijax train --config=configs/txt2img_shapes.py:base --workdir=$HOME/runs/txt2img_shapes
  t2ijax sample --config=configs/txt2img_shapes.py:base --workdir=$HOME/runs/txt2img_shapes \
      --prompt="a big red circle left of a small blue square" --out=grid.png
Overrides: --config.optim.lr=3e-4 --config.batch_size=256 --config.mesh.fsdp=4
"""

import ml_collections

from t2ijax.config_utils import import_sibling, parse_arg

common = import_sibling(__file__, "common")


def _unet(variant: str) -> dict:
    if variant == "tiny":
        return dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=[32, 64], layers_per_block=1,
                    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=2,
                    cross_attention_dim=32, norm_num_groups=8)
    return dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=[128, 256, 256], layers_per_block=2,
                down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=8,
                cross_attention_dim=256, norm_num_groups=32)


def get_config(arg=None):
    arg = parse_arg(arg, variant="base")
    if arg.variant not in ("tiny", "base"):
        raise ValueError(f"txt2img_shapes variant {arg.variant!r}; choose 'tiny' or 'base'")
    tiny = arg.variant == "tiny"
    c = common.runtime_defaults(
        method="txt2img",
        total_steps=20 if tiny else 100_000,
        batch_size=8 if tiny else 128,
        compute_dtype="float32" if tiny else "bfloat16",
        ema_decay=0.99 if tiny else 0.9999,
        log_every=5 if tiny else 100,
        checkpoint_every=10 if tiny else 5000,
        keep_period=0 if tiny else 25_000,
    )
    c.optim = common.optim_defaults(lr=1e-3 if tiny else 2e-4, weight_decay=0.01, schedule="warmup_cosine",
                                    warmup_steps=2 if tiny else 1000, grad_clip_norm=1.0)

    from t2ijax.data.config import default_data_config
    # Shapes dense captions reach 80 tokens
    c.data = default_data_config(resolution=32, caption="dense", max_length=80 if tiny else 96,
                                 num_train=256 if tiny else 10000, num_val=32 if tiny else 500,
                                 num_test=32 if tiny else 500, with_regions=False)

    c.model = ml_collections.ConfigDict()
    c.model.unet = _unet(arg.variant)
    c.model.text = dict(vocab_size=0, max_position_embeddings=0,  # 0: from the tokenizer / data.max_length
                        hidden_size=32 if tiny else 256, intermediate_size=64 if tiny else 1024,
                        num_hidden_layers=1 if tiny else 4, num_attention_heads=2 if tiny else 4,
                        hidden_act="gelu")
    c.model.caption_dropout = 0.1
    c.model.prediction_type = "epsilon"
    c.model.schedule = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")

    c.sample = ml_collections.ConfigDict(dict(num_steps=10 if tiny else 50, guidance_scale=3.0))
    return c
