"""diffusers' Attention, FeedForward, BasicTransformerBlock and Transformer2DModel, NHWC.

Module names mirror diffusers (`attn1`, `to_q`, `to_out.0`, `ff`, `net.0`, `proj`,
`net.2`, `proj_in`, `transformer_blocks.0`, ...).

Cross-attention bias hook: `bias_fn(query_length, key_length)` returns an additive
attention-logit bias broadcastable to (B, heads, Lq, Lk), an `attention.AttentionEdit`
(score-dependent biases, post-softmax value scaling), or None. The U-Net passes
the caller's `attention_bias_fn` to every layer that attends to the text context.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from t2ijax.models.attention import attention, resolve_bias
from t2ijax.models.layers import Dense, GroupNorm, LayerNorm
from t2ijax.models.resnet import conv2d

Dtype = Any
BiasFn = Optional[Callable[[int, int], Any]]


class Attention(nn.Module):
    """Multi-head (self or cross) attention with diffusers' parameter layout.

    `group_norm_groups` adds diffusers' `group_norm` on the input (VAE mid block); with
    `residual_connection` the input is added back to the output (also VAE).
    `upcast_attention` computes QK^T from float32 queries and keys (SD 2.x); the softmax
    is float32 in every case.
    """
    heads: int
    dim_head: int
    out_dim: int
    qkv_bias: bool = False
    out_bias: bool = True
    upcast_attention: bool = False
    group_norm_groups: int | None = None
    eps: float = 1e-5
    residual_connection: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None, bias_fn: BiasFn = None):
        residual = x
        if self.group_norm_groups is not None:
            x = GroupNorm(self.group_norm_groups, epsilon=self.eps, dtype=self.dtype, name="group_norm")(x)
        context = x if context is None else context
        inner = self.heads * self.dim_head
        q = Dense(inner, ("embed", "heads"), use_bias=self.qkv_bias, dtype=self.dtype, name="to_q")(x)
        k = Dense(inner, ("embed", "heads"), use_bias=self.qkv_bias, dtype=self.dtype, name="to_k")(context)
        v = Dense(inner, ("embed", "heads"), use_bias=self.qkv_bias, dtype=self.dtype, name="to_v")(context)
        b, lq, lk = q.shape[0], q.shape[1], k.shape[1]
        q = q.reshape(b, lq, self.heads, self.dim_head)
        k = k.reshape(b, lk, self.heads, self.dim_head)
        v = v.reshape(b, lk, self.heads, self.dim_head)
        if self.upcast_attention:
            q, k = q.astype(jnp.float32), k.astype(jnp.float32)
        bias, v = resolve_bias(bias_fn, q, k, v, self.dim_head ** -0.5)
        out = attention(q, k, v, bias=bias, scale=self.dim_head ** -0.5).astype(self.dtype)
        out = Dense(self.out_dim, ("heads", "embed"), use_bias=self.out_bias, dtype=self.dtype,
                    name="to_out.0")(out.reshape(b, lq, inner))
        if self.residual_connection:
            out = out + residual.astype(out.dtype)
        return out


class GEGLU(nn.Module):
    """Linear to 2 x `features`, then value * gelu(gate) (exact erf GELU, as torch's F.gelu)."""
    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = Dense(2 * self.features, ("embed", "mlp"), dtype=self.dtype, name="proj")(x)
        value, gate = jnp.split(h, 2, axis=-1)
        return value * nn.gelu(gate, approximate=False)


class GELU(nn.Module):
    """diffusers' GELU: Linear (`proj`) then exact (erf) GELU."""
    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.gelu(Dense(self.features, ("embed", "mlp"), dtype=self.dtype, name="proj")(x), approximate=False)


class FeedForward(nn.Module):
    """diffusers' FeedForward (`net.0` GEGLU or GELU by `activation_fn`, `net.2` Linear)."""
    dim: int
    mult: int = 4
    activation_fn: str = "geglu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        acts = {"geglu": GEGLU, "gelu": GELU}
        if self.activation_fn not in acts:
            raise ValueError(f"FeedForward activation_fn {self.activation_fn!r}; supported: {sorted(acts)}")
        h = acts[self.activation_fn](self.dim * self.mult, dtype=self.dtype, name="net.0")(x)
        return Dense(self.dim, ("mlp", "embed"), dtype=self.dtype, name="net.2")(h)


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention, cross-attention, feed-forward, each residual.

    `only_cross_attention`: attn1 also attends to the context (then it takes `bias_fn` too).
    `cross_attention=False`: no attn2 / norm2 (diffusers' block without `cross_attention_dim`, as in the
    PriorTransformer); `self_bias` is then an additive logit bias of the self-attention, broadcastable to
    (B, heads, L, L). `attention_bias`: q/k/v projections with biases. `activation_fn`: "geglu" | "gelu".
    """
    dim: int
    heads: int
    dim_head: int
    only_cross_attention: bool = False
    upcast_attention: bool = False
    norm_eps: float = 1e-5
    cross_attention: bool = True
    attention_bias: bool = False
    activation_fn: str = "geglu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None, bias_fn: BiasFn = None, self_bias=None):
        def attn(name):
            return Attention(self.heads, self.dim_head, self.dim, qkv_bias=self.attention_bias,
                             upcast_attention=self.upcast_attention, dtype=self.dtype, name=name)

        def norm(name):
            return LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name=name)

        h = norm("norm1")(x)
        if self.only_cross_attention:
            x = x + attn("attn1")(h, context, bias_fn)
        else:
            x = x + attn("attn1")(h, None, None if self_bias is None else (lambda lq, lk: self_bias))
        if self.cross_attention:
            x = x + attn("attn2")(norm("norm2")(x), context, bias_fn)
        ff = FeedForward(self.dim, activation_fn=self.activation_fn, dtype=self.dtype, name="ff")
        return x + ff(norm("norm3")(x))


class Transformer2DModel(nn.Module):
    """GroupNorm, proj_in (1x1 conv, or Linear with `use_linear_projection`), transformer blocks,
    proj_out, plus the input as residual. NHWC in and out."""
    heads: int
    dim_head: int
    num_layers: int = 1
    norm_num_groups: int = 32
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    upcast_attention: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context, bias_fn: BiasFn = None):
        b, hgt, wid, c = x.shape
        inner = self.heads * self.dim_head
        h = GroupNorm(self.norm_num_groups, epsilon=1e-6, dtype=self.dtype, name="norm")(x)
        if self.use_linear_projection:
            h = Dense(inner, ("conv_out", "embed"), dtype=self.dtype, name="proj_in")(h.reshape(b, hgt * wid, c))
        else:
            h = conv2d(inner, 1, dtype=self.dtype, name="proj_in")(h).reshape(b, hgt * wid, inner)
        context = context.astype(self.dtype)
        for i in range(self.num_layers):
            h = BasicTransformerBlock(inner, self.heads, self.dim_head, only_cross_attention=self.only_cross_attention,
                                      upcast_attention=self.upcast_attention, dtype=self.dtype,
                                      name=f"transformer_blocks.{i}")(h, context, bias_fn)
        if self.use_linear_projection:
            h = Dense(c, ("embed", "conv_out"), dtype=self.dtype, name="proj_out")(h).reshape(b, hgt, wid, c)
        else:
            h = conv2d(c, 1, dtype=self.dtype, name="proj_out")(h.reshape(b, hgt, wid, inner))
        return h + x.astype(h.dtype)
