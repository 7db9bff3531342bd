"""ELLA's setting on Shapes 32x32: a frozen U-Net trained with a CLIP-style encoder on short captions, then TSC + T5.

The paper's premise: SD's U-Net was trained with CLIP on short alt-texts (and CLIP truncates at 77
tokens); ELLA keeps that U-Net frozen and trains the TSC on dense captions, feeding the U-Net an
LLM's reading of the whole dense prompt. Here the stage-1 U-Net and its text encoder are trained
on `stage1_caption` captions (default "short": "a red circle and a blue square", every object's
colour and shape, no sizes, relations or counts) with a `clip_tokens`-token context (default 20),
and the stage-2 T5 + TSC read the 80-token dense captions that the benchmark prompts with.
`stage1_caption=dense` is the other reading of the premise (same dense captions, truncated to
`clip_tokens`, so only the count and about two objects get through); both are measured in
experiments/ella_shapes/README.md.

Variants (the string after ``:``, or ``variant=...,unet_path=...,clip_tokens=...``):
  unet   stage 1 (method txt2img): the CPU demo's U-Net recipe (configs/demo_shapes.py: 1M params,
         x0 prediction, cosine schedule) and a CLIP-style text encoder trained jointly on
         `stage1_caption` captions truncated to `clip_tokens`. Its U-Net becomes the frozen U-Net of stage 2
         (exported with ``t2ijax convert``).
  tsc    stage 2 (method ella): the Timestep-Aware Semantic Connector (AdaLN, time-aware
         queries) trained against the frozen stage-1 U-Net, fed by a frozen tiny T5 encoder over
         the full 80-token caption. The T5 is RANDOMLY initialised and frozen (no pretrained T5
         can be made offline; its features still identify every token and its context, which is
         all the TSC needs on the closed Shapes vocabulary).
  ln     stage 2 ablation (paper Tab. 6): the plain-LayerNorm resampler, no timestep path
         (norm_type="ln", time_aware_query=False), same budget as `tsc`.
  mlp    stage 2 ablation (paper Tab. 6's "MLP" row): a per-token two-layer MLP connector
         (connector_type="mlp": Linear(LLM width, 64) -> GELU -> Linear(64, 64), no timestep path, the
         U-Net attends to the caption's tokens instead of 32 latents), same budget as `tsc`.
  tiny   the smoke run of stage 2: `tsc` at toy widths against a random frozen one-level U-Net (no stage 1
         needed), the demo's tiny data, 4 steps.

`llm=<folder>` (stage 2 only): the frozen LLM is a trained Hugging Face folder read by `load_text_encoder`
(T5 / Llama, e.g. the Shapes LMs of configs/lm_shapes.py, which were trained on the `shapes_word` tokenizer
used here) instead of the random tiny T5; `model.ella.input_dim` is its width (config.json's `d_model` for T5,
`hidden_size` for Llama). Empty (the default) = the random tiny T5.

Deviation from the paper, forced by the frozen U-Net: the stage-2 loss is the MSE on the
U-Net's own prediction type (x0 here; the paper's SD 1.5 predicts epsilon), under its schedule.

Launch (all commands and measured numbers: experiments/ella_shapes/):
  t2ijax train --config=configs/ella_shapes.py:tiny --workdir=runs/ella_shapes_tiny   # smoke run, ~1 minute
  t2ijax train --config=configs/ella_shapes.py:unet --workdir=runs/ella_shapes/unet
  t2ijax convert --workdir=runs/ella_shapes/unet --out=runs/ella_shapes/unet/export
  t2ijax train --config=configs/ella_shapes.py:tsc --workdir=runs/ella_shapes/tsc
  t2ijax train --config=configs/ella_shapes.py:variant=mlp,llm=runs/shapes_lms/llama/export/llama \
      --workdir=runs/ella_llms/llama/mlp     # trained LLMs: experiments/ella_llms/run.sh
"""

import json
import os

import ml_collections

from t2ijax.config_utils import import_sibling, parse_arg

common = import_sibling(__file__, "common")
demo = import_sibling(__file__, "demo_shapes")

DEFAULT_UNET_PATH = "runs/ella_shapes/unet/export/unet"
CLIP_TOKENS = 20     # stage-1 text context (BOS + 18 words + EOS): the CLIP-77 truncation analogue; the
                     # longest short caption has 17 tokens
T5_TOKENS = 80       # the longest dense Shapes caption is 76 tokens


def _data(max_length: int, caption: str = "dense"):
    # The demo's Shapes split sizes, so the demo and this experiment share one built dataset.
    c = demo.data_config(tiny=False, max_length=max_length)
    c.caption = caption
    return c


def _stage1(clip_tokens: int, caption: str):
    if caption not in ("short", "dense"):
        raise ValueError(f"ella_shapes stage1_caption {caption!r}; choose 'short' or 'dense'")
    c = demo.get_config("cpu")  # 1,500 steps at batch 16, as the demo
    c.data = _data(clip_tokens, caption)
    c.sample.guidance_scale = 1.0
    del c["demo"]
    return c


def llm_width(llm: str) -> tuple[int, str]:
    """(hidden width, "t5" | "llama") of the Hugging Face LLM folder `llm` (T5: d_model; Llama: hidden_size)."""
    path = os.path.join(os.path.expanduser(llm), "config.json")
    if not os.path.exists(path):
        raise ValueError(f"ella_shapes llm={llm!r}: no config.json there (a Hugging Face T5 / Llama folder)")
    with open(path) as f:
        cfg = json.load(f)
    kind = "llama" if cfg.get("model_type") == "llama" else "t5"
    width = cfg.get("d_model" if kind == "t5" else "hidden_size")
    if not width:
        raise ValueError(f"{path} has no {'d_model' if kind == 't5' else 'hidden_size'}")
    return int(width), kind


def _stage2(variant: str, unet_path: str, llm: str = ""):
    stage1 = demo.get_config("cpu")
    c = common.runtime_defaults(method="ella", total_steps=1500, batch_size=16, compute_dtype="float32",
                                ema_decay=0.0, log_every=50, checkpoint_every=500, keep_last=2, tensorboard=False)
    # The paper's optimiser (AdamW, constant lr, wd 0.01), with a larger lr for this short run.
    c.optim = common.optim_defaults(lr=1e-3, weight_decay=0.01, schedule="constant", grad_clip_norm=1.0)
    c.data = _data(T5_TOKENS)
    width = stage1.model.unet.cross_attention_dim
    c.model = ml_collections.ConfigDict()
    tsc = dict(time_channel=64, time_embed_dim=width, width=width, layers=2, heads=4, num_latents=32, input_dim=64)
    if variant == "ln":
        tsc.update(norm_type="ln", time_aware_query=False)
    if variant == "mlp":
        tsc.update(connector_type="mlp")
    kind = "t5"
    if llm:
        width_llm, kind = llm_width(llm)
        tsc.update(input_dim=width_llm)
    c.model.ella = tsc
    c.model.unet_path = unet_path
    c.model.vae_path = ""
    c.model.text_encoder_path = llm
    c.model.text_encoder_type = kind
    if not llm:
        # The random tiny T5; vocab_size 0 = the tokenizer's size.
        c.model.text = dict(vocab_size=0, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                            feed_forward_proj="gated-gelu")
    c.model.text_dtype = "float32"
    c.model.text_mode = "fixed"
    c.model.caption_dropout = 0.1
    c.model.feature_cache = ""
    c.model.prediction_type = stage1.model.prediction_type
    c.model.schedule = stage1.model.schedule
    c.model.frozen_seed = 0
    c.sample = ml_collections.ConfigDict(dict(num_steps=stage1.sample.num_steps, guidance_scale=1.0))
    return c


def _tiny():
    c = _stage2("tsc", "", "")
    c.update(total_steps=4, batch_size=4, log_every=2, checkpoint_every=4)
    c.data = demo.data_config(tiny=True, max_length=T5_TOKENS)
    c.data.caption = "dense"
    c.model.unet = demo._unet(tiny=True)  # random and frozen: the smoke run needs no stage 1
    width = c.model.unet.cross_attention_dim
    c.model.ella.update(time_channel=16, time_embed_dim=width, width=width, layers=1, heads=2, num_latents=8,
                        input_dim=16)
    c.model.text.update(d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    c.sample.num_steps = 2
    return c


def get_config(arg=None):
    arg = parse_arg(arg, variant="tsc", unet_path=DEFAULT_UNET_PATH, clip_tokens=CLIP_TOKENS, stage1_caption="short",
                    llm="")
    if arg.variant == "unet":
        if arg.llm:
            raise ValueError("ella_shapes llm= applies to the stage-2 variants (tsc, ln, mlp), not to 'unet'")
        return _stage1(int(arg.clip_tokens), arg.stage1_caption)
    if arg.variant in ("tsc", "ln", "mlp"):
        return _stage2(arg.variant, arg.unet_path, arg.llm)
    if arg.variant == "tiny":
        return _tiny()
    raise ValueError(f"ella_shapes variant {arg.variant!r}; choose 'unet', 'tsc' or 'ln', or the 'mlp' connector, "
                     "or 'tiny'")
