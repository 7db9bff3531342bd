"""ELLA's setting on Shapes (16x16 pixels): a frozen U-Net trained with a CLIP-style encoder, then a TSC + frozen T5 in its place.

Variants (the string after ``:``, or ``variant=...,workdir=...``):
  unet   stage 1 (method txt2img): a small pixel-space U-Net and a CLIP-style text
         encoder trained jointly on Shapes dense captions. Its U-Net becomes the frozen
         U-Net of stage 2 (exported with ``t2ijax convert``).
  tsc    stage 2 (method ella): the Timestep-Aware Semantic Connector (AdaLN, time-aware
         queries) trained against the frozen stage-1 U-Net, fed by a frozen tiny T5
         encoder. The T5 is RANDOMLY initialised and frozen (no pretrained T5 can be
         made offline; its features still identify every token and its context, which
         is all the TSC needs on the closed Shapes vocabulary).
  ln     stage 2 ablation (paper Tab. 6): the plain-LayerNorm resampler, no timestep
         path (norm_type="ln", time_aware_query=False), same budget as `tsc`.

`unet_path` (argument) is the diffusers U-Net folder written by ``t2ijax convert`` from the
stage-1 workdir (default: runs/ella_shapes/unet/export/unet). All stages share the data
config, so the Shapes dataset is built once. Commands: experiments/ella_shapes/README.md.
"""

import ml_collections

from t2ijax.config_utils import import_sibling, parse_arg

common = import_sibling(__file__, "common")

DEFAULT_UNET_PATH = "runs/ella_shapes/unet/export/unet"
CONTEXT_WIDTH = 32  # the stage-1 text width = the U-Net's cross_attention_dim = the TSC width


def _data():
    from t2ijax.data.pipeline import default_data_config

    return default_data_config(resolution=16, caption="dense", max_length=80, tokenizer="shapes_word",
                               num_train=4000, num_val=32, num_test=32, with_regions=False, read_threads=2,
                               prefetch_buffer_size=64)


def _unet() -> dict:
    # 16x16 pixels, cross-attention at 8x8 only: sized for a shared 2-core CPU.
    return dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=[32, 64], layers_per_block=1,
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], attention_head_dim=2,
                cross_attention_dim=CONTEXT_WIDTH, norm_num_groups=8)


def _stage1():
    c = common.runtime_defaults(method="txt2img", total_steps=1000, batch_size=32, compute_dtype="float32",
                                ema_decay=0.99, log_every=25, checkpoint_every=100, keep_last=2,
                                tensorboard=False)
    c.optim = common.optim_defaults(lr=1e-3, weight_decay=0.01, schedule="warmup_cosine", warmup_steps=50,
                                    grad_clip_norm=1.0)
    c.data = _data()
    c.model = ml_collections.ConfigDict()
    c.model.unet = _unet()
    c.model.text = dict(vocab_size=0, max_position_embeddings=0, hidden_size=CONTEXT_WIDTH, intermediate_size=64,
                        num_hidden_layers=1, num_attention_heads=2, hidden_act="gelu")
    c.model.caption_dropout = 0.1
    c.model.prediction_type = "epsilon"
    c.model.schedule = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    c.sample = ml_collections.ConfigDict(dict(num_steps=20, guidance_scale=3.0))
    return c


def _stage2(variant: str, unet_path: str):
    c = common.runtime_defaults(method="ella", total_steps=600, batch_size=32, compute_dtype="float32",
                                ema_decay=0.0, log_every=50, checkpoint_every=200, keep_last=2, tensorboard=False)
    # The paper's optimiser (AdamW, constant lr, wd 0.01), with a larger lr for this short run.
    c.optim = common.optim_defaults(lr=1e-3, weight_decay=0.01, schedule="constant", grad_clip_norm=1.0)
    c.data = _data()
    c.model = ml_collections.ConfigDict()
    tiny_tsc = dict(time_channel=32, time_embed_dim=CONTEXT_WIDTH, width=CONTEXT_WIDTH, layers=2, heads=2,
                    num_latents=16, input_dim=64)
    if variant == "ln":
        tiny_tsc.update(norm_type="ln", time_aware_query=False)
    c.model.ella = tiny_tsc
    c.model.unet_path = unet_path
    c.model.vae_path = ""
    c.model.text_encoder_path = ""
    c.model.text_encoder_type = "t5"
    # vocab_size 0 = the tokenizer's size.
    c.model.text = dict(vocab_size=0, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                        feed_forward_proj="gated-gelu")
    c.model.text_dtype = "float32"
    c.model.text_mode = "fixed"
    c.model.caption_dropout = 0.1
    c.model.feature_cache = ""
    c.model.prediction_type = "epsilon"
    c.model.schedule = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    c.model.frozen_seed = 0
    c.sample = ml_collections.ConfigDict(dict(num_steps=20, guidance_scale=3.0))
    return c


def get_config(arg=None):
    arg = parse_arg(arg, variant="tsc", unet_path=DEFAULT_UNET_PATH)
    if arg.variant == "unet":
        return _stage1()
    if arg.variant in ("tsc", "ln"):
        return _stage2(arg.variant, arg.unet_path)
    raise ValueError(f"ella_shapes variant {arg.variant!r}; choose 'unet', 'tsc' or 'ln'")
