"""The one attention function of the library.

Every attention (U-Net, text encoders, ELLA connector, ECLIPSE prior, adapters)
calls `attention`, so its implementation is chosen per backend in one place:

  "xla"     heads-first batched einsums, float32 softmax normalised after the value product;
            portable; masked or biased attention on the CPU
  "matmul"  the CPU default: the same math as plain 2-D matmuls per (batch, head) under `lax.map`, with a
            hand-written backward that recomputes the probabilities from the saved
            log-sum-exp (no (B, H, Lq, Lk) tensor is kept for the gradient). XLA:CPU's
            batched dot is its slow part; 2-D dots map to its good kernels (issue #12).
            Unmasked, unbiased attention of at least MATMUL_MIN_LOGITS query-key pairs
            only (the U-Net's self-attention at 32x32 latents and above); anything else
            takes "xla", which is faster while the batch's logits fit in the caches
            (measured in benchmarks/results/attention.md).
  "fused"   `jax.nn.dot_product_attention` with jax's default implementation
            (its XLA lowering as of jax 0.10); the GPU/TPU default
  "cudnn"   the same with implementation="cudnn" (NVIDIA GPUs, half precision):
            `set_attention_impl("cudnn")` or launch/benchmark_accelerator.py --attention cudnn

`set_attention_impl(name)` overrides the choice (e.g. from a config), and
`register_attention_impl` adds one (a Pallas/Splash kernel, say) without
touching model code.

Masking is dtype-safe: masks stay boolean until they meet the float32 logits,
and additive biases stay float32, so no large negative is ever cast to float16
(where -1e30 is -inf and a fully masked row would be NaN).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# The logit of a masked key and the floor of additive biases. Finite in float32, where every impl
# adds biases and takes the softmax, so a fully masked row is uniform instead of NaN; it must not
# be cast to a half dtype (float16 overflows to -inf). Also usable as a bias value by callers.
MASK_VALUE = -1e30

_IMPLS: dict[str, Callable] = {}
_override: str | None = None


def register_attention_impl(name: str, fn: Callable) -> None:
    """Add an implementation `fn(q, k, v, bias, mask, scale)`.

    q, k, v: (B, L, H, D) with equal head counts; bias: float32 logits >= MASK_VALUE or None;
    mask: boolean (True = attend) or None; both broadcastable to (B, H, Lq, Lk). A row with no
    visible key must give the mean of v over all keys, as the built-in impls do.
    """
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
    return "matmul" if jax.default_backend() == "cpu" else "fused"


def _combine_masks(mask, causal, lq, lk):
    """One boolean mask (True = attend) from a padding mask and causality, or None.

    Masks are combined with `and`, not by adding large negatives, so a key masked twice gets
    the same logit as one masked once and a fully masked row stays exactly uniform.
    """
    if mask is not None:
        mask = jnp.asarray(mask, dtype=bool)
    if causal:
        tril = jnp.tril(jnp.ones((lq, lk), bool), k=lk - lq)
        mask = tril if mask is None else jnp.logical_and(mask, tril)
    return mask


def _xla_attention(q, k, v, bias, mask, scale):
    # Heads go first so both einsums are dots with leading batch dimensions, the form XLA:CPU runs
    # well (2x faster than contracting (B, L, H, D) in place at 256x256, issue #12); the softmax is
    # normalised after the value product, which saves a pass over the (Lq, Lk) probabilities.
    q, k, v = (jnp.transpose(x, (0, 2, 1, 3)) for x in (q, k, v))
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = jnp.where(mask, logits, MASK_VALUE)
    e = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
    # float32 for the value product: unnormalised weights rounded to a half dtype would not match the sum below
    out = jnp.einsum("bhqk,bhkd->bhqd", e, v.astype(jnp.float32)) / jnp.sum(e, axis=-1, keepdims=True)
    return jnp.transpose(out.astype(v.dtype), (0, 2, 1, 3))


def _fused_attention(q, k, v, bias, mask, scale):
    """jax adds the float32 bias to float32 logits and replaces masked logits by a finite float32
    value, as `_xla_attention` does. It wants one dtype for q, k and v: upcast attention passes
    float32 q, k with a lower-precision v, so compute in the widest and return v's dtype."""
    dtype = jnp.result_type(q, k, v)
    out = jax.nn.dot_product_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype),
                                       bias=bias, mask=mask, scale=scale)
    return out.astype(v.dtype)


def _cudnn_attention(q, k, v, bias, mask, scale):
    """jax's cuDNN fused attention (NVIDIA GPUs; float16/bfloat16 inputs, head dim a multiple of 8 up to 128).
    jax raises if the GPU, dtype or shape is unsupported: choose it explicitly, it is never a default."""
    out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), bias=bias, mask=mask, scale=scale,
                                       implementation="cudnn")
    return out.astype(v.dtype)


def _heads_first(x):
    """(B, L, H, D) -> (B * H, L, D)."""
    b, length, h, d = x.shape
    return jnp.transpose(x, (0, 2, 1, 3)).reshape(b * h, length, d)


def _heads_last(x, b, h):
    """(B * H, L, D) -> (B, L, H, D)."""
    return jnp.transpose(x.reshape(b, h, *x.shape[1:]), (0, 2, 1, 3))


def _dot(a, b, dims):
    return jax.lax.dot_general(a, b, (dims, ((), ())), preferred_element_type=jnp.float32)


def _matmul_forward(q, k, v, scale):
    """Per (batch, head) slice: (out (L, D) in v's dtype, log-sum-exp (L,) float32)."""
    def one(args):
        qi, ki, vi = args
        logits = _dot(qi, ki, ((1,), (1,))) * scale  # (Lq, Lk)
        top = jnp.max(logits, axis=-1, keepdims=True)
        e = jnp.exp(logits - top)
        total = jnp.sum(e, axis=-1, keepdims=True)
        out = _dot(e.astype(vi.dtype), vi, ((1,), (0,))) / total  # normalised after the product: one pass fewer
        return out.astype(vi.dtype), (top + jnp.log(total))[:, 0]
    return jax.lax.map(one, (q, k, v))


@jax.custom_vjp
def _matmul_core(q, k, v, scale):
    return _matmul_forward(q, k, v, scale)[0]


def _matmul_core_fwd(q, k, v, scale):
    out, lse = _matmul_forward(q, k, v, scale)
    return out, (q, k, v, out, lse, scale)


def _matmul_core_bwd(residuals, d_out):
    q, k, v, out, lse, scale = residuals
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # (BH, Lq)

    # Works on the transposed probabilities (Lk, Lq), recomputed as exp(K Q^T - lse): then dv and dk
    # are plain (M, K) x (K, N) products and only dq contracts a leading axis, on its small (D, Lq)
    # side. XLA:CPU runs (Lq, Lk)^T x (Lq, D) 4x slower than the plain form (issue #12).
    def one(args):
        qi, ki, vi, li, gi, di = args
        p_t = jnp.exp(_dot(ki, qi, ((1,), (1,))) * scale - li[None, :])
        dv = _dot(p_t.astype(gi.dtype), gi, ((1,), (0,)))
        ds_t = p_t * (_dot(vi, gi, ((1,), (1,))) - di[None, :]) * scale
        dk = _dot(ds_t.astype(qi.dtype), qi, ((1,), (0,)))
        dq = _dot(ki, ds_t.astype(ki.dtype), ((0,), (0,))).T
        return dq.astype(qi.dtype), dk.astype(ki.dtype), dv.astype(vi.dtype)

    dq, dk, dv = jax.lax.map(one, (q, k, v, lse, d_out, delta))
    return dq, dk, dv, None


_matmul_core.defvjp(_matmul_core_fwd, _matmul_core_bwd)


# Lq * Lk from which per-head matmuls beat the batched einsums on XLA:CPU: there the batch's (B, H, Lq, Lk)
# logits outgrow the caches. fwd+bwd, fp32, B=8, 8 heads, idle 2 cores, 2026-12-01 (matmul / xla time):
# 256x256 (D 16) 1.6, 1024x77 2.4, 512x512 0.45, 1024x256 0.50, 4096x77 0.48, 1024x1024 0.41
# (`python benchmarks/attention.py`; benchmarks/results/attention.md).
MATMUL_MIN_LOGITS = 131_072


def _matmul_attention(q, k, v, bias, mask, scale):
    if bias is not None or mask is not None or q.shape[1] * k.shape[1] < MATMUL_MIN_LOGITS:
        return _xla_attention(q, k, v, bias, mask, scale)
    b, h = q.shape[0], q.shape[2]
    out = _matmul_core(_heads_first(q), _heads_first(k), _heads_first(v), scale)
    return _heads_last(out, b, h)


register_attention_impl("xla", _xla_attention)
register_attention_impl("matmul", _matmul_attention)
register_attention_impl("fused", _fused_attention)
register_attention_impl("cudnn", _cudnn_attention)


def attention(q, k, v, *, bias=None, mask=None, causal: bool = False, scale: float | None = None,
              impl: str | None = None):
    """Scaled dot-product attention.

    q: (B, Lq, H, D); k, v: (B, Lk, Hkv, D) with H % Hkv == 0 (grouped-query attention).
    bias: additive logits broadcastable to (B, H, Lq, Lk), taken in float32 and floored at
    MASK_VALUE (so MASK_VALUE or -inf in a bias masks a key); mask: boolean, True = attend,
    broadcastable to (B, H, Lq, Lk); causal: lower-triangular (aligned at the end).
    Returns (B, Lq, H, D) in v's dtype. Softmax statistics are float32 in every impl and dtype.
    A query row that sees no key (fully masked) gives the mean of v over all Lk keys, finite in
    every dtype: PyTorch's result for an additive mask with a large finite negative.
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
    if bias is not None:
        bias = jnp.maximum(jnp.asarray(bias, jnp.float32), MASK_VALUE)
    mask = _combine_masks(mask, causal, q.shape[1], k.shape[1])
    return _IMPLS[impl or attention_impl()](q, k, v, bias, mask, scale)


class AttentionEdit:
    """What a cross-attention `bias_fn` may return instead of a plain additive bias, for controls that need
    the raw scores or act after the softmax (paint-with-words, ERNIE-ViLG 2.0's key-token emphasis).

    bias:         additive logits after the 1/sqrt(d) scale, broadcastable to (B, H, Lq, Lk)
    score_bias:   f(S) -> additive logits, from the raw scores S = QK^T (B, H, Lq, Lk) float32; added
                  before the 1/sqrt(d) scale (paint-with-words as the paper writes it) when
                  `score_bias_before_scale`, else after
    value_scale:  (B, Lk) factors on the value vectors: the post-softmax attention weight of key j is
                  multiplied by value_scale[:, j] with no renormalisation (sum_j a_ij s_j v_j)
    Every field is optional; edits combine with `combine_edits`.
    """

    def __init__(self, bias=None, score_bias: Callable | None = None, value_scale=None,
                 score_bias_before_scale: bool = True):
        self.bias, self.score_bias, self.value_scale = bias, score_bias, value_scale
        self.score_bias_before_scale = score_bias_before_scale

    def resolve(self, q, k, v, scale: float):
        """(bias, v) for `attention`, q: (B, Lq, H, D), k, v: (B, Lk, H, D)."""
        bias = None if self.bias is None else jnp.asarray(self.bias, jnp.float32)
        if self.score_bias is not None:
            scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
            extra = self.score_bias(scores) * (scale if self.score_bias_before_scale else 1.0)
            bias = extra if bias is None else bias + extra
        if self.value_scale is not None:
            v = v * jnp.asarray(self.value_scale).astype(v.dtype)[:, :, None, None]
        return bias, v


def combine_edits(*edits):
    """One `bias_fn` result from several (None, arrays or `AttentionEdit`s): biases add, value scales multiply."""
    edits = [e for e in edits if e is not None]
    if not edits:
        return None
    if len(edits) == 1:
        return edits[0]
    edits = [e if isinstance(e, AttentionEdit) else AttentionEdit(bias=e) for e in edits]
    scored = [e for e in edits if e.score_bias is not None]

    def add(values):
        values = [x for x in values if x is not None]
        return None if not values else sum(values[1:], values[0])

    def score_bias(s):
        return add([e.score_bias(s) for e in scored])

    if len({e.score_bias_before_scale for e in scored}) > 1:
        raise ValueError("combine_edits: score biases placed before and after the scale cannot be combined")
    scales = [e.value_scale for e in edits if e.value_scale is not None]
    return AttentionEdit(bias=add([e.bias for e in edits]), score_bias=score_bias if scored else None,
                         value_scale=None if not scales else jnp.prod(jnp.stack(jnp.broadcast_arrays(*scales)), 0),
                         score_bias_before_scale=scored[0].score_bias_before_scale if scored else True)


def resolve_bias(bias_fn, q, k, v, scale: float):
    """(bias, v) from a cross-attention `bias_fn(Lq, Lk)` that returns None, an additive bias or an
    `AttentionEdit`."""
    edit = bias_fn(q.shape[1], k.shape[1]) if bias_fn is not None else None
    if isinstance(edit, AttentionEdit):
        return edit.resolve(q, k, v, scale)
    return edit, v
