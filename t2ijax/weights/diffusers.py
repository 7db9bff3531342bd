"""diffusers UNet2DConditionModel / AutoencoderKL / VQModel (MoVQ) folders <-> t2ijax modules and params.

A folder holds `config.json` and `diffusion_pytorch_model[.<variant>].safetensors` (or shards
with an `.index.json`), as written by diffusers' `save_pretrained`. Nothing here imports torch
or diffusers. Loading is strict: missing, unexpected or mis-shaped tensors raise a
`WeightLoadError` naming each key and both shapes. Export writes the same layout, so
`diffusers.UNet2DConditionModel.from_pretrained(folder)` reads it, and load -> save -> load
is bit-exact.
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp

from t2ijax.models.layers import abstract_init
from t2ijax.models.movq import VQModel
from t2ijax.models.unet import UNet2DConditionModel
from t2ijax.models.vae import AutoencoderKL
from t2ijax.weights.torch_layout import (params_to_state_dict, read_config, read_weights, sharded_placer,
                                         state_dict_to_params, write_config, write_weights)

WEIGHTS_STEM = "diffusion_pytorch_model"


def _load(module, example_args, example_kwargs, path, shardings, variant, param_dtype, what):
    abstract, _ = abstract_init(module, *example_args, **example_kwargs)
    state_dict = read_weights(path, WEIGHTS_STEM, variant)
    place = sharded_placer(shardings) if shardings is not None else None
    params = state_dict_to_params(state_dict, abstract, dtype=param_dtype, place=place,
                                  what=f"{what} checkpoint {os.fspath(path)}")
    return module, params


def load_unet(path: str | os.PathLike, *, dtype: Any = None, shardings=None, variant: str | None = None,
              param_dtype: Any = None, remat: bool = False):
    """(UNet2DConditionModel, params) from a diffusers U-Net folder.

    dtype: compute dtype of the module (default float32). param_dtype: dtype the parameters are cast
    to (default float32, whatever the checkpoint stores). shardings: optional pytree of
    `jax.sharding.Sharding` shaped like the params; each array is placed straight onto it.
    variant: e.g. "fp16" for `diffusion_pytorch_model.fp16.safetensors`.
    """
    module = UNet2DConditionModel.from_config(read_config(path), dtype=dtype or jnp.float32, remat=remat)
    sample, timesteps, context, added = module.example_inputs()
    kwargs = {"added_cond_kwargs": added}
    class_labels = module.example_class_labels()
    if class_labels is not None:  # a class embedding (num_class_embeds / class_embed_type)
        kwargs["class_labels"] = class_labels
    return _load(module, (sample, timesteps, context), kwargs, path, shardings, variant, param_dtype, "U-Net")


def load_vae(path: str | os.PathLike, *, dtype: Any = None, shardings=None, variant: str | None = None,
             param_dtype: Any = None):
    """(AutoencoderKL, params) from a diffusers VAE folder; arguments as in `load_unet`."""
    module = AutoencoderKL.from_config(read_config(path), dtype=dtype or jnp.float32)
    size = 2 ** (len(module.block_out_channels) - 1)
    images = jnp.zeros((1, size, size, module.in_channels), jnp.float32)
    return _load(module, (images,), {}, path, shardings, variant, param_dtype, "VAE")


def load_movq(path: str | os.PathLike, *, dtype: Any = None, shardings=None, variant: str | None = None,
              param_dtype: Any = None):
    """(VQModel, params) from a diffusers VQModel folder (Kandinsky 2.2's `movq`); arguments as in `load_unet`."""
    module = VQModel.from_config(read_config(path), dtype=dtype or jnp.float32)
    size = 2 ** (len(module.block_out_channels) - 1)
    images = jnp.zeros((1, size, size, module.in_channels), jnp.float32)
    return _load(module, (images,), {}, path, shardings, variant, param_dtype, "VQModel")


def _save(module_or_config, params, path, dtype, max_shard_bytes):
    config = module_or_config.to_config() if hasattr(module_or_config, "to_config") else dict(module_or_config)
    write_config(config, path)
    return write_weights(params_to_state_dict(params, dtype=dtype), path, WEIGHTS_STEM, max_shard_bytes)


def save_unet(module_or_config, params, path: str | os.PathLike, *, dtype: Any = None,
              max_shard_bytes: int | None = None) -> list[str]:
    """Write `config.json` + `diffusion_pytorch_model.safetensors` (sharded above `max_shard_bytes`).

    module_or_config: a UNet2DConditionModel (its original config.json is written back) or a config dict.
    dtype: optional numpy dtype for the stored tensors (default: the params' own dtype).
    Returns the written weight files.
    """
    return _save(module_or_config, params, path, dtype, max_shard_bytes)


def save_vae(module_or_config, params, path: str | os.PathLike, *, dtype: Any = None,
             max_shard_bytes: int | None = None) -> list[str]:
    """Write an AutoencoderKL folder in the diffusers layout; arguments as in `save_unet`."""
    return _save(module_or_config, params, path, dtype, max_shard_bytes)


def save_movq(module_or_config, params, path: str | os.PathLike, *, dtype: Any = None,
              max_shard_bytes: int | None = None) -> list[str]:
    """Write a VQModel (MoVQ) folder in the diffusers layout; arguments as in `save_unet`."""
    return _save(module_or_config, params, path, dtype, max_shard_bytes)
