"""The one attention function of the library.

Every attention (U-Net, text encoders, ELLA connector, ECLIPSE prior, adapters)
calls `attention`, so its implementation is chosen per backend in one place:

  "xla"     batched einsum + float32 softmax; portable, the CPU default
  "fused"   `jax.nn.dot_product_attention`, which uses cuDNN flash attention on
            GPUs and XLA's fused kernels on TPU; the GPU/TPU default

`set_attention_impl(name)` overrides the choice (e.g. from a config), and
`register_attention_impl` adds one (a Pallas/Splash kernel, say) without
touching model code.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

MASK_VALUE = -1e30  # large finite negative: fully-masked rows stay finite, as in PyTorch's additive masks

_IMPLS: dict[str, Callable] = {}
_override: str | None = None


def register_attention_impl(name: str, fn: Callable) -> None:
    _IMPLS[name] = fn


def set_attention_impl(name: str | None) -> None:
    """Select the implementation globally (None restores the per-backend default)."""
    if name is not None and name not in _IMPLS:
        raise ValueError(f"unknown attention implementation {name!r}; known: {sorted(_IMPLS)}")
    global _override
    _override = name


def attention_impl() -> str:
    if _override is not None:
        return _override
    return "xla" if jax.default_backend() == "cpu" else "fused"


def _combine_bias(bias, mask, causal, lq, lk, dtype):
    """Fold a boolean mask and causality into one additive float32 bias (or None)."""
    out = None if bias is None else bias.astype(dtype)
    if mask is not None:
        m = jnp.where(mask, 0.0, MASK_VALUE).astype(dtype)
        out = m if out is None else out + m
    if causal:
        c = jnp.where(jnp.tril(jnp.ones((lq, lk), bool), k=lk - lq), 0.0, MASK_VALUE).astype(dtype)
        out = c if out is None else out + c
    return out


def _xla_attention(q, k, v, bias, scale):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        logits = logits + bias
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def _fused_attention(q, k, v, bias, scale):
    if bias is not None:
        bias = jnp.broadcast_to(bias, (q.shape[0], q.shape[2], q.shape[1], k.shape[1])).astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale)


register_attention_impl("xla", _xla_attention)
register_attention_impl("fused", _fused_attention)


def attention(q, k, v, *, bias=None, mask=None, causal: bool = False, scale: float | None = None,
              impl: str | None = None):
    """Scaled dot-product attention.

    q: (B, Lq, H, D); k, v: (B, Lk, Hkv, D) with H % Hkv == 0 (grouped-query attention).
    bias: additive logits broadcastable to (B, H, Lq, Lk); mask: boolean, True = attend,
    broadcastable to (B, H, Lq, Lk); causal: lower-triangular (aligned at the end).
    Returns (B, Lq, H, D) in q's dtype. Softmax statistics are float32.
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects (B, L, H, D) tensors, got q{q.shape} k{k.shape} v{v.shape}")
    h, hkv = q.shape[2], k.shape[2]
    if h != hkv:
        if h % hkv:
            raise ValueError(f"query heads {h} are not a multiple of key/value heads {hkv}")
        k = jnp.repeat(k, h // hkv, axis=2)
        v = jnp.repeat(v, h // hkv, axis=2)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    total_bias = _combine_bias(bias, mask, causal, q.shape[1], k.shape[1], jnp.float32)
    return _IMPLS[impl or attention_impl()](q, k, v, total_bias, scale)
