"""SUR-adapter on Stable Diffusion 1.5 (arXiv 2305.05189; released recipe: Qrange-group/SUR-adapter run.sh).

Frozen SD1.5 CLIP text encoder, U-Net and VAE; frozen LLaMA-13B read at block 39 (of 40, before the final norm),
mean-pooled over the simple prompt, through the fixed seeded LLMResize projection; only the adapter trains
(`t2ijax/methods/sur.py`). Recipe of run.sh: 512 px (resize, centre crop, random flip), AdamW lr 1e-5 constant,
weight decay 1e-2, batch 1 per device x gradient accumulation 4, 5,000 optimiser steps (= 20,000 micro-batches
here: `total_steps` counts micro-batches), gradient clipping 1.0, epsilon MSE with t ~ U{0..999}, KD weights
1e-5 / 1e-5, eta 0.1, fp16 mixed precision (bfloat16 here).
Quirks: paper intent by default (the MSE trains the adapter, standard KD, attention over tokens, no dropout
at inference); ``release=1`` sets model.reproduce_release (every quirk as released, `t2ijax/methods/sur.py`).

Data: SURD's layout (`metadata.jsonl` with file_name, text = the simple BLIP prompt, prompt = the complex user
prompt) through the image-text-folder builder: data.caption "narrative" reads `text`, the extra caption
"complex" ("dense") reads `prompt`; both tokenised by the CLIP tokenizer at 77.

Arguments (after ``:``, comma separated):
  variant   "base" (the released recipe) or "tiny" (2-core CPU smoke run: random tiny frozen U-Net, VAE, CLIP
            and Llama created on the fly, Shapes data)
  sd15      a local diffusers SD1.5 folder (unet/, vae/, text_encoder/, tokenizer/)
  llm       a local Hugging Face LLaMA folder (13B: width 5120, 40 blocks)
  data      a local SURD-style image folder
  release   1 = reproduce the released code's quirks

Launch (see launch/README.md):
  launch/local.sh prepare --config=configs/sur_sd15.py:sd15=/data/sd15,llm=/data/llama-13b,data=/data/surd \\
      --workdir=/shared/runs/sur --config.model.llm_feature_cache=/shared/cache/llama13b_l39.array_record
  launch/local.sh train --config=configs/sur_sd15.py:sd15=/data/sd15,llm=/data/llama-13b,data=/data/surd \\
      --workdir=/shared/runs/sur --config.model.llm_feature_cache=/shared/cache/llama13b_l39.array_record
  t2ijax sample --workdir=/shared/runs/sur --prompt="a cat wearing the colour of the sky" --out=sur.png
  t2ijax convert --workdir=/shared/runs/sur --out=/shared/sur_export      # adapter.safetensors (released layout)
A released adapter, without training (convert the .pt first: the message of load_sur_adapter says how):
  t2ijax sample --config=configs/sur_sd15.py:sd15=/data/sd15 --config.init_from=/data/adapter.safetensors \\
      --random_init --prompt="a cat wearing the colour of the sky" --out=sur.png
Tiny smoke run:
  t2ijax train --config=configs/sur_sd15.py:tiny --workdir=runs/sur_tiny
"""

import os

import ml_collections

from t2ijax.config_utils import import_sibling, parse_arg

common = import_sibling(__file__, "common")
ella_sd15 = import_sibling(__file__, "ella_sd15")


def _tiny_model() -> ml_collections.ConfigDict:
    ella = ella_sd15.get_config("tiny").model  # the tiny frozen U-Net and VAE (cross_attention_dim 32)
    m = ml_collections.ConfigDict()
    m.unet_path, m.unet, m.vae_path, m.vae = "", dict(ella.unet), "", dict(ella.vae)
    m.text_encoder_path = ""
    m.text = dict(vocab_size=0, max_position_embeddings=0, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, hidden_act="quick_gelu")
    m.llm_path = ""
    m.llm = dict(vocab_size=0, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2)
    m.llm_layer = -1
    m.sur = dict(depth=1, heads=2, ff_dim=64, eta=0.1)
    return m


def get_config(arg=None):
    arg = parse_arg(arg, variant="base", sd15="", llm="", data="", release=0)
    if arg.variant not in ("tiny", "base"):
        raise ValueError(f"sur_sd15 variant {arg.variant!r}; choose 'tiny' or 'base'")
    tiny = arg.variant == "tiny"
    c = common.runtime_defaults(
        method="sur",
        total_steps=4 if tiny else 20_000,  # micro-batches: 5,000 optimiser steps x accumulation 4
        batch_size=2 if tiny else 1,
        compute_dtype="float32" if tiny else "bfloat16",
        ema_decay=0.0,  # the release keeps no EMA
        log_every=2 if tiny else 100,
        checkpoint_every=4 if tiny else 400,  # the release saves the adapter every 100 optimiser steps
        keep_period=0 if tiny else 4000,
    )
    c.optim = common.optim_defaults(lr=1e-5, weight_decay=1e-2, schedule="constant", grad_clip_norm=1.0,
                                    grad_accum_steps=2 if tiny else 4)

    from t2ijax.data.config import default_data_config
    if tiny:
        c.data = default_data_config(resolution=16, caption="narrative", max_length=24, tokenizer="shapes_word",
                                     num_train=16, num_val=4, num_test=4, with_regions=False, read_threads=0,
                                     prefetch_buffer_size=8,
                                     extra_captions={"complex": "dense", "llm": "narrative:shapes_word:32"})
        c.model = _tiny_model()
    else:
        tokenizer = os.path.join(arg.sd15, "tokenizer") if arg.sd15 else ""
        c.data = default_data_config(name="image_text_folder", folder=arg.data, resolution=512, caption="narrative",
                                     max_length=77, tokenizer=tokenizer, random_flip=True, with_regions=False,
                                     worker_count=8, extra_captions={"complex": "dense"})
        c.model = ml_collections.ConfigDict()
        c.model.unet_path = os.path.join(arg.sd15, "unet") if arg.sd15 else ""
        c.model.vae_path = os.path.join(arg.sd15, "vae") if arg.sd15 else ""
        c.model.text_encoder_path = os.path.join(arg.sd15, "text_encoder") if arg.sd15 else ""
        c.model.llm_path = arg.llm
        c.model.llm_layer = 39           # run.sh: the 40th (last) block's output, before the final RMSNorm
        c.model.sur = dict(depth=2, heads=8, ff_dim=2048, eta=0.1)
        # The LLM reads the simple prompt on the fly unless a feature cache is given (recommended for 13B):
        # set data.extra_captions.llm = "narrative:<llama tokenizer folder>:<length>" for the former (and
        # data.random_flip=False: flips swap the main tokenizer's left/right ids only).
    c.model.llm_feature_cache = ""
    c.model.llm_projection_seed = 0
    c.model.kd_temperature = 1.0
    c.model.loss_weights = dict(llm=1e-5, prompt=1e-5)   # run.sh
    c.model.reproduce_release = bool(int(arg.release))
    # each quirk switch: "" = as reproduce_release says (t2ijax/methods/sur.py); set one to override it
    c.model.denoise_gradient = ""   # Q3: "true" = the MSE trains the adapter (paper intent), "false" = as released
    c.model.kd = ""                 # Q6: "standard" (adapter = student) or "release"
    c.model.adapt_uncond = True     # the CFG null states go through the adapter too (as released)
    c.model.caption_dropout = 0.0
    c.model.prediction_type = "epsilon"
    c.model.schedule = dict(common.SD15_SCHEDULE)
    c.model.frozen_seed = 0
    c.sample = ml_collections.ConfigDict(dict(num_steps=2 if tiny else 50, guidance_scale=3.0 if tiny else 7.5))
    return c
