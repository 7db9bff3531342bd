"""Shared Flax Linen layers that carry logical axis names on every parameter.

Model code names logical axes only; configs map them to mesh axes (see
`t2ijax.sharding`). The vocabulary used across the library:

  embed     model width of a transformer / channels of a token stream
  mlp       feed-forward hidden width
  heads     fused (heads x head_dim) projection width of attention
  vocab     token vocabulary
  conv_in   input channels of a convolution kernel
  conv_out  output channels of a convolution kernel (also norms/biases over channels)
  norm      scale/bias of a normalisation over `embed`
  relpos    relative-position buckets (T5)
  latents   learned query latents (ELLA, prior)

Module names mirror the PyTorch state-dict paths of the upstream checkpoints
(e.g. ``name="to_out.0"``), so `t2ijax.weights.torch_layout` converts weights
without per-model tables. Parameter leaves are named ``kernel`` / ``bias`` /
``scale`` / ``embedding`` as in Flax; any other name is copied verbatim.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import math

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any
Axes = tuple[str | None, ...]

default_kernel_init = nn.initializers.lecun_normal()


def logical(init: Callable, axes: Axes) -> Callable:
    return nn.with_logical_partitioning(init, axes)


def param(module: nn.Module, name: str, init: Callable, shape: Sequence[int], axes: Axes,
          dtype: Dtype = jnp.float32):
    """A raw parameter (e.g. CLIP's class embedding, ELLA's latents) with logical axes."""
    return module.param(name, logical(init, axes), tuple(shape), dtype)


def Dense(features: int, axes: Axes = ("embed", "mlp"), *, use_bias: bool = True, dtype: Dtype = jnp.float32,
          kernel_init: Callable = default_kernel_init, bias_init: Callable = nn.initializers.zeros,
          name: str | None = None, precision=None) -> nn.Dense:
    """nn.Dense whose kernel is (in, out) named by `axes`; the bias takes the output axis."""
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=logical(kernel_init, axes), bias_init=logical(bias_init, (axes[1],)),
                    name=name, precision=precision)


def Conv(features: int, kernel_size: Sequence[int], *, strides: int | Sequence[int] = 1, padding: Any = "SAME",
         use_bias: bool = True, dtype: Dtype = jnp.float32, kernel_init: Callable = default_kernel_init,
         name: str | None = None) -> nn.Conv:
    """NHWC convolution with kernel (H, W, in, out) named (None, None, conv_in, conv_out)."""
    ks = tuple(kernel_size)
    if isinstance(strides, int):
        strides = (strides,) * len(ks)
    return nn.Conv(features, ks, strides=tuple(strides), padding=padding, use_bias=use_bias, dtype=dtype,
                   param_dtype=jnp.float32,
                   kernel_init=logical(kernel_init, (None,) * len(ks) + ("conv_in", "conv_out")),
                   bias_init=logical(nn.initializers.zeros, ("conv_out",)), name=name)


def Embed(num: int, features: int, axes: Axes = ("vocab", "embed"), *, dtype: Dtype = jnp.float32,
          init: Callable = nn.initializers.normal(0.02), name: str | None = None) -> nn.Embed:
    return nn.Embed(num, features, dtype=dtype, param_dtype=jnp.float32, embedding_init=logical(init, axes),
                    name=name)


def LayerNorm(*, epsilon: float = 1e-5, use_scale: bool = True, use_bias: bool = True, axis: str = "norm",
              dtype: Dtype = jnp.float32, name: str | None = None) -> nn.LayerNorm:
    """LayerNorm computed in float32 (as PyTorch autocast does) and cast to `dtype`."""
    return nn.LayerNorm(epsilon=epsilon, use_scale=use_scale, use_bias=use_bias, dtype=dtype,
                        param_dtype=jnp.float32, scale_init=logical(nn.initializers.ones, (axis,)),
                        bias_init=logical(nn.initializers.zeros, (axis,)), name=name)


def GroupNorm(num_groups: int, *, epsilon: float = 1e-5, dtype: Dtype = jnp.float32,
              name: str | None = None) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=num_groups, epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32,
                        scale_init=logical(nn.initializers.ones, ("conv_out",)),
                        bias_init=logical(nn.initializers.zeros, ("conv_out",)), name=name)


class RMSNorm(nn.Module):
    """T5 / Llama RMS norm: x * rsqrt(mean(x^2) + eps) * weight, statistics in float32."""
    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x):
        scale = param(self, "scale", nn.initializers.ones, (x.shape[-1],), (self.axis_name,))
        xf = x.astype(jnp.float32)
        y = xf * jnp.reciprocal(jnp.sqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.epsilon))
        return (y * scale).astype(self.dtype)


def gelu(x, approximate: bool = False):
    """GELU; exact (erf) unless `approximate`, matching the source model's choice."""
    return nn.gelu(x, approximate=approximate)


def quick_gelu(x):
    return x * nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable] = {
    "silu": nn.silu,
    "swish": nn.silu,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "quick_gelu": quick_gelu,
    "relu": nn.relu,
    "mish": lambda x: x * jnp.tanh(nn.softplus(x)),
}


def activation(name: str) -> Callable:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


def timestep_embedding(timesteps, dim: int, *, flip_sin_to_cos: bool = True, downscale_freq_shift: float = 0.0,
                       max_period: float = 10000.0, scale: float = 1.0):
    """Sinusoidal features of raw timesteps, as diffusers' `get_timestep_embedding`.

    freq_i = exp(-ln(max_period) * i / (dim/2 - downscale_freq_shift)); output
    [sin | cos] of t * freq, or [cos | sin] with `flip_sin_to_cos`; an odd `dim`
    gets a trailing zero column. timesteps: any shape, flattened -> (T, dim) float32.
    """
    t = jnp.reshape(jnp.asarray(timesteps), (-1,)).astype(jnp.float32)
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - downscale_freq_shift)
    args = scale * (t[:, None] * jnp.exp(exponent)[None, :])
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def abstract_init(module: nn.Module, *args, **kwargs):
    """(ShapeDtypeStruct params, logical PartitionSpec params) without allocating anything.

    `args` are example inputs (arrays or ShapeDtypeStructs) for `module.init`.
    """
    import jax

    # ShapeDtypeStructs must enter eval_shape as arguments (closed over, they would reach the module as is);
    # everything else (flags, concrete arrays) stays closed over, so static Python values stay static.
    leaves, treedef = jax.tree.flatten((args, kwargs))
    dynamic = [i for i, leaf in enumerate(leaves) if isinstance(leaf, jax.ShapeDtypeStruct)]

    def init(*dynamic_leaves):
        filled = list(leaves)
        for i, leaf in zip(dynamic, dynamic_leaves):
            filled[i] = leaf
        a, kw = jax.tree.unflatten(treedef, filled)
        return module.init(jax.random.key(0), *a, **kw)

    boxed = jax.eval_shape(init, *[leaves[i] for i in dynamic])["params"]
    # No sharding constraint on the unboxed ShapeDtypeStructs: under an active mesh `nn.meta.unbox` would apply one.
    unboxed = nn.meta.map_axis_meta(
        lambda b: b.unbox(apply_constraint=False) if isinstance(b, nn.Partitioned) else b.unbox(), boxed)
    return unboxed, nn.get_partition_spec(boxed)
