"""ELLA on Stable Diffusion 1.5 (arXiv 2403.05135): train the TSC against a frozen SD1.5 U-Net + VAE and a
frozen LLM (Flan-T5-XL encoder by default).

Paper recipe (methods notes §1.8): 512px, AdamW(lr 1e-4 constant, weight decay 0.01), epsilon MSE,
t ~ U{0..999}, only the 66.8M-parameter TSC trains; T5 in float16 (the released weights were trained
on fp16 T5 features); fixed-length text mode (128 tokens, pads included, no mask) as released.
The global batch is 256 (`batch_size`); caption dropout to T5("") with probability
`model.caption_dropout` (default 0.1, ELLA's own rate is unpublished).

Arguments (after ``:``, comma separated):
  variant      "base" (the paper setting) or "tiny" (2-core CPU smoke run: random tiny frozen U-Net, VAE
               and LLM created on the fly, Shapes data at 16px)
  sd15         a local diffusers SD1.5 folder (its unet/ and vae/ sub-folders are used)
  llm          a local Hugging Face folder of the frozen LLM: Flan-T5-XL (default), or a Llama
               (TinyLlama, LLaMA-2: last hidden state; set model.ella.input_dim to its width)
  data         a local image + caption folder (t2ijax.data.pipeline "image_text_folder")
  llm_type     tiny variant only: "t5" or "llama" random frozen LLM

Launch (see launch/README.md):
  # one host (GPU or TPU VM)
  launch/local.sh prepare --config=configs/ella_sd15.py:sd15=/data/sd15,llm=/data/flan-t5-xl,data=/data/pairs \\
      --workdir=/shared/runs/ella --config.model.feature_cache=/shared/cache/t5xl_train.array_record
  # TPU pod slice
  TPU_NAME=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh train \\
      --config=configs/ella_sd15.py:sd15=/data/sd15,llm=/data/flan-t5-xl,data=/data/pairs \\
      --workdir=gs://my-bucket/runs/ella_sd15 --config.mesh.fsdp=8
  # SLURM, 4 GPU nodes
  sbatch --nodes=4 launch/slurm.sbatch train --config=configs/ella_sd15.py:sd15=/data/sd15,llm=/data/flan-t5-xl,data=/data/pairs \\
      --workdir=/shared/runs/ella_sd15 --config.mesh.fsdp=8
  # sampling and DPG-Bench prompts
  t2ijax sample --workdir=/shared/runs/ella_sd15 --prompts_file=t2ijax/data/assets/dpg_bench_prompts.jsonl --out=dpg.png
  t2ijax eval --workdir=/shared/runs/ella_sd15 --benchmark=dpg --dpg_csv=dpg_bench.csv
Tiny smoke run:
  t2ijax train --config=configs/ella_sd15.py:tiny --workdir=runs/ella_tiny
  t2ijax sample --workdir=runs/ella_tiny --prompt="a red circle"
Feature cache: set ``--config.model.feature_cache=PATH``; ``t2ijax prepare`` builds it (the LLM runs once over
the train captions) and training then reads the features instead of running the LLM.
"""

import os

import ml_collections

from t2ijax.config_utils import import_sibling, parse_arg

common = import_sibling(__file__, "common")


def _tiny_model(llm_type: str) -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.unet_path = ""
    m.unet = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[16, 32], layers_per_block=1,
                  down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                  up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], attention_head_dim=2,
                  cross_attention_dim=32, norm_num_groups=8)
    m.vae_path = ""
    m.vae = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 16], layers_per_block=1,
                 norm_num_groups=8, down_block_types=["DownEncoderBlock2D"] * 2,
                 up_block_types=["UpDecoderBlock2D"] * 2, sample_size=16, scaling_factor=0.18215)
    m.text_encoder_path = ""
    m.text_encoder_type = llm_type
    if llm_type == "t5":  # vocab_size 0 = the tokenizer's size
        m.text = dict(vocab_size=0, d_model=48, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                      feed_forward_proj="gated-gelu")
    else:
        m.text = dict(vocab_size=0, hidden_size=48, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    m.ella = dict(time_channel=16, time_embed_dim=32, width=32, layers=1, heads=2, num_latents=8, input_dim=48)
    m.text_dtype = "float32"
    return m


def get_config(arg=None):
    arg = parse_arg(arg, variant="base", sd15="", llm="", data="", llm_type="t5")
    if arg.variant not in ("tiny", "base"):
        raise ValueError(f"ella_sd15 variant {arg.variant!r}; choose 'tiny' or 'base'")
    tiny = arg.variant == "tiny"
    c = common.runtime_defaults(
        method="ella",
        total_steps=4 if tiny else 1_000_000,
        batch_size=4 if tiny else 256,
        compute_dtype="float32" if tiny else "bfloat16",
        ema_decay=0.0,  # the IP-Adapter script ELLA points to keeps no EMA
        log_every=2 if tiny else 100,
        checkpoint_every=4 if tiny else 5000,
        keep_period=0 if tiny else 50_000,
    )
    # The paper: AdamW, constant lr 1e-4, weight decay 0.01, no gradient clipping.
    c.optim = common.optim_defaults(lr=1e-4, weight_decay=0.01, schedule="constant", grad_clip_norm=0.0)

    from t2ijax.data.config import default_data_config
    if tiny:
        c.data = default_data_config(resolution=16, caption="short", max_length=20, tokenizer="shapes_word",
                                     num_train=16, num_val=4, num_test=4, with_regions=False, read_threads=0,
                                     prefetch_buffer_size=8)
        c.model = _tiny_model(arg.llm_type)
    else:
        c.data = default_data_config(name="image_text_folder", folder=arg.data, resolution=512, caption="dense",
                                     max_length=128, tokenizer=arg.llm, random_flip=False, with_regions=False,
                                     worker_count=8)
        c.model = ml_collections.ConfigDict()
        c.model.unet_path = os.path.join(arg.sd15, "unet") if arg.sd15 else ""
        c.model.vae_path = os.path.join(arg.sd15, "vae") if arg.sd15 else ""
        c.model.text_encoder_path = arg.llm
        c.model.text_encoder_type = "t5"   # only used without text_encoder_path
        c.model.ella = {}                  # the released ELLA-SD1.5 TSC: 66,820,608 params, input_dim 2048
        c.model.text_dtype = "float16"     # the released TSC was trained on fp16 T5 features
    c.model.text_mode = "fixed"            # 128 positions, pads included, no mask (as released)
    c.model.caption_dropout = 0.1
    c.model.feature_cache = ""             # path of a feature cache of the train captions ("" = on the fly)
    c.model.feature_cache_dtype = "float16"
    c.model.prediction_type = "epsilon"
    c.model.schedule = dict(common.SD15_SCHEDULE)
    c.model.frozen_seed = 0
    c.sample = ml_collections.ConfigDict(dict(num_steps=2 if tiny else 50, guidance_scale=3.0 if tiny else 12.0))
    return c
