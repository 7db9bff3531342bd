"""ERNIE-ViLG 2.0's mixture of denoising experts (MoDE, arXiv 2210.15257): 10 latent-diffusion U-Nets, one per
block of 100 DDPM timesteps, sharing one trained text encoder.

Paper recipe (methods.md 6.3, secondary sources): stage 1 trains one U-Net + the text encoder on t ~ U[0, 1000)
for 350K steps; stage 2 copies it into 10 experts and trains 90K more steps, each step sampling t and updating
only expert floor(t / 100) plus the shared text encoder (Algorithm 1 = ``experts.mode="by_mass"``: with equal
blocks every expert is drawn with probability 1/10). AdamW lr 0.9e-4, betas (0.9, 0.999), weight decay 0.01;
DDPM linear schedule over 1,000 steps; DDIM 50 steps with classifier-free guidance 2.1.
U-Net per expert: model channels 512, channel mult [1, 2, 3, 4], 3 res blocks, attention at downsampling 2, 4,
8, head width 64 (2.2B parameters in the paper). Text encoder: a 24-layer transformer, width 2048, 32 heads,
vocabulary 21,128, context 77.

Choices where the sources are silent or where this library differs (documented, switchable by overrides):
  * latent resolution: 64x64 latents of a Stable-Diffusion-style 4-channel VAE (512 px images); the paper's
    autoencoder and resolution are not published (``--config.model.vae_path`` = your VAE folder);
  * the text enters through the U-Net's cross-attention (diffusers' SD layout); ERNIE attends over the
    concatenation of image and text tokens; that variant is not implemented;
  * the text encoder is our CLIP-style transformer (`t2ijax.models.text.clip`) with ERNIE's sizes, trained
    from scratch with the experts (``model.train_text_encoder``); the global batch is not published: 1,024;
  * stage 2 in one jitted step over all experts is ``experts.mode="vmap"`` (each expert its own micro-batch);
  * knowledge-enhanced training (``model.knowledge``, `t2ijax.methods.knowledge`) is on in both stages: key-token
    emphasis w_a 0.01 and region weighting w_l 0.1, each on 50% of the examples, and caption completion
    (``data.complete_captions``). ERNIE's key words come from jieba POS tags on Chinese captions; here the
    provider is ``data.key_words`` ("heuristic": the built-in English one, "spacy": a spaCy model the user
    installed) and the regions and completion labels come from an offline detector run stored per row as
    metadata "objects" [{"label", "box"}], or a ``data.detector`` plug-in. Where the attention factor sits
    is `model.knowledge.key_placement` (default: post-softmax, not renormalised). ``knowledge=False`` turns
    all of it off.

Arguments (after ``:``, comma separated):
  variant   "mode" (stage 2, the default), "stage1" (the single model), "tiny" (2-core CPU smoke run on Shapes:
            a random tiny VAE, 10 tiny experts, sequential by-mass training)
  data      a local image + caption folder (t2ijax.data.pipeline "image_text_folder"); ERNIE used 170M pairs
  vae       a local diffusers VAE folder
  knowledge True (default) / False: ERNIE's knowledge-enhanced training

Launch (see launch/README.md):
  TPU_NAME=my-v5p-256 ZONE=us-east5-a launch/tpu_pod.sh train --config=configs/ernie_mode.py:stage1,data=/data/pairs,vae=/data/vae \\
      --workdir=gs://my-bucket/runs/ernie_stage1 --config.mesh.fsdp=8
  TPU_NAME=my-v5p-256 ZONE=us-east5-a launch/tpu_pod.sh train --config=configs/ernie_mode.py:mode,data=/data/pairs,vae=/data/vae \\
      --workdir=gs://my-bucket/runs/ernie_mode --config.init_from=gs://my-bucket/runs/ernie_stage1 \\
      --config.mesh.expert=2 --config.mesh.fsdp=8
  t2ijax sample --config=configs/ernie_mode.py:mode --workdir=gs://my-bucket/runs/ernie_mode --prompt="..." --out=grid.png
Tiny smoke run:
  t2ijax train --config=configs/ernie_mode.py:tiny --workdir=runs/ernie_tiny
"""

import ml_collections

from t2ijax.config_utils import import_sibling, parse_arg

common = import_sibling(__file__, "common")


def _unet(tiny: bool) -> dict:
    if tiny:
        return dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=[8], layers_per_block=1,
                    down_block_types=["CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D"],
                    attention_head_dim=2, cross_attention_dim=16, norm_num_groups=4)
    channels = [512 * m for m in (1, 2, 3, 4)]
    return dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=channels, layers_per_block=3,
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                attention_head_dim=[c // 64 for c in channels],  # diffusers: heads per block = width / head width 64
                cross_attention_dim=2048, norm_num_groups=32)


def _vae(tiny: bool) -> dict:
    if tiny:
        return dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 8], layers_per_block=1,
                    norm_num_groups=4, down_block_types=["DownEncoderBlock2D"] * 2,
                    up_block_types=["UpDecoderBlock2D"] * 2, sample_size=32, scaling_factor=0.18215)
    return dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
                layers_per_block=2, norm_num_groups=32, down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, sample_size=512, scaling_factor=0.18215)


def get_config(arg=None):
    arg = parse_arg(arg, variant="mode", data="", vae="", knowledge=True)
    if arg.variant not in ("mode", "stage1", "tiny"):
        raise ValueError(f"ernie_mode variant {arg.variant!r}; choose 'mode', 'stage1' or 'tiny'")
    tiny = arg.variant == "tiny"
    c = common.runtime_defaults(
        method="experts",
        total_steps=4 if tiny else (350_000 if arg.variant == "stage1" else 90_000),
        batch_size=2 if tiny else 1024,
        compute_dtype="float32" if tiny else "bfloat16",
        ema_decay=0.9 if tiny else 0.9999,
        log_every=2 if tiny else 100,
        checkpoint_every=4 if tiny else 5000,
        keep_period=0 if tiny else 50_000,
    )
    c.optim = common.optim_defaults(lr=1e-3 if tiny else 0.9e-4, b1=0.9, b2=0.999, weight_decay=0.01,
                                    schedule="constant", warmup_steps=0 if tiny else 10_000, grad_clip_norm=1.0)

    from t2ijax.data.config import default_data_config
    if arg.data:
        c.data = default_data_config(name="image_text_folder", folder=arg.data, resolution=512, max_length=77,
                                     tokenizer="", with_regions=arg.knowledge,
                                     key_words="heuristic" if arg.knowledge else "annotations",
                                     complete_captions=arg.knowledge)
    else:  # Shapes: the smoke run, or a placeholder until `data=` names the real pairs (annotated key words)
        c.data = default_data_config(resolution=32, caption="dense", max_length=80, num_train=64 if tiny else 10000,
                                     num_val=8, num_test=8, with_regions=arg.knowledge,
                                     complete_captions=arg.knowledge, read_threads=2, prefetch_buffer_size=64)

    c.model = ml_collections.ConfigDict()
    c.model.formulation = "ddpm"
    c.model.schedule = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear")
    c.model.prediction_type = "epsilon"
    c.model.caption_dropout = 0.1
    c.model.unet = _unet(tiny)
    c.model.vae_path = arg.vae
    c.model.vae = {} if arg.vae else _vae(tiny)
    c.model.text = dict(vocab_size=0 if tiny else 21128, max_position_embeddings=0,
                        hidden_size=16 if tiny else 2048, intermediate_size=32 if tiny else 8192,
                        num_hidden_layers=1 if tiny else 24, num_attention_heads=2 if tiny else 32,
                        hidden_act="gelu")
    c.model.train_text_encoder = True
    c.model.knowledge = ml_collections.ConfigDict(dict(
        enabled=arg.knowledge, key_tokens=True, key_weight=0.01, key_fraction=0.5, key_placement="post_softmax",
        regions="masks", region_weight=0.1, region_fraction=0.5))
    single = arg.variant == "stage1"
    c.model.experts = ml_collections.ConfigDict(dict(
        partition="single" if single else "ernie", num_experts=1 if single else 10,
        mode="by_mass",  # Algorithm 1: each step draws t, so expert floor(t / 100) with probability 1/10
    ))
    c.sample = ml_collections.ConfigDict(dict(num_steps=2 if tiny else 50, guidance_scale=2.1, sampler="ddim",
                                              clip_sample=False))
    return c
