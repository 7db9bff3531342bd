"""eDiff-I base model, 64x64 pixels (Balaji et al. 2022, arXiv 2211.01324; methods notes section 5).

Paper setting (methods notes 5.1-5.4; [S] = one secondary source only):
  * EDM formulation: D(x; sigma) preconditioned with sigma_data 0.5, ln sigma ~ N(-1.2, 1.2^2), loss weight
    lambda(sigma); sigma_min 0.002 / sigma_max 80 are EDM's defaults (eDiff-I states none).
  * Expert ensemble, Config D: 3 experts, E(9,511) (the top 1/512 of p(sigma), sigma > ~9.61) + E(3,0) (the
    bottom 1/8, sigma < ~0.0757) + one model for the rest (`partition="ediffi_tree", nodes=((9, 511), (3, 0))`),
    each initialised from the shared model trained on all noise levels (variant ``parent``; ``init_from``).
  * AdamW lr 1e-4, weight decay 0.01, betas (0.9, 0.999) [S], batch 2048, EMA 0.9999 [S]. Gradient clipping:
    none stated (EDM's code clips none): off. Steps [S]: shared model ~500K, expert fine-tunes ~40K-190K.
  * Conditioning (`t2ijax.methods.ediffi_conditioning`): frozen T5-XXL (4096) token states (113 tokens [S]), CLIP
    L/14 text token states (768, 77 tokens) and pooled embedding, CLIP L/14 image embedding (768); dropped
    independently in training with rates 0.25 / 0.2 / 0.9 [S]; pooled CLIP text + image embedding into the time
    embedding (the U-Net's class embedding, input 768 + 768), cross-attention on [CLIP, T5, image, null] tokens.
  * U-Net [S]: ADM (Dhariwal & Nichol), channel mult [1, 2, 4, 4], base 256 channels, 3 res blocks per level,
    self + cross attention at 32, 16, 8.
Our approximation of that ADM U-Net with the diffusers-style `UNet2DConditionModel`: block_out_channels
[256, 512, 1024, 1024] at 64/32/16/8, layers_per_block 3, CrossAttn blocks (self-attention, cross-attention and
a feed-forward per transformer block) at 32/16/8 and in the middle, 64-channel heads, scale-shift time
conditioning of the resnets (ADM's use_scale_shift_norm); 914M parameters per expert. Not ADM: diffusers' strided-conv / nearest-upsample
resampling instead of BigGAN resblocks, the transformer block's feed-forward, no attention at 64.
Choices that are ours: cross_attention_dim (the projected conditioning width) 1024; guidance scale 5; the Heun
sampler with 13 steps (25 network evaluations, the paper's DEIS budget; DEIS is not implemented); 2048 examples
PER EXPERT per step (vmap mode trains the 3 experts together, global batch 6144).

Arguments (after ``:``, comma separated):
  variant   "base" (Config D experts, init from a parent run), "parent" (one model on all noise levels: eDiff-I's
            step 1) or "tiny" (a few CPU steps on Shapes 32x32 with random tiny T5 / CLIP encoders)
  t5        local Hugging Face T5-XXL encoder folder (google/t5-v1_1-xxl layout, with its tokenizer files)
  clip      local CLIP L/14 text folder (CLIPTextModel / CLIPTextModelWithProjection, or a CLIPModel folder)
  t5_tokenizer, clip_tokenizer   tokenizer folders when the encoder folders hold none
  data      a local image + caption folder (t2ijax.data.pipeline "image_text_folder")
  image_cache  `t2ijax.data.clip_features` cache of the train split (its CLIP L/14 image embeddings); ``t2ijax
            prepare`` builds it from --config.model.multi_encoder.image_clip_path (a full CLIPModel L/14 folder).
            Without it training sees no image embedding (always dropped) and the style path stays untrained.

Launch (see launch/README.md; precompute the text embeddings once, as eDiff-I does):
  ARGS=t5=/models/t5-v1_1-xxl,clip=/models/clip-vit-large-patch14,data=/data/pairs
  ARGS=$ARGS,image_cache=/shared/cache/clip_l14_train.array_record
  launch/local.sh prepare --config=configs/ediffi_base64.py:variant=parent,$ARGS --workdir=/shared/runs/ediffi_parent \\
      --config.model.multi_encoder.feature_cache=/shared/cache/ediffi_text_train.array_record \\
      --config.model.multi_encoder.image_clip_path=/models/clip-vit-large-patch14
  sbatch --nodes=32 launch/slurm.sbatch train --config=configs/ediffi_base64.py:variant=parent,$ARGS \\
      --workdir=/shared/runs/ediffi_parent --config.mesh.fsdp=8 \\
      --config.model.multi_encoder.feature_cache=/shared/cache/ediffi_text_train.array_record
  sbatch --nodes=32 launch/slurm.sbatch train --config=configs/ediffi_base64.py:$ARGS \\
      --workdir=/shared/runs/ediffi_base64 --config.init_from=/shared/runs/ediffi_parent --config.mesh.fsdp=8 \\
      --config.model.multi_encoder.feature_cache=/shared/cache/ediffi_text_train.array_record
  t2ijax sample --workdir=/shared/runs/ediffi_base64 --prompt="a corgi wearing a red bowtie" --out=corgi.png
Tiny smoke run:
  t2ijax train --config=configs/ediffi_base64.py:tiny --workdir=runs/ediffi_tiny
"""

import ml_collections

from t2ijax.config_utils import import_sibling, parse_arg

common = import_sibling(__file__, "common")

VARIANTS = ("base", "parent", "tiny")
T5_XXL, CLIP_L14, CLIP_IMAGE = 4096, 768, 768


def _unet(tiny: bool, class_dim: int) -> dict:
    if tiny:  # configs/demo_shapes.py's tiny U-Net (one level: CPU compile time), plus the class embedding
        return dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=[8], layers_per_block=1,
                    down_block_types=["CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D"],
                    attention_head_dim=2, cross_attention_dim=16, norm_num_groups=4, mid_block_type=None,
                    class_embed_type="projection", projection_class_embeddings_input_dim=class_dim)
    return dict(sample_size=64, in_channels=3, out_channels=3, block_out_channels=[256, 512, 1024, 1024],
                layers_per_block=3,
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                  "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                attention_head_dim=[4, 8, 16, 16],  # diffusers' quirk: the number of heads (64-channel heads)
                cross_attention_dim=1024, norm_num_groups=32, resnet_time_scale_shift="scale_shift",
                class_embed_type="projection", projection_class_embeddings_input_dim=class_dim)


def _multi_encoder(arg, tiny: bool) -> dict:
    m = dict(t5_path=arg.t5, clip_path=arg.clip, t5_tokenizer=arg.t5_tokenizer, clip_tokenizer=arg.clip_tokenizer,
             t5_dropout=0.25, clip_text_dropout=0.2, clip_image_dropout=0.9, width=0, layer_norm=False,
             frozen_seed=0, feature_cache="", feature_cache_dtype="float16", image_cache=arg.image_cache,
             image_clip_path="", image_field="clip_image_embeds")
    if tiny:  # random tiny frozen encoders on the data tokenizer (vocab_size 0 = its size)
        m.update(t5=dict(vocab_size=0, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                         feed_forward_proj="gated-gelu"),
                 clip=dict(vocab_size=0, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, max_position_embeddings=0, hidden_act="quick_gelu"),
                 t5_max_length=0, clip_max_length=0, image_embed_dim=8, text_dtype="float32")
    else:
        m.update(t5={}, clip={}, t5_max_length=113, clip_max_length=77, image_embed_dim=CLIP_IMAGE,
                 text_dtype="bfloat16")
    return m


def get_config(arg=None):
    arg = parse_arg(arg, variant="base", t5="", clip="", t5_tokenizer="", clip_tokenizer="", data="", image_cache="",
                    steps=0)
    if arg.variant not in VARIANTS:
        raise ValueError(f"ediffi_base64 variant {arg.variant!r}; choose one of {VARIANTS}")
    tiny = arg.variant == "tiny"
    experts = dict(partition="single") if arg.variant == "parent" else \
        dict(partition="ediffi_tree", nodes=((9, 511), (3, 0)))
    num_experts = 1 if arg.variant == "parent" else 3
    per_expert = 2 if tiny else 2048
    c = common.runtime_defaults(
        method="experts",
        total_steps=int(arg.steps) or (2 if tiny else 500_000 if arg.variant == "parent" else 190_000),
        batch_size=per_expert * num_experts,  # vmap: each expert trains on its own batch of `per_expert`
        compute_dtype="float32" if tiny else "bfloat16",
        ema_decay=0.9 if tiny else 0.9999,
        log_every=1 if tiny else 100,
        checkpoint_every=2 if tiny else 5000,
        keep_period=0 if tiny else 50_000,
        keep_last=1 if tiny else 3,
    )
    if tiny:
        c.async_checkpointing = False
        c.tensorboard = False
        c.progress = False
    c.optim = common.optim_defaults(lr=1e-4 if not tiny else 1e-3, b1=0.9, b2=0.999, weight_decay=0.01,
                                    schedule="constant", grad_clip_norm=0.0)

    from t2ijax.data.config import default_data_config
    if tiny:
        c.data = default_data_config(resolution=32, caption="short", max_length=20, tokenizer="shapes_word",
                                     num_train=16, num_val=4, num_test=4, with_regions=False, read_threads=0,
                                     prefetch_buffer_size=8)
    else:
        # the main tokenization is CLIP's (77 tokens); T5's is an extra caption of the same kind (113 tokens)
        clip_tok, t5_tok = arg.clip_tokenizer or arg.clip, arg.t5_tokenizer or arg.t5
        c.data = default_data_config(name="image_text_folder", folder=arg.data, resolution=64, caption="dense",
                                     max_length=77, tokenizer=clip_tok, random_flip=False, with_regions=False,
                                     worker_count=8, extra_captions={"t5": f"dense:{t5_tok}:113"})

    me = _multi_encoder(arg, tiny)
    c.model = ml_collections.ConfigDict()
    c.model.unet = _unet(tiny, (16 + 8) if tiny else CLIP_L14 + CLIP_IMAGE)
    c.model.conditioning = "multi_encoder"
    c.model.multi_encoder = me
    c.model.train_text_encoder = False  # no trained text encoder: T5 and CLIP are frozen (config.model.multi_encoder)
    c.model.formulation = "edm"
    c.model.edm = dict(p_mean=-1.2, p_std=1.2, sigma_data=0.5, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    c.model.experts = ml_collections.ConfigDict(dict(mode="vmap", **experts))
    c.sample = ml_collections.ConfigDict(dict(sampler="heun", num_steps=1 if tiny else 13,
                                              guidance_scale=2.0 if tiny else 5.0))
    return c
