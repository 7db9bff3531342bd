"""Hugging Face text encoders (and CLIP) from local folders: config.json + model.safetensors.

  load_text_encoder(path) -> (module, params)   T5 / mT5 / UMT5 encoder, CLIP text tower, Llama
  load_clip(path) -> (module, params)           full CLIPModel (text + vision towers, projections)
  save_text_encoder(module, params, path)       back to the Hugging Face layout (bit-exact round trip)
  load_tokenizer(path, max_length=None)         the one tokenizer loader (t2ijax.data.tokenizer), re-exported

Only local folders are read (nothing is downloaded) and only safetensors (never pickles).
The model is chosen from config.json's ``model_type``:

  t5, mt5, umt5      -> T5EncoderModel   (decoder.*, lm_head and the tied
                                          encoder.embed_tokens of full checkpoints are ignored)
  clip_text_model    -> CLIPTextModel    (with text_projection for CLIPTextModelWithProjection)
  clip               -> CLIPTextModel with projection: the text tower of a CLIPModel
  llama              -> LlamaModel       (the ``model.`` prefix of LlamaForCausalLM checkpoints is
                                          stripped; lm_head is ignored)
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from t2ijax.data.tokenizer import load_tokenizer  # noqa: F401  (re-exported: the one tokenizer loader)
from t2ijax.models.layers import abstract_init
from t2ijax.models.text.clip import CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig
from t2ijax.models.text.llama import LlamaConfig, LlamaModel
from t2ijax.models.text.t5 import T5_MODEL_TYPES, T5Config, T5EncoderModel
from t2ijax.weights.local import require_local_folder
from t2ijax.weights.torch_layout import (params_to_state_dict, read_config, read_weights, sharded_placer,
                                         state_dict_to_params, write_config, write_weights)

SUPPORTED_MODEL_TYPES = (*T5_MODEL_TYPES, "clip_text_model", "clip", "llama")


def _text_module(cfg: dict, state_keys, dtype):
    """(module, state-dict keys or prefixes to ignore) for a text-encoder config."""
    model_type = cfg.get("model_type")
    if model_type in T5_MODEL_TYPES:
        return (T5EncoderModel(T5Config.from_hf(cfg), dtype=dtype),
                ("decoder.", "lm_head.", "encoder.embed_tokens.weight"))
    if model_type == "clip_text_model":
        with_projection = any(k.startswith("text_projection.") for k in state_keys)
        return (CLIPTextModel(CLIPTextConfig.from_hf(cfg), with_projection=with_projection, dtype=dtype),
                ("text_model.embeddings.position_ids",))
    if model_type == "clip":
        text_cfg = dict(cfg.get("text_config") or {}, projection_dim=cfg.get("projection_dim", 512))
        return (CLIPTextModel(CLIPTextConfig.from_hf(text_cfg), with_projection=True, dtype=dtype),
                ("vision_model.", "visual_projection.", "logit_scale", "text_model.embeddings.position_ids"))
    if model_type == "llama":
        return LlamaModel(LlamaConfig.from_hf(cfg), dtype=dtype), ("lm_head.",)
    raise ValueError(f"config.json has model_type {model_type!r}; load_text_encoder supports "
                     f"{SUPPORTED_MODEL_TYPES}")


def _normalise_keys(sd: dict, model_type: str) -> dict:
    """Map the layout variants of one architecture onto the module's names."""
    if model_type in T5_MODEL_TYPES and "shared.weight" not in sd and "encoder.embed_tokens.weight" in sd:
        sd = dict(sd, **{"shared.weight": sd["encoder.embed_tokens.weight"]})
    if model_type == "clip_text_model" and not any(k.startswith("text_model.") for k in sd):
        # transformers >= 5 saves CLIPTextModel without the `text_model.` prefix
        sd = {k if k.startswith("text_projection.") else f"text_model.{k}": v for k, v in sd.items()}
    if model_type == "llama":
        sd = {k.removeprefix("model."): v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}
    return sd


def _example_ids():
    return jax.ShapeDtypeStruct((1, 1), jnp.int32)


def _load(path, module, sd, ignore, example_args, param_dtype, shardings):
    abstract, _ = abstract_init(module, *example_args)
    place = sharded_placer(shardings) if shardings is not None else None
    params = state_dict_to_params(sd, abstract, dtype=param_dtype, ignore=ignore, place=place,
                                  what=f"checkpoint {path}")
    return module, params


def load_text_encoder(path, *, dtype=None, param_dtype=jnp.float32, shardings=None):
    """Load a Hugging Face text encoder folder as (module, params).

    dtype: compute dtype (None: float32). Use jnp.float16 for ELLA's Flan-T5 features; T5 then
      keeps `wo` in float32 as Hugging Face does (`module.clone(keep_wo_float32=False)` opts out).
    param_dtype: dtype the weights are stored in on device.
    shardings: optional pytree of `jax.sharding.Sharding` shaped like params; each array is
      placed straight onto its sharding, so a large encoder never sits whole on one device.
      (`abstract_init(module, ids)` gives the logical PartitionSpecs to derive it from.)
    `module.apply({"params": params}, input_ids, attention_mask)` returns the last hidden state
    (B, L, D); `method="encode"` returns (last hidden state, pooled features or None).
    """
    path = require_local_folder(path)
    cfg = read_config(path)
    sd = read_weights(path, "model")
    sd = _normalise_keys(sd, cfg.get("model_type"))
    module, ignore = _text_module(cfg, sd.keys(), dtype or jnp.float32)
    return _load(path, module, sd, ignore, (_example_ids(),), param_dtype, shardings)


def load_clip(path, *, dtype=None, param_dtype=jnp.float32, shardings=None):
    """Load a full Hugging Face `CLIPModel` folder (both towers) as (module, params).

    `module.apply(v, ids, mask, method="get_text_features")` and
    `module.apply(v, pixels_nhwc, method="get_image_features")` give the projected features.
    """
    path = require_local_folder(path)
    cfg = read_config(path)
    if cfg.get("model_type") != "clip":
        raise ValueError(f"load_clip expects a CLIPModel folder (model_type 'clip'), {path} has "
                         f"model_type {cfg.get('model_type')!r}; use load_text_encoder for a text tower")
    vision = CLIPVisionConfig.from_hf(cfg.get("vision_config") or {})
    module = CLIPModel(CLIPTextConfig.from_hf(cfg.get("text_config") or {}), vision,
                       projection_dim=cfg.get("projection_dim", 512),
                       logit_scale_init_value=cfg.get("logit_scale_init_value", 2.6592), dtype=dtype or jnp.float32)
    sd = read_weights(path, "model")
    pixels = jax.ShapeDtypeStruct((1, vision.image_size, vision.image_size, vision.num_channels), jnp.float32)
    ignore = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
    return _load(path, module, sd, ignore, (_example_ids(), None, pixels), param_dtype, shardings)


def hf_config(module) -> dict[str, Any]:
    """The Hugging Face config.json of a module built by this file's loaders."""
    if isinstance(module, T5EncoderModel):
        return module.config.to_hf()
    if isinstance(module, LlamaModel):
        return module.config.to_hf()
    if isinstance(module, CLIPTextModel):
        arch = "CLIPTextModelWithProjection" if module.with_projection else "CLIPTextModel"
        return dict(module.config.to_hf(), architectures=[arch])
    if isinstance(module, CLIPModel):
        return {"model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": module.projection_dim,
                "logit_scale_init_value": module.logit_scale_init_value,
                "text_config": dict(module.text_config.to_hf(), projection_dim=module.projection_dim),
                "vision_config": dict(module.vision_config.to_hf(), projection_dim=module.projection_dim)}
    raise TypeError(f"save_text_encoder does not know how to export {type(module).__name__}")


def save_text_encoder(module, params, path, *, max_shard_bytes: int | None = None) -> None:
    """Write config.json + model.safetensors (sharded above `max_shard_bytes`) in the HF layout.

    Weights keep their dtype, so `load_text_encoder` / `load_clip` of the folder gives back
    bit-identical params. CLIP text towers are written with the ``text_model.`` prefix
    (the layout of the released checkpoints); Llama as `LlamaModel` (no ``model.`` prefix).
    """
    cfg = hf_config(module)
    leaves = jax.tree_util.tree_leaves(params)
    dtype_name = np.dtype(leaves[0].dtype).name if leaves else "float32"
    cfg.update(dtype=dtype_name, torch_dtype=dtype_name)
    write_weights(params_to_state_dict(params), path, "model", max_shard_bytes=max_shard_bytes)
    write_config(cfg, path)


