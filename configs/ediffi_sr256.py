"""eDiff-I's SR256 stage (methods notes sec. 5.4): text-conditioned super-resolution 64 -> 256 in pixel space.

Paper (App. A via the notes): a modified Imagen Efficient U-Net, channel mult [1, 2, 4, 8], 128 base channels,
2 res blocks, attention at 32x32; trained on ground-truth 64 px inputs with "random degradations"; an expert
ensemble of 2 (E(1,0) + E(1,1): the median split of the EDM training log-normal), EDM formulation; batch 2048,
AdamW lr 1e-4 (the notes' eDiff-I training constants).

Ours (`t2ijax.methods.super_resolution`, method "super_resolution"): an approximation with diffusers' building
blocks, not the Efficient U-Net itself: UNet2DConditionModel with block_out_channels [128, 256, 512, 1024]
(= 128 x [1, 2, 4, 8]), layers_per_block 2, Down / Down / Down / CrossAttnDown (self + cross attention at
256 / 8 = 32, and in the mid block), in_channels 6 (noisy image + upsampled low-res), class_embed_type
"timestep" for the noise-augmentation level. Not reproduced: the Efficient U-Net's reversed block order, shifted
skip scaling and its memory-efficient downsampling placement (Imagen App. B), and eDiff-I's frozen T5-XXL + CLIP
text conditioning: ``conditioning=text`` (default) trains a CLIP-L-sized text encoder with the U-Net;
``conditioning=multi_encoder`` selects ExpertsMethod's eDiff-I encoders (`t2ijax.methods.ediffi_conditioning`,
with its own model fields to fill in). Degradations: `t2ijax.data.degradations` defaults (our choice: the paper
says only "random degradations"); noise augmentation: log-uniform sigma_aug in [0.002, 1], 10% clean, sampled at
sigma_aug 0.1 (Imagen's choice of a small fixed level; eDiff-I states none). Steps: unstated in the paper
(``steps=`` sets them; 300k here as a placeholder).

Arguments (``:key=value,...``):
  variant       "base" (paper scale) or "tiny" (2-core CPU smoke run: Shapes 16 -> 64 (factor 4 as 64 -> 256),
                a 4-level [8, 16, 16, 32] U-Net with attention at 8x8, 2 experts, a few steps)
  data          local image + caption folder (t2ijax.data.pipeline "image_text_folder"), images >= 256 px
  tokenizer     local tokenizer folder for the trained text encoder (conditioning=text)
  conditioning  "text" | "multi_encoder"
  steps, mode   training steps; expert training mode (vmap: each expert on batch / 2 examples a step)

Launch (see launch/README.md):
  TPU_NAME=my-v5p-128 ZONE=us-east5-a launch/tpu_pod.sh train \\
      --config=configs/ediffi_sr256.py:data=/data/pairs,tokenizer=/models/clip-vit-large-patch14 \\
      --workdir=gs://my-bucket/runs/ediffi_sr256 --config.mesh.fsdp=8
  t2ijax train --config=configs/ediffi_sr256.py:tiny --workdir=runs/ediffi_sr256_tiny      # CPU smoke run
A cascade with it: a stage {workdir: <this run>} after a 64 px base stage, as configs/cascade_shapes.py.
"""

import ml_collections

from t2ijax.config_utils import import_sibling, parse_arg

common = import_sibling(__file__, "common")


def unet(tiny: bool) -> dict:
    if tiny:
        return dict(sample_size=64, in_channels=6, out_channels=3, block_out_channels=[8, 16, 16, 32],
                    layers_per_block=1, down_block_types=["DownBlock2D"] * 3 + ["CrossAttnDownBlock2D"],
                    up_block_types=["CrossAttnUpBlock2D"] + ["UpBlock2D"] * 3, attention_head_dim=2,
                    cross_attention_dim=16, norm_num_groups=4, class_embed_type="timestep")
    return dict(sample_size=256, in_channels=6, out_channels=3, block_out_channels=[128, 256, 512, 1024],
                layers_per_block=2, down_block_types=["DownBlock2D"] * 3 + ["CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D"] + ["UpBlock2D"] * 3, attention_head_dim=16,
                cross_attention_dim=768, norm_num_groups=32, class_embed_type="timestep")


def get_config(arg=None):
    arg = parse_arg(arg, variant="base", data="", tokenizer="", conditioning="text", steps=0, mode="vmap")
    if arg.variant not in ("base", "tiny"):
        raise ValueError(f"ediffi_sr256 variant {arg.variant!r}; choose 'base' or 'tiny'")
    if arg.conditioning not in ("text", "multi_encoder"):
        raise ValueError(f"ediffi_sr256 conditioning {arg.conditioning!r}; choose 'text' or 'multi_encoder'")
    tiny = arg.variant == "tiny"
    c = common.runtime_defaults(
        method="super_resolution",
        total_steps=int(arg.steps) or (4 if tiny else 300_000),
        batch_size=4 if tiny else 2048,
        compute_dtype="float32" if tiny else "bfloat16",
        ema_decay=0.9 if tiny else 0.9999,
        log_every=2 if tiny else 100,
        checkpoint_every=4 if tiny else 5000,
        keep_period=0 if tiny else 50_000,
    )
    if tiny:
        c.update(dict(keep_last=1, async_checkpointing=False, tensorboard=False))
    c.optim = common.optim_defaults(lr=1e-4 if not tiny else 1e-3, weight_decay=0.01, schedule="warmup_cosine",
                                    warmup_steps=1 if tiny else 10_000, end_lr_factor=0.1, grad_clip_norm=1.0)

    from t2ijax.data.config import default_data_config
    if tiny:
        c.data = default_data_config(resolution=64, caption="dense", max_length=80, tokenizer="shapes_word",
                                     num_train=64, num_val=8, num_test=8, with_regions=False, read_threads=0,
                                     prefetch_buffer_size=8)
    else:
        c.data = default_data_config(name="image_text_folder", folder=arg.data, resolution=256, caption="dense",
                                     max_length=77, tokenizer=arg.tokenizer, random_flip=False, with_regions=False,
                                     worker_count=8)

    c.model = ml_collections.ConfigDict()
    c.model.unet = unet(tiny)
    c.model.conditioning = arg.conditioning
    c.model.text = (dict(vocab_size=0, max_position_embeddings=0, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, hidden_act="gelu") if tiny else
                    dict(vocab_size=0, max_position_embeddings=0, hidden_size=768, intermediate_size=3072,
                         num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu"))
    c.model.caption_dropout = 0.1
    c.model.prediction_type = "sample"  # unused by EDM
    c.model.schedule = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="squaredcos_cap_v2")
    c.model.formulation = "edm"
    c.model.edm = dict(p_mean=-1.2, p_std=1.2, sigma_data=0.5, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    # eDiff-I's SR256 ensemble: E(1,0) (low noise) + E(1,1) (high noise), split at the log-normal's median
    c.model.experts = ml_collections.ConfigDict(dict(partition="ediffi_tree", nodes=((1, 0), (1, 1)), mode=arg.mode))
    c.model.train_text_encoder = True
    c.model.low_res = ml_collections.ConfigDict(dict(
        resolution=16 if tiny else 64,
        degradations=dict(kernels=("area", "bilinear", "bicubic"), blur_prob=0.5,
                          blur_sigma=(0.4, 2.0),  # twice sr_shapes' (factor 2) range: the factor here is 4
                          noise_prob=0.0, noise_std=(0.0, 0.05), upsample="bilinear"),
        noise_aug=dict(distribution="log_uniform", min=0.002, max=1.0, zero_prob=0.1, scale=True, label_floor=0.002),
    ))
    c.sample = ml_collections.ConfigDict(dict(num_steps=1 if tiny else 32, guidance_scale=1.0 if tiny else 3.0,
                                              sampler="heun", noise_aug_level=0.1))
    if not tiny:
        c.mesh = dict(common.MESH_PRESETS["data_fsdp8"])
    return c
