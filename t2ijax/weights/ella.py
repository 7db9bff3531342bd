"""ELLA's released TSC checkpoint (`ella-sd1.5-tsc-t5xl.safetensors`) <-> `t2ijax.models.ella.ELLA`.

The released file is a single safetensors file holding the PyTorch state dict
of `ELLA()` (official key names, Linear weights (out, in)). Everything maps
through `torch_layout` except `nn.MultiheadAttention`'s packed
`attn.in_proj_weight` (3d, d) / `attn.in_proj_bias` (3d,), whose rows
[q; k; v] are split into `attn.{q,k,v}_proj` on load and packed again on
export, so ELLA's own code and ComfyUI-ELLA load the exported file with
`strict=True`.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from t2ijax.models.ella import ELLA
from t2ijax.models.layers import abstract_init
from t2ijax.weights.torch_layout import (StateDict, WeightLoadError, pack_in_proj, params_to_state_dict,
                                         read_safetensors, resolve_safetensors, split_in_proj, state_dict_to_params,
                                         torch_key_map)

RELEASED_FILENAME = "ella-sd1.5-tsc-t5xl.safetensors"
_BLOCK = re.compile(r"^connector\.perceiver_blocks\.(\d+)\.")


def _shape(sd: StateDict, key: str):
    return tuple(sd[key].shape) if key in sd else None


def infer_config(sd: StateDict) -> dict[str, Any]:
    """ELLA constructor arguments read off a (packed, released-layout) state dict.

    Infers width, num_latents, input_dim, layers, time_channel, time_embed_dim,
    norm_type, time_aware_query and connector_type; `heads` cannot be inferred
    (default 8, pass `heads=` to override).
    """
    cfg: dict[str, Any] = {}
    if "connector.linear_1.weight" in sd and "connector.latents" not in sd:
        w, c = sd["connector.linear_1.weight"].shape
        return {"connector_type": "mlp", "width": int(w), "input_dim": int(c)}
    if "connector.latents" not in sd:
        raise WeightLoadError("not an ELLA TSC checkpoint: no 'connector.latents' (and no MLP connector keys); "
                              f"first keys: {sorted(sd)[:5]}")
    latents = sd["connector.latents"]
    if latents.ndim != 2:
        raise WeightLoadError(f"connector.latents has shape {tuple(latents.shape)}, expected (num_latents, width)")
    cfg["num_latents"], cfg["width"] = int(latents.shape[0]), int(latents.shape[1])
    proj_in = _shape(sd, "connector.proj_in.weight")
    cfg["input_dim"] = int(proj_in[1]) if proj_in and len(proj_in) == 2 else None
    blocks = {int(m.group(1)) for k in sd if (m := _BLOCK.match(k))}
    cfg["layers"] = max(blocks) + 1 if blocks else 0
    lin1 = _shape(sd, "time_embedding.linear_1.weight")
    if lin1 and len(lin1) == 2:
        cfg["time_embed_dim"], cfg["time_channel"] = int(lin1[0]), int(lin1[1])
    cfg["time_aware_query"] = "connector.time_aware_linear.weight" in sd
    if "connector.perceiver_blocks.0.gate_linear.weight" in sd:
        cfg["norm_type"] = "ada_norm_zero"
    elif "connector.perceiver_blocks.0.ln_1.weight" in sd:
        cfg["norm_type"] = "ln"
    else:
        cfg["norm_type"] = "ada_norm"
    return cfg


def _example_inputs(module: ELLA):
    c = module.width if module.input_dim is None else module.input_dim
    return jax.ShapeDtypeStruct((1, 2, c), jnp.float32), jax.ShapeDtypeStruct((1,), jnp.float32)


def ella_from_state_dict(sd: StateDict, *, param_dtype=jnp.float32, place: Callable | None = None,
                         what: str = "ELLA checkpoint", **config_overrides) -> tuple[ELLA, Any]:
    """(module, params) from a released-layout state dict (numpy arrays, packed in_proj)."""
    cfg = infer_config(sd)
    cfg.update(config_overrides)
    try:
        module = ELLA(**cfg)
    except TypeError as e:
        raise TypeError(f"unknown ELLA config override: {e}") from None
    module.check_config()
    abstract, _ = abstract_init(module, *_example_inputs(module))
    params = state_dict_to_params(split_in_proj(sd), abstract, dtype=param_dtype, place=place, what=what)
    return module, params


def _resolve_file(path) -> str:
    return resolve_safetensors(path, "ELLA", preferred=RELEASED_FILENAME)


def load_ella(path, *, param_dtype=jnp.float32, place: Callable | None = None,
              **config_overrides) -> tuple[ELLA, Any]:
    """Load ELLA's released TSC safetensors (or a folder holding it) -> (ELLA module, params).

    Dimensions (width, num_latents, input_dim, layers, time dims) and the
    ablation variant are inferred from the tensor shapes; `config_overrides` set
    the rest (`heads`, default 8) or the compute `dtype`. Loading is strict:
    missing, unexpected and mis-shaped keys raise `WeightLoadError` naming the
    key and both shapes. Params are cast to `param_dtype` (float32 by default;
    an fp16 file round-trips exactly through `save_ella(..., dtype="float16")`).
    place: optional (flax path, numpy array) -> array, e.g. `sharded_placer`.
    """
    file = _resolve_file(path)
    return ella_from_state_dict(read_safetensors(file), param_dtype=param_dtype, place=place, what=file,
                                **config_overrides)


def ella_state_dict(params, *, dtype=None) -> StateDict:
    """Params -> the released state-dict layout (numpy, packed in_proj), optionally cast to `dtype`."""
    return pack_in_proj(params_to_state_dict(params, dtype=dtype))


def save_ella(module: ELLA, params, path, *, dtype=None) -> str:
    """Export to ELLA's single-file layout, loadable by ELLA's `load_model(ELLA(), path, strict=True)`.

    path: a .safetensors file, or a folder (written as `ella-sd1.5-tsc-t5xl.safetensors`).
    dtype: e.g. "float16" for the released precision; None keeps the params' dtype.
    Returns the written file path.
    """
    module.check_config()
    abstract, _ = abstract_init(module, *_example_inputs(module))
    expected = set(pack_in_proj({k: np.zeros(0) for k in torch_key_map(abstract)}))
    sd = ella_state_dict(params, dtype=dtype)
    if set(sd) != expected:
        raise WeightLoadError(f"params do not match the module: missing {sorted(expected - set(sd))[:10]}, "
                              f"unexpected {sorted(set(sd) - expected)[:10]}")
    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        os.makedirs(path, exist_ok=True)
        path = os.path.join(path, RELEASED_FILENAME)
    else:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_file({k: sd[k] for k in sorted(sd)}, path, metadata={"format": "pt"})
    return path
