"""The U-Net blocks of Kandinsky 2.2's decoder (and unCLIP-style U-Nets), NHWC.

Implemented: ResnetDownsampleBlock2D, SimpleCrossAttnDownBlock2D, UNetMidBlock2DSimpleCrossAttn,
SimpleCrossAttnUpBlock2D, ResnetUpsampleBlock2D. They differ from `t2ijax.models.unet_blocks` in two ways:

* resampling is a resnet (`downsamplers.0` / `upsamplers.0` is a ResnetBlock2D with `down` / `up`:
  2x2 average pooling / nearest 2x, no conv), so the up blocks always upsample by exactly 2;
* attention is diffusers' `Attention` with `AttnAddedKVProcessor`: GroupNorm on the feature map, queries
  from it, keys and values from the context through `add_k_proj` / `add_v_proj`, concatenated with
  keys and values of the feature map itself (`to_k` / `to_v`) unless `only_cross_attention`, plus
  the input as residual.

diffusers' `attention_head_dim` is the width of one head here (heads = channels // head_dim), unlike
the Transformer2DModel blocks where it is the number of heads.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from t2ijax.models.attention import AttentionEdit, attention
from t2ijax.models.layers import Dense, GroupNorm
from t2ijax.models.resnet import ResnetBlock2D
from t2ijax.models.transformer_2d import BiasFn
from t2ijax.models.unet_blocks import _Block, _RematResnetBlock2D

Dtype = Any


class AddedKVAttention(nn.Module):
    """diffusers' Attention(query_dim=C, added_kv_proj_dim, norm_num_groups, bias=True) run by AttnAddedKVProcessor.

    `bias_fn(query_length, context_length)` biases the logits of the context keys (the feature map's own keys,
    if any, get none), as the U-Net's other cross-attentions do.
    """
    heads: int
    dim_head: int
    groups: int
    only_cross_attention: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context, bias_fn: BiasFn = None):
        b, h, w, c = x.shape
        inner = self.heads * self.dim_head
        if inner != c:
            raise ValueError(f"{c} channels do not split into heads of width {self.dim_head} (attention_head_dim)")

        def proj(name):
            return Dense(inner, ("embed", "heads"), dtype=self.dtype, name=name)

        def split_heads(t):
            return t.reshape(b, t.shape[1], self.heads, self.dim_head)

        # diffusers' GroupNorm here keeps Attention's default eps of 1e-5, not the resnets' norm_eps
        hs = GroupNorm(self.groups, epsilon=1e-5, dtype=self.dtype, name="group_norm")(x).reshape(b, h * w, c)
        context = context.astype(self.dtype)
        q = split_heads(proj("to_q")(hs))
        k = split_heads(proj("add_k_proj")(context))
        v = split_heads(proj("add_v_proj")(context))
        lq, lc = h * w, context.shape[1]
        bias = bias_fn(lq, lc) if bias_fn is not None else None
        if isinstance(bias, AttentionEdit):
            raise ValueError("the unCLIP decoder's joint self/context attention takes additive biases only, not an "
                             "AttentionEdit (paint-with-words and key-token emphasis need the SD-style U-Net)")
        if not self.only_cross_attention:
            k = jnp.concatenate([k, split_heads(proj("to_k")(hs))], axis=1)
            v = jnp.concatenate([v, split_heads(proj("to_v")(hs))], axis=1)
            if bias is not None:
                bias = jnp.asarray(bias, jnp.float32)
                bias = jnp.broadcast_to(bias, bias.shape[:-1] + (lc,))
                bias = jnp.pad(bias, [(0, 0)] * (bias.ndim - 1) + [(0, lq)])
        out = attention(q, k, v, bias=bias, scale=self.dim_head ** -0.5).astype(self.dtype)
        out = Dense(c, ("heads", "embed"), dtype=self.dtype, name="to_out.0")(out.reshape(b, lq, inner))
        return out.reshape(b, h, w, c) + x.astype(out.dtype)


# argument 0 is the module itself, 3 the bias function (a Python callable, hence static)
_RematAddedKVAttention = nn.remat(AddedKVAttention, static_argnums=(3,))


class SimpleBlock(_Block):
    """Settings of these blocks. `head_dim` is diffusers' `attention_head_dim` (None: one head)."""
    head_dim: int | None = None

    def attention(self, i: int):
        cls = _RematAddedKVAttention if self.remat else AddedKVAttention
        dim = self.head_dim or self.out_channels
        if self.out_channels % dim:
            raise ValueError(f"{self.out_channels} channels do not split into heads of width {dim} "
                             "(attention_head_dim)")
        return cls(self.out_channels // dim, dim, self.groups, only_cross_attention=self.only_cross_attention,
                   dtype=self.dtype, name=f"attentions.{i}")

    def resampler(self, name: str, *, up: bool = False, down: bool = False):
        cls = _RematResnetBlock2D if self.remat else ResnetBlock2D
        return cls(self.out_channels, groups=self.groups, eps=self.eps, act_fn=self.act_fn,
                   time_embedding_norm=self.time_embedding_norm, skip_time_act=self.skip_time_act,
                   output_scale_factor=self.output_scale_factor, up=up, down=down, dtype=self.dtype, name=name)


class ResnetDownsampleBlock2D(SimpleBlock):
    add_downsample: bool = True
    downsample_padding: int = 1  # unused: the resnet downsampler pools (kept for the U-Net's uniform call)

    def layer(self, i, x, temb, context, bias_fn):
        return self.resnet(i)(x, temb)

    @nn.compact
    def __call__(self, x, temb, context=None, bias_fn: BiasFn = None):
        """Returns (output, skip connections)."""
        skips = []
        for i in range(self.num_layers):
            x = self.layer(i, x, temb, context, bias_fn)
            skips.append(x)
        if self.add_downsample:
            x = self.resampler("downsamplers.0", down=True)(x, temb)
            skips.append(x)
        return x, skips


class SimpleCrossAttnDownBlock2D(ResnetDownsampleBlock2D):
    def layer(self, i, x, temb, context, bias_fn):
        return self.attention(i)(self.resnet(i)(x, temb), context, bias_fn)


class UNetMidBlock2DSimpleCrossAttn(SimpleBlock):
    """resnet, then (added-KV attention, resnet) x num_layers."""

    @nn.compact
    def __call__(self, x, temb, context=None, bias_fn: BiasFn = None):
        x = self.resnet(0)(x, temb)
        for i in range(self.num_layers):
            x = self.attention(i)(x, context, bias_fn)
            x = self.resnet(i + 1)(x, temb)
        return x


class ResnetUpsampleBlock2D(SimpleBlock):
    """`num_layers` resnets, each on [x, popped skip] concatenated on channels, then a resnet upsampler."""
    add_upsample: bool = True

    def layer(self, i, x, temb, context, bias_fn):
        return self.resnet(i)(x, temb)

    @nn.compact
    def __call__(self, x, skips, temb, context=None, bias_fn: BiasFn = None,
                 upsample_size: Sequence[int] | None = None):
        skips = list(skips)
        for i in range(self.num_layers):
            x = jnp.concatenate([x, skips.pop().astype(x.dtype)], axis=-1)
            x = self.layer(i, x, temb, context, bias_fn)
        if self.add_upsample:
            h, w = x.shape[1:3]
            if upsample_size is not None and tuple(upsample_size) != (2 * h, 2 * w):
                raise ValueError(f"{type(self).__name__} upsamples by exactly 2 ({h}x{w} -> {2 * h}x{2 * w}), but "
                                 f"the skip connection is {tuple(upsample_size)}: with resnet up blocks the latent "
                                 "height and width must be multiples of 2^(len(block_out_channels) - 1), as in "
                                 "diffusers")
            x = self.resampler("upsamplers.0", up=True)(x, temb)
        return x


class SimpleCrossAttnUpBlock2D(ResnetUpsampleBlock2D):
    def layer(self, i, x, temb, context, bias_fn):
        return self.attention(i)(self.resnet(i)(x, temb), context, bias_fn)
