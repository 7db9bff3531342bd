"""Text-conditioned super-resolution on Shapes, 32 -> 64 (the SR stage of configs/cascade_shapes.py).

`t2ijax.methods.super_resolution` (method "super_resolution"): the high-res Shapes image (data.resolution 64) is
degraded to 32x32 and upsampled back (`t2ijax.data.degradations`, defaults), noise-augmented at a random EDM
level (log-uniform sigma_aug in [0.002, 1], 10% clean), and concatenated to the noisy 64x64 input of a pixel-space
U-Net whose class embedding (class_embed_type "timestep") reads the augmentation level; a 1-layer text encoder
is trained with it, as in the CPU demo (configs/demo_shapes.py). EDM formulation (eDiff-I's constants), x0 via
EDM preconditioning, Heun sampling.

Variants (``:variant,key=value``):
  cpu    (default) the trainable stage sized for 2 CPU cores: U-Net [16, 32, 64, 64], one res block a level,
         cross + self attention only at 8x8 (attention at 16x16 and above costs too much on 2 cores), batch 16.
  tiny   tests and smoke runs: a one-level U-Net [8], cross-attention only (as eDiff-I's SR1024), no mid block,
         a few steps, tiny data.
Options: steps=<int>, experts=1|2 (2: eDiff-I's SR256 split, E(1,0) + E(1,1) at the median of the log-normal),
mode=vmap|round_robin|by_mass, sampler=heun|euler|dpm.

Launch (see experiments/cascade_shapes/run.sh):
  t2ijax prepare --config=configs/sr_shapes.py                       # Shapes at 64x64 (TFDS ArrayRecord)
  t2ijax train --config=configs/sr_shapes.py:cpu,steps=600 --workdir=runs/cascade_shapes/sr
  t2ijax sample --config=configs/cascade_shapes.py --prompt="a large red circle" --out=grid.png
"""

import ml_collections

from t2ijax.config_utils import import_sibling, parse_arg

common = import_sibling(__file__, "common")

VARIANTS = ("cpu", "tiny")
HIGH, LOW = 64, 32


def unet(tiny: bool) -> dict:
    if tiny:
        # one level, cross-attention only (no 4096-token self-attention) and no mid block: compile time rules
        return dict(sample_size=HIGH, in_channels=6, out_channels=3, block_out_channels=[8], layers_per_block=1,
                    down_block_types=["CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D"],
                    mid_block_type=None, only_cross_attention=True, attention_head_dim=2, cross_attention_dim=16,
                    norm_num_groups=4, class_embed_type="timestep")
    return dict(sample_size=HIGH, in_channels=6, out_channels=3, block_out_channels=[16, 32, 64, 64],
                layers_per_block=1,
                down_block_types=["DownBlock2D", "DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"], attention_head_dim=8,
                cross_attention_dim=64, norm_num_groups=8, class_embed_type="timestep")


def data_config(tiny: bool, resolution: int = HIGH):
    """Shapes with dense captions at `resolution` (the same scenes and captions as the 32 px demo data)."""
    from t2ijax.data.config import default_data_config

    return default_data_config(resolution=resolution, caption="dense", max_length=80, tokenizer="shapes_word",
                               num_train=64 if tiny else 10000, num_val=8 if tiny else 100,
                               num_test=8 if tiny else 100, with_regions=False, read_threads=2,
                               prefetch_buffer_size=64)


def low_res_config(**noise_aug) -> ml_collections.ConfigDict:
    """model.low_res: 32x32, the default random degradations, EDM noise augmentation."""
    return ml_collections.ConfigDict(dict(
        resolution=LOW,
        # t2ijax.data.degradations.DEFAULTS, spelled out: area / bilinear / bicubic downsampling, blur half the
        # time (sigma 0.2-1.0 px at 64), no pixel noise (the noise augmentation below noises the input), bilinear up
        degradations=dict(kernels=("area", "bilinear", "bicubic"), blur_prob=0.5, blur_sigma=(0.2, 1.0),
                          noise_prob=0.0, noise_std=(0.0, 0.05), upsample="bilinear"),
        noise_aug={**dict(distribution="log_uniform", min=0.002, max=1.0, zero_prob=0.1, scale=True,
                          label_floor=0.002), **noise_aug},
    ))


def get_config(arg=None):
    arg = parse_arg(arg, variant="cpu", steps=0, experts=1, mode="vmap", sampler="heun")
    if arg.variant not in VARIANTS:
        raise ValueError(f"sr_shapes variant {arg.variant!r}; choose one of {VARIANTS}")
    if arg.experts not in (1, 2):
        raise ValueError(f"sr_shapes experts={arg.experts}; choose 1 or 2")
    tiny = arg.variant == "tiny"
    c = common.runtime_defaults(
        method="super_resolution",
        total_steps=int(arg.steps) or (4 if tiny else 600),
        batch_size=(2 if tiny else 16) * (arg.experts if arg.mode == "vmap" else 1),
        compute_dtype="float32",
        ema_decay=0.9 if tiny else 0.99,
        log_every=2 if tiny else 50,
        keep_last=1,
        async_checkpointing=False,
        tensorboard=False,
    )
    c.checkpoint_every = c.total_steps if tiny else 500
    c.optim = common.optim_defaults(lr=2e-3, weight_decay=0.0, schedule="warmup_cosine",
                                    warmup_steps=1 if tiny else 50, end_lr_factor=0.1, grad_clip_norm=1.0)
    c.data = data_config(tiny)

    c.model = ml_collections.ConfigDict()
    c.model.unet = unet(tiny)
    c.model.text = dict(vocab_size=0, max_position_embeddings=0, hidden_size=16 if tiny else 64,
                        intermediate_size=32 if tiny else 128, num_hidden_layers=1,
                        num_attention_heads=2 if tiny else 4, hidden_act="gelu")
    c.model.caption_dropout = 0.1
    c.model.prediction_type = "sample"  # unused by EDM (x0 through the preconditioning); kept for the DDPM switch
    c.model.schedule = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="squaredcos_cap_v2")
    c.model.formulation = "edm"
    c.model.edm = dict(p_mean=-1.2, p_std=1.2, sigma_data=0.5, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    parts = dict(partition="single") if arg.experts == 1 else dict(partition="ediffi_tree", nodes=((1, 0), (1, 1)))
    c.model.experts = ml_collections.ConfigDict(dict(mode=arg.mode, **parts))
    c.model.train_text_encoder = True
    c.model.low_res = low_res_config()

    # Heun 8 steps = 15 evaluations at 64x64; guidance 1 (text guidance hurt the demo's small model, and the
    # low-res image already fixes the layout); noise_aug_level: the sigma_aug the 32 px input is noised with
    c.sample = ml_collections.ConfigDict(dict(num_steps=1 if tiny else 8, guidance_scale=1.0, sampler=arg.sampler,
                                              noise_aug_level=0.1))
    return c
