"""Residual and resampling layers of the diffusers U-Net / VAE, NHWC.

Module names mirror diffusers (`norm1`, `conv1`, `time_emb_proj`, `conv_shortcut`,
`conv`), so `t2ijax.weights.torch_layout` maps the state dict mechanically.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from t2ijax.models.layers import Conv, Dense, GroupNorm, activation

Dtype = Any


def conv2d(features: int, kernel: int, *, stride: int = 1, padding: int | None = None, dtype: Dtype = jnp.float32,
           use_bias: bool = True, name: str | None = None) -> nn.Conv:
    """A PyTorch-style Conv2d: explicit symmetric padding (default `(kernel - 1) // 2`), NHWC."""
    pad = (kernel - 1) // 2 if padding is None else padding
    return Conv(features, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)), use_bias=use_bias,
                dtype=dtype, name=name)


class SpatialNorm(nn.Module):
    """diffusers' SpatialNorm (MoVQ): GroupNorm(32, eps 1e-6) of `f`, scaled and shifted by 1x1 convs of the
    quantised latents `zq`, nearest-resized to `f`'s size. Both NHWC."""
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, f, zq):
        channels = f.shape[-1]
        zq = upsample_nearest(zq.astype(self.dtype), f.shape[1:3])
        norm = GroupNorm(32, epsilon=1e-6, dtype=self.dtype, name="norm_layer")(f)
        return (norm * conv2d(channels, 1, dtype=self.dtype, name="conv_y")(zq)
                + conv2d(channels, 1, dtype=self.dtype, name="conv_b")(zq))


class ResnetBlock2D(nn.Module):
    """diffusers' ResnetBlock2D (pre-norm, "default" or "scale_shift" time conditioning).

    `temb=None` (VAE) means the block has no `time_emb_proj`. `up` / `down` resample between
    norm1 and conv1 (nearest 2x / 2x2 average pooling, on the shortcut too), as the
    `ResnetUpsampleBlock2D` / `ResnetDownsampleBlock2D` family does.
    `time_embedding_norm="spatial"` is diffusers' ResnetBlockCondNorm2D (MoVQ decoder): norm1 and
    norm2 are SpatialNorms and `temb` is the quantised latents (NHWC), not a time embedding.
    """
    out_channels: int
    groups: int = 32
    eps: float = 1e-6
    act_fn: str = "silu"
    time_embedding_norm: str = "default"
    skip_time_act: bool = False
    output_scale_factor: float = 1.0
    up: bool = False
    down: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb=None):
        act = activation(self.act_fn)
        spatial = self.time_embedding_norm == "spatial"
        if spatial and temb is None:
            raise ValueError("time_embedding_norm='spatial' needs the quantised latents as `temb`")
        residual = x
        if spatial:
            h = act(SpatialNorm(dtype=self.dtype, name="norm1")(x, temb))
        else:
            h = act(GroupNorm(self.groups, epsilon=self.eps, dtype=self.dtype, name="norm1")(x))
        if self.up:
            residual, h = upsample_nearest(residual), upsample_nearest(h)
        elif self.down:
            residual, h = avg_pool_2x2(residual), avg_pool_2x2(h)
        h = conv2d(self.out_channels, 3, dtype=self.dtype, name="conv1")(h)
        if spatial:
            h = SpatialNorm(dtype=self.dtype, name="norm2")(h, temb)
        else:
            h = self._time_conditioned_norm2(h, temb, act)
        h = act(h)
        h = conv2d(self.out_channels, 3, dtype=self.dtype, name="conv2")(h)
        if residual.shape[-1] != self.out_channels:
            residual = conv2d(self.out_channels, 1, dtype=self.dtype, name="conv_shortcut")(residual)
        out = residual.astype(h.dtype) + h
        return out / self.output_scale_factor if self.output_scale_factor != 1.0 else out

    def _time_conditioned_norm2(self, h, temb, act):
        if temb is not None:
            t = temb if self.skip_time_act else act(temb)
            width = 2 * self.out_channels if self.time_embedding_norm == "scale_shift" else self.out_channels
            t = Dense(width, ("embed", "conv_out"), dtype=self.dtype, name="time_emb_proj")(t)[:, None, None, :]
        norm2 = GroupNorm(self.groups, epsilon=self.eps, dtype=self.dtype, name="norm2")
        if self.time_embedding_norm == "scale_shift":
            if temb is None:
                raise ValueError("time_embedding_norm='scale_shift' needs a time embedding")
            scale, shift = jnp.split(t, 2, axis=-1)
            return norm2(h) * (1 + scale) + shift
        if self.time_embedding_norm == "default":
            return norm2(h if temb is None else h + t)
        raise ValueError(f"unsupported time_embedding_norm {self.time_embedding_norm!r}")


def avg_pool_2x2(x):
    """PyTorch's AvgPool2d(2, 2) on NHWC `x` (an odd trailing row / column is dropped)."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv. `padding=0` reproduces diffusers' asymmetric (0, 1) pad used by the VAE encoder."""
    out_channels: int
    padding: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return conv2d(self.out_channels, 3, stride=2, padding=self.padding, dtype=self.dtype, name="conv")(x)


def upsample_nearest(x, size: Sequence[int] | None = None):
    """Nearest-neighbour upsampling of NHWC `x` by 2, or to `size` (H, W) with PyTorch's index rule."""
    b, h, w, c = x.shape
    if size is None or tuple(size) == (2 * h, 2 * w):
        return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
    out_h, out_w = size
    rows = np.minimum(np.floor(np.arange(out_h) * np.float32(h / out_h)).astype(np.int32), h - 1)
    cols = np.minimum(np.floor(np.arange(out_w) * np.float32(w / out_w)).astype(np.int32), w - 1)
    return x[:, rows][:, :, cols]


class Upsample2D(nn.Module):
    """Nearest 2x (or to `size`) upsampling followed by a 3x3 conv."""
    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, size: Sequence[int] | None = None):
        x = upsample_nearest(x, size)
        return conv2d(self.out_channels, 3, dtype=self.dtype, name="conv")(x)
