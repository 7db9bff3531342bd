"""ECLIPSE prior folders (diffusers `PriorTransformer` layout) <-> t2ijax `PriorTransformer` and params.

The released priors (`ECLIPSE-Community/ECLIPSE_KandinskyV22_Prior`, `ECLIPSE-Community/ECLIPSE_Karlo_Prior`)
are diffusers model folders: `config.json` (`additional_embeddings: 3`, no time embedding) and
`diffusion_pytorch_model.safetensors`. The same functions read and write diffusers' own diffusion prior
(Karlo / Kandinsky `prior/` folders, `additional_embeddings: 4`, with `time_embedding.*` keys).
Loading is strict (missing, unexpected and mis-shaped tensors raise `WeightLoadError` naming them);
load -> save -> load is bit-exact.

    module, params = load_eclipse_prior("ECLIPSE_KandinskyV22_Prior")
    image_embeds = module.apply({"params": params}, noise, text_embeds, text_token_states, attention_mask)
"""

from __future__ import annotations

import os
from typing import Any

from t2ijax.models.layers import abstract_init
from t2ijax.models.prior import PriorTransformer
from t2ijax.weights.diffusers import WEIGHTS_STEM
from t2ijax.weights.torch_layout import (params_to_state_dict, read_config, read_weights, sharded_placer,
                                         state_dict_to_params, write_config, write_weights)


def prior_folder(path: str | os.PathLike) -> str:
    """`path`, or its `prior/` sub-folder when `path` is a pipeline or a `t2ijax convert` export."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no prior folder at {path!r}: t2ijax loads local folders only (download the "
                                "repository, e.g. `huggingface-cli download ECLIPSE-Community/ECLIPSE_Karlo_Prior "
                                "--local-dir DIR`, then pass DIR)")
    if not os.path.exists(os.path.join(path, "config.json")) and os.path.isdir(os.path.join(path, "prior")):
        return os.path.join(path, "prior")
    return path


def load_eclipse_prior(path: str | os.PathLike, *, dtype: Any = None, param_dtype: Any = None, shardings=None):
    """(PriorTransformer, params) from an ECLIPSE (or diffusers diffusion-prior) folder.

    dtype: compute dtype (default float32); param_dtype: cast the stored tensors (default: float32);
    shardings: optional pytree of shardings shaped like the params (each array placed straight onto it).
    """
    import jax.numpy as jnp

    path = prior_folder(path)
    module = PriorTransformer.from_config(read_config(path), dtype=dtype or jnp.float32)
    abstract, _ = abstract_init(module, *module.example_inputs(),
                                **({"timestep": jnp.zeros((1,))} if module.time_embedding else {}))
    place = sharded_placer(shardings) if shardings is not None else None
    params = state_dict_to_params(read_weights(path, WEIGHTS_STEM), abstract, dtype=param_dtype, place=place,
                                  what=f"prior checkpoint {path}")
    return module, params


def save_eclipse_prior(module: PriorTransformer, params, path: str | os.PathLike, *, dtype: Any = None) -> list[str]:
    """Write `config.json` + `diffusion_pytorch_model.safetensors` in the released layout (dtype: optional
    storage dtype, default the params' own). Returns the written weight files."""
    write_config(module.to_config(), path)
    return write_weights(params_to_state_dict(params, dtype=dtype), path, WEIGHTS_STEM)
