"""The down / mid / up blocks of diffusers' UNet2DConditionModel and AutoencoderKL, NHWC.

Implemented: CrossAttnDownBlock2D, DownBlock2D, UNetMidBlock2DCrossAttn,
CrossAttnUpBlock2D, UpBlock2D (U-Net) and DownEncoderBlock2D, AttnDownEncoderBlock2D,
UNetMidBlock2D, UpDecoderBlock2D, AttnUpDecoderBlock2D (VAE / MoVQ). Kandinsky 2.2's
U-Net blocks are in `t2ijax.models.simple_attn_blocks`. Names mirror diffusers (`resnets.0`, `attentions.0`,
`downsamplers.0`, `upsamplers.0`).

With `remat=True` every resnet and every Transformer2DModel is rematerialised in
the backward pass (diffusers' gradient checkpointing granularity).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from t2ijax.models.resnet import Downsample2D, ResnetBlock2D, SpatialNorm, Upsample2D
from t2ijax.models.transformer_2d import Attention, BiasFn, Transformer2DModel

Dtype = Any


_RematResnetBlock2D = nn.remat(ResnetBlock2D)
# argument 0 is the module itself, 3 the cross-attention bias function (a Python callable, hence static)
_RematTransformer2DModel = nn.remat(Transformer2DModel, static_argnums=(3,))


class _Block(nn.Module):
    """Settings shared by every block; `resnet(i)` / `transformer(i)` build the named sub-layers."""
    out_channels: int = 0
    num_layers: int = 1
    groups: int = 32
    eps: float = 1e-5
    act_fn: str = "silu"
    time_embedding_norm: str = "default"
    skip_time_act: bool = False
    output_scale_factor: float = 1.0
    # cross-attention settings (ignored by blocks without attention)
    heads: int = 8
    transformer_layers: int = 1
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    upcast_attention: bool = False
    dtype: Dtype = jnp.float32
    remat: bool = False

    def resnet(self, i: int):
        cls = _RematResnetBlock2D if self.remat else ResnetBlock2D
        return cls(self.out_channels, groups=self.groups, eps=self.eps, act_fn=self.act_fn,
                   time_embedding_norm=self.time_embedding_norm, skip_time_act=self.skip_time_act,
                   output_scale_factor=self.output_scale_factor, dtype=self.dtype, name=f"resnets.{i}")

    def transformer(self, i: int):
        cls = _RematTransformer2DModel if self.remat else Transformer2DModel
        if self.out_channels % self.heads:
            raise ValueError(f"{self.out_channels} channels do not split into {self.heads} attention heads")
        return cls(self.heads, self.out_channels // self.heads, num_layers=self.transformer_layers,
                   norm_num_groups=self.groups, use_linear_projection=self.use_linear_projection,
                   only_cross_attention=self.only_cross_attention, upcast_attention=self.upcast_attention,
                   dtype=self.dtype, name=f"attentions.{i}")


class DownBlock2D(_Block):
    add_downsample: bool = True
    downsample_padding: int = 1

    @nn.compact
    def __call__(self, x, temb, context=None, bias_fn: BiasFn = None):
        """Returns (output, skip connections)."""
        skips = []
        for i in range(self.num_layers):
            x = self.resnet(i)(x, temb)
            skips.append(x)
        if self.add_downsample:
            x = Downsample2D(self.out_channels, self.downsample_padding, dtype=self.dtype,
                             name="downsamplers.0")(x)
            skips.append(x)
        return x, skips


class CrossAttnDownBlock2D(DownBlock2D):
    @nn.compact
    def __call__(self, x, temb, context=None, bias_fn: BiasFn = None):
        skips = []
        for i in range(self.num_layers):
            x = self.resnet(i)(x, temb)
            x = self.transformer(i)(x, context, bias_fn)
            skips.append(x)
        if self.add_downsample:
            x = Downsample2D(self.out_channels, self.downsample_padding, dtype=self.dtype,
                             name="downsamplers.0")(x)
            skips.append(x)
        return x, skips


class UNetMidBlock2DCrossAttn(_Block):
    """resnet, then (transformer, resnet) x num_layers."""

    @nn.compact
    def __call__(self, x, temb, context=None, bias_fn: BiasFn = None):
        x = self.resnet(0)(x, temb)
        for i in range(self.num_layers):
            x = self.transformer(i)(x, context, bias_fn)
            x = self.resnet(i + 1)(x, temb)
        return x


class UpBlock2D(_Block):
    """`num_layers` resnets, each on [x, popped skip] concatenated on channels."""
    add_upsample: bool = True

    @nn.compact
    def __call__(self, x, skips, temb, context=None, bias_fn: BiasFn = None, upsample_size=None):
        skips = list(skips)
        for i in range(self.num_layers):
            x = jnp.concatenate([x, skips.pop().astype(x.dtype)], axis=-1)
            x = self.resnet(i)(x, temb)
        if self.add_upsample:
            x = Upsample2D(self.out_channels, dtype=self.dtype, name="upsamplers.0")(x, upsample_size)
        return x


class CrossAttnUpBlock2D(UpBlock2D):
    @nn.compact
    def __call__(self, x, skips, temb, context=None, bias_fn: BiasFn = None, upsample_size=None):
        skips = list(skips)
        for i in range(self.num_layers):
            x = jnp.concatenate([x, skips.pop().astype(x.dtype)], axis=-1)
            x = self.resnet(i)(x, temb)
            x = self.transformer(i)(x, context, bias_fn)
        if self.add_upsample:
            x = Upsample2D(self.out_channels, dtype=self.dtype, name="upsamplers.0")(x, upsample_size)
        return x


# ------------------------------------------------------------------ VAE blocks
# With time_embedding_norm="spatial" (MoVQ's decoder) the resnets and attentions are normalised by
# SpatialNorm conditioned on the quantised latents, which the decoder passes as `temb`.

class _VAEBlock(_Block):
    def attention(self, i: int, x, temb=None):
        """diffusers' Attention(..., residual_connection=True, bias=True) of the VAE blocks: one head of width C,
        GroupNorm on the input, or SpatialNorm(x, temb) with time_embedding_norm="spatial"."""
        b, h, w, c = x.shape
        name = f"attentions.{i}"
        if self.time_embedding_norm != "spatial":
            attn = Attention(1, c, c, qkv_bias=True, group_norm_groups=self.groups, eps=self.eps,
                             residual_connection=True, dtype=self.dtype, name=name)
            return attn(x.reshape(b, h * w, c)).reshape(b, h, w, c)
        # diffusers' `attentions.i.spatial_norm`: a sibling module whose dotted name gives the same torch key,
        # since Attention works on the flattened sequence and SpatialNorm needs the 2-D map
        normed = SpatialNorm(dtype=self.dtype, name=f"{name}.spatial_norm")(x, temb)
        out = Attention(1, c, c, qkv_bias=True, dtype=self.dtype, name=name)(normed.reshape(b, h * w, c))
        return x + out.reshape(b, h, w, c).astype(x.dtype)


class DownEncoderBlock2D(_VAEBlock):
    add_downsample: bool = True

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_layers):
            x = self.resnet(i)(x, None)
        if self.add_downsample:
            x = Downsample2D(self.out_channels, padding=0, dtype=self.dtype, name="downsamplers.0")(x)
        return x


class AttnDownEncoderBlock2D(DownEncoderBlock2D):
    """DownEncoderBlock2D with a VAE attention after every resnet (MoVQ's last encoder block)."""

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_layers):
            x = self.attention(i, self.resnet(i)(x, None))
        if self.add_downsample:
            x = Downsample2D(self.out_channels, padding=0, dtype=self.dtype, name="downsamplers.0")(x)
        return x


class UpDecoderBlock2D(_VAEBlock):
    """`temb`: the quantised latents with time_embedding_norm="spatial", else None."""
    add_upsample: bool = True

    @nn.compact
    def __call__(self, x, temb=None):
        for i in range(self.num_layers):
            x = self.resnet(i)(x, temb)
        if self.add_upsample:
            x = Upsample2D(self.out_channels, dtype=self.dtype, name="upsamplers.0")(x)
        return x


class AttnUpDecoderBlock2D(UpDecoderBlock2D):
    """UpDecoderBlock2D with a VAE attention after every resnet (MoVQ's first decoder block)."""

    @nn.compact
    def __call__(self, x, temb=None):
        for i in range(self.num_layers):
            x = self.attention(i, self.resnet(i)(x, temb), temb)
        if self.add_upsample:
            x = Upsample2D(self.out_channels, dtype=self.dtype, name="upsamplers.0")(x)
        return x


class UNetMidBlock2D(_VAEBlock):
    """resnet, then (single-head spatial self-attention, resnet) x num_layers (the VAE mid block)."""
    add_attention: bool = True

    @nn.compact
    def __call__(self, x, temb=None):
        x = self.resnet(0)(x, temb)
        for i in range(self.num_layers):
            if self.add_attention:
                x = self.attention(i, x, temb)
            x = self.resnet(i + 1)(x, temb)
        return x
