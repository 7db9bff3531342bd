"""SUR-adapter checkpoints (the released `Adapter` state dict, as safetensors) <-> `SURAdapter`.

The release saves `adapter.state_dict()` with `torch.save` (`adapter_checkpoint{step}.pt`, `adapter.pt`).
t2ijax never unpickles: convert once in PyTorch with

    safetensors.torch.save_file(torch.load(p, weights_only=True), out)

Keys (PyTorch layout, methods.md 3.3): `transformer_encoder.layers.{i}.` and the template `encoder_layer.`
(`self_attn.in_proj_weight` (3w, w), `self_attn.in_proj_bias`, `self_attn.out_proj.{weight,bias}`,
`linear1.*`, `linear2.*`, `norm1.*`, `norm2.*`), `attention.{query,key,value}_layer.*`,
`attention.output_layer.{0,2}.*`, `fc.*`. Everything maps through `torch_layout`; the packed
`self_attn.in_proj_*` rows [q; k; v] are split into `self_attn.{q,k,v}_proj` on load and packed on export.

Dead parameters (Q5): with `SURAdapter(dead_params=True)` (default) `encoder_layer.*` and
`attention.value_layer.*` are loaded strictly, kept as unused params and written back. With
dead_params=False the loader accepts and drops them, and the exporter writes zeros in their place
(they never affect the output), so the released module still loads the export with strict=True.

Beside the weights, `save_sur_adapter` writes `<stem>.sur_config.json` with eta and every module field
(Q8: eta must travel with the checkpoint; the release parsed it from the directory name), and optionally
the fixed LLM projection (Q4) as `<stem>.llm_resize.safetensors` (LLMResize's `fc.weight`, `fc.bias`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from t2ijax.models.layers import abstract_init
from t2ijax.models.sur_adapter import SURAdapter
from t2ijax.weights.torch_layout import (StateDict, WeightLoadError, params_to_state_dict, read_safetensors,
                                         resolve_safetensors, state_dict_to_params, torch_key_map)
from t2ijax.weights.torch_layout import pack_in_proj as _pack
from t2ijax.weights.torch_layout import split_in_proj as _split


def split_in_proj(sd: StateDict) -> StateDict:
    return _split(sd, "self_attn")


def pack_in_proj(sd: StateDict) -> StateDict:
    return _pack(sd, "self_attn")

CONFIG_SUFFIX = ".sur_config.json"
LLM_PROJECTION_SUFFIX = ".llm_resize.safetensors"
# behaviour switches set by reproduce_release=True (the released code's quirks Q1, Q2)
RELEASE_SWITCHES = {"attend_across_batch": True, "dropout_at_inference": True}
# module fields stored in the sidecar config (dtype is a runtime choice, not stored)
CONFIG_FIELDS = ("width", "depth", "heads", "ff_dim", "dropout_rate", "layer_norm_eps", "eta",
                 "attend_across_batch", "dropout_at_inference", "dead_params")
DEAD_KEY_PREFIXES = ("encoder_layer.", "attention.value_layer.")

_LAYER = re.compile(r"^transformer_encoder\.layers\.(\d+)\.")


def infer_config(sd: StateDict) -> dict[str, Any]:
    """SURAdapter fields read off a released-layout state dict: width, depth, ff_dim, dead_params.
    `heads` cannot be inferred (8 in the release; stored in the sidecar config of our exports)."""
    if "fc.weight" not in sd or sd["fc.weight"].ndim != 2:
        raise WeightLoadError("not a SUR-adapter checkpoint: no 2-D 'fc.weight'; first keys: "
                              f"{sorted(sd)[:5]}")
    cfg: dict[str, Any] = {"width": int(sd["fc.weight"].shape[1])}
    layer_ids = {int(m.group(1)) for k in sd if (m := _LAYER.match(k))}
    cfg["depth"] = max(layer_ids) + 1 if layer_ids else 0
    for key in ("transformer_encoder.layers.0.linear1.weight", "encoder_layer.linear1.weight"):
        if key in sd and sd[key].ndim == 2:
            cfg["ff_dim"] = int(sd[key].shape[0])
            break
    cfg["dead_params"] = any(k.startswith(DEAD_KEY_PREFIXES) for k in sd)
    return cfg


def _example_input(module: SURAdapter):
    return jax.ShapeDtypeStruct((1, 2, module.width), jnp.float32)


def expected_keys(module: SURAdapter) -> set[str]:
    """The released-layout keys of `module`'s params (with dead_params=False: without the dead keys)."""
    abstract, _ = abstract_init(module, _example_input(module))
    return set(pack_in_proj({k: np.zeros(0) for k in torch_key_map(abstract)}))


def sur_adapter_from_state_dict(sd: StateDict, *, reproduce_release: bool = False, param_dtype=jnp.float32,
                                place: Callable | None = None, what: str = "SUR-adapter checkpoint",
                                base_config: dict | None = None, **config_overrides) -> tuple[SURAdapter, Any]:
    """(module, params) from a released-layout state dict. Config precedence (low to high): SURAdapter
    defaults, fields inferred from the weights, `base_config` (a sidecar), `reproduce_release`, overrides."""
    cfg = infer_config(sd)
    cfg.update(base_config or {})  # a sidecar's dead_params=False wins over the zero placeholders in the file
    if reproduce_release:
        cfg.update(RELEASE_SWITCHES)
    cfg.update(config_overrides)
    try:
        module = SURAdapter(**cfg)
    except TypeError as e:
        raise TypeError(f"unknown SURAdapter config override: {e}") from None
    module.check_config()
    abstract, _ = abstract_init(module, _example_input(module))
    ignore = () if module.dead_params else DEAD_KEY_PREFIXES
    params = state_dict_to_params(split_in_proj(sd), abstract, dtype=param_dtype, place=place, what=what,
                                  ignore=ignore)
    return module, params


def _stem(file: str) -> str:
    return file[:-len(".safetensors")] if file.endswith(".safetensors") else file


def _resolve_file(path) -> str:
    return resolve_safetensors(path, "SUR-adapter", skip_suffix=LLM_PROJECTION_SUFFIX)


def load_sur_adapter(path, *, reproduce_release: bool = False, param_dtype=jnp.float32,
                     place: Callable | None = None, **config_overrides) -> tuple[SURAdapter, Any]:
    """Load a SUR-adapter state dict saved as safetensors (or a folder holding one) -> (SURAdapter, params).

    `module.apply({"params": params}, clip_states)` then gives the adapted states (B, L, width).
    width, depth, ff_dim and whether the dead parameters are present are inferred from the tensors; a
    `<stem>.sur_config.json` sidecar written by `save_sur_adapter` supplies eta, heads and the switches.
    Without a sidecar (a converted release file) eta is 0.1, the value of run.sh: pass `eta=` for a
    checkpoint trained otherwise (the demo parsed it from the directory name).
    reproduce_release=True sets the quirk switches to the released behaviour (attend_across_batch,
    dropout_at_inference); `config_overrides` (any SURAdapter field, e.g. heads, eta, dtype) win over all.
    Loading is strict: missing, unexpected or mis-shaped keys raise `WeightLoadError` naming them (with
    dead_params=False the dead keys are accepted and dropped). .pt/.pth/.bin/.ckpt paths are refused
    with the conversion command; nothing is unpickled.
    place: optional (flax path, numpy array) -> array, e.g. `sharded_placer`.
    """
    file = _resolve_file(path)
    sidecar = _stem(file) + CONFIG_SUFFIX
    base = None
    if os.path.exists(sidecar):
        with open(sidecar) as f:
            base = {k: v for k, v in json.load(f).items() if k in CONFIG_FIELDS}
    return sur_adapter_from_state_dict(read_safetensors(file), reproduce_release=reproduce_release,
                                       param_dtype=param_dtype, place=place, what=file, base_config=base,
                                       **config_overrides)


def sur_adapter_state_dict(module: SURAdapter, params, *, dtype=None) -> StateDict:
    """Params -> the released state-dict layout (numpy, packed in_proj), dead keys included (zeros when the
    module has dead_params=False), optionally cast to `dtype`. Checked against the module's key set."""
    module.check_config()
    sd = pack_in_proj(params_to_state_dict(params, dtype=dtype))
    expected = expected_keys(module)
    if set(sd) != expected:
        raise WeightLoadError(f"params do not match the module: missing {sorted(expected - set(sd))[:10]}, "
                              f"unexpected {sorted(set(sd) - expected)[:10]}")
    if not module.dead_params:  # zero placeholders, so the released module loads the export strictly
        full = dataclasses.replace(module, dead_params=True)
        abstract, _ = abstract_init(full, _example_input(full))
        zeros = jax.tree.map(lambda s: np.zeros(s.shape, sd["fc.weight"].dtype), abstract)
        sd.update({k: v for k, v in pack_in_proj(params_to_state_dict(zeros)).items() if k not in sd})
    return sd


def save_sur_adapter(module: SURAdapter, params, path, *, dtype=None, llm_projection=None) -> str:
    """Export to the released `Adapter` state-dict layout as safetensors, loadable by
    `Adapter(depth, sd_text_size=width).load_state_dict(..., strict=True)` (heads 8, FF 2048 in the release).

    Also writes `<stem>.sur_config.json` (eta, heads and every switch; read back by `load_sur_adapter`)
    and, when `llm_projection` (a `llm_projection(...)` pytree) is given, `<stem>.llm_resize.safetensors`
    in LLMResize's layout (`fc.weight` (width, llm_size), `fc.bias`).
    path: a .safetensors file, or a folder (written as `adapter.safetensors`).
    dtype: e.g. "float16"; None keeps the params' dtype. Returns the written weights path.
    """
    sd = sur_adapter_state_dict(module, params, dtype=dtype)
    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        os.makedirs(path, exist_ok=True)
        path = os.path.join(path, "adapter.safetensors")
    else:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_file({k: sd[k] for k in sorted(sd)}, path, metadata={"format": "pt"})
    config = {k: getattr(module, k) for k in CONFIG_FIELDS}
    config["format"] = "t2ijax.sur_adapter"
    with open(_stem(path) + CONFIG_SUFFIX, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    if llm_projection is not None:
        kernel = np.asarray(jax.device_get(llm_projection["kernel"]))
        bias = np.asarray(jax.device_get(llm_projection["bias"]))
        if dtype is not None:
            kernel, bias = kernel.astype(dtype), bias.astype(dtype)
        save_file({"fc.weight": np.ascontiguousarray(kernel.T), "fc.bias": bias}, _stem(path) + LLM_PROJECTION_SUFFIX,
                  metadata={"format": "pt"})
    return path


def load_llm_projection(path, *, dtype=jnp.float32) -> dict:
    """The LLM projection saved with an adapter: pass the adapter's .safetensors path (or the
    `<stem>.llm_resize.safetensors` file) -> {"kernel": (llm_size, width), "bias": (width,)}."""
    path = os.fspath(path)
    file = path if path.endswith(LLM_PROJECTION_SUFFIX) else _stem(path) + LLM_PROJECTION_SUFFIX
    if not os.path.exists(file):
        raise FileNotFoundError(f"no LLM projection at {file!r}; the release never saved LLMResize (Q4), so only "
                                "t2ijax exports made with save_sur_adapter(..., llm_projection=...) have one")
    sd = read_safetensors(file)
    if set(sd) != {"fc.weight", "fc.bias"}:
        raise WeightLoadError(f"{file} must hold exactly fc.weight and fc.bias, got {sorted(sd)}")
    return {"kernel": jnp.asarray(sd["fc.weight"].T, dtype), "bias": jnp.asarray(sd["fc.bias"], dtype)}
