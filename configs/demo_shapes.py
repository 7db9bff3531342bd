"""The CPU demo: train a small text-conditioned U-Net on Shapes 32x32 and score it (``t2ijax demo``).

Variants (the string after ``:``):
  cpu    (default) the README demo: a 1.03M-param pixel-space U-Net + 1-layer text encoder trained
         from scratch on the dense Shapes captions, x0 prediction, 1,500 steps at batch 16
         (2.4-3.0 steps/s on 2 idle cores: 13.3 min end to end with data preparation, compiles
         and judging of both splits; measured 2026-11-22, see docs/demo_report.md).
  tiny   the smoke test of the same code path: a few steps, 2 prompts per split.

Launch:
  t2ijax demo                                   # = --config=configs/demo_shapes.py --workdir=runs/demo
  t2ijax demo --config=configs/demo_shapes.py:tiny --workdir=runs/demo_tiny
Overrides: --config.total_steps=3000 --config.demo.num_prompts=32 --config.sample.guidance_scale=2

The run writes, under the workdir: checkpoints/, metrics.jsonl, eval/<split>/conditional/ and
eval/<split>/unconditional/ (report.json, report.md, grid.png each) and demo_report.{json,md}
with the scores side by side, plus demo_grid.png (test-split prompts under the images).
"""

import ml_collections

from t2ijax.config_utils import import_sibling, parse_arg

common = import_sibling(__file__, "common")


def _unet(tiny: bool) -> dict:
    if tiny:  # one level: the smoke test is dominated by XLA compile time, which grows with the block count
        return dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=[8], layers_per_block=1,
                    down_block_types=["CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D"],
                    attention_head_dim=2, cross_attention_dim=16, norm_num_groups=4)
    # Attention only at the 8x8 level: on a 2-core CPU self-attention over the 256 tokens of the 16x16
    # level tripled the step time (1.02 s vs 0.33 s per batch of 16, measured 2026-11-22).
    return dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=[16, 32, 64], layers_per_block=1,
                down_block_types=["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
                attention_head_dim=8, cross_attention_dim=64, norm_num_groups=8)


def data_config(tiny: bool, max_length: int = 80):
    """Shapes 32x32 with dense captions: they name every attribute, relation and count the judge asks about."""
    from t2ijax.data.config import default_data_config

    return default_data_config(resolution=32, caption="dense", max_length=max_length, tokenizer="shapes_word",
                               num_train=64 if tiny else 10000, num_val=8 if tiny else 100,
                               num_test=8 if tiny else 100, with_regions=False, read_threads=2,
                               prefetch_buffer_size=64)


def get_config(arg=None):
    arg = parse_arg(arg, variant="cpu")
    if arg.variant not in ("cpu", "tiny"):
        raise ValueError(f"demo_shapes variant {arg.variant!r}; choose 'cpu' or 'tiny'")
    tiny = arg.variant == "tiny"
    c = common.runtime_defaults(
        method="txt2img",
        total_steps=4 if tiny else 1500,
        batch_size=4 if tiny else 16,
        compute_dtype="float32",
        ema_decay=0.9 if tiny else 0.99,
        log_every=2 if tiny else 50,
        checkpoint_every=4 if tiny else 500,
        keep_last=1,
        async_checkpointing=False,
        tensorboard=False,
    )
    c.optim = common.optim_defaults(lr=2e-3, weight_decay=0.0, schedule="warmup_cosine",
                                    warmup_steps=1 if tiny else 50, end_lr_factor=0.1, grad_clip_norm=1.0)

    c.data = data_config(tiny)

    c.model = ml_collections.ConfigDict()
    c.model.unet = _unet(tiny)
    c.model.text = dict(vocab_size=0, max_position_embeddings=0, hidden_size=16 if tiny else 64,
                        intermediate_size=32 if tiny else 128, num_hidden_layers=1,
                        num_attention_heads=2 if tiny else 4, hidden_act="gelu")
    c.model.caption_dropout = 0.1
    # x0 ("sample") prediction under the cosine schedule: with epsilon prediction and the linear schedule a
    # CPU-sized budget leaves the high-noise x0 estimate (the scene layout) unlearnt and samples stay noise;
    # predicting x0 learns flat-coloured Shapes scenes within ~1,000 steps.
    c.model.prediction_type = "sample"
    c.model.schedule = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                            beta_schedule="squaredcos_cap_v2")

    # Guidance tuned on validation prompts (the 1,800-step run, 48 prompts): 1 -> 43.3, 2 -> 38.0, 3 -> 26.8,
    # 5 -> 8.7. Classifier-free guidance pushes this small pixel-space model's flat colours off the data.
    c.sample = ml_collections.ConfigDict(dict(num_steps=1 if tiny else 20, guidance_scale=1.0))

    # What the demo evaluates (t2ijax/demo.py).
    c.demo = ml_collections.ConfigDict(dict(
        splits=("test", "validation"),         # scored splits, the headline (and grid) first
        num_prompts=2 if tiny else 16,        # prompts scored per split
        images_per_prompt=4,                   # images per prompt (4 like DPG-Bench)
        sample_batch_size=8 if tiny else 32,   # prompts per compiled sampling call
        grid_prompts=2 if tiny else 16,        # prompts shown in demo_grid.png
        seed=0,
    ))
    return c
