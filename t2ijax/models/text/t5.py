"""T5 / mT5 / UMT5 encoder (the frozen text encoder of ELLA, eDiff-I, ...).

Mirrors Hugging Face's `T5EncoderModel` / `MT5EncoderModel` / `UMT5EncoderModel`;
module names follow their state-dict paths (``shared``,
``encoder.block.{i}.layer.0.SelfAttention.q``, ``encoder.block.{i}.layer.1.DenseReluDense.wi_0``,
``encoder.final_layer_norm``), so `t2ijax.weights.torch_layout` converts weights mechanically.

Architecture notes:
  * T5 v1.0 uses a ReLU feed-forward (``wi``/``wo``); v1.1, Flan-T5 and mT5 a gated
    GELU (tanh approximation, ``wi_0``/``wi_1``/``wo``); chosen by ``feed_forward_proj``.
  * T5LayerNorm is an RMS norm without mean subtraction and without bias.
  * Attention is not scaled by 1/sqrt(d) (T5 folds that into its initialisation).
  * T5 and mT5 compute the bucketed relative position bias in the first block and
    share it with every block; UMT5 has a ``relative_attention_bias`` in every block.

Half precision (ELLA's connector expects Flan-T5-XL features computed in float16):
  * ``dtype=jnp.float16`` computes matmuls in float16. As in Hugging Face, the hidden
    states are clamped to +-(float16 max, minus 1000 if anything overflowed) after
    each residual add while they are float16, so that no inf propagates.
  * Hugging Face keeps the feed-forward output projection ``wo`` in float32
    (``_keep_in_fp32_modules = ["wo"]``), which promotes the residual stream to float32
    from the first feed-forward on. ``keep_wo_float32=True`` (default) reproduces that;
    ``False`` runs ``wo`` in ``dtype`` too (a pure half-precision residual stream). Keep the
    parameters in float32 (the loaders' default ``param_dtype``) so that ``wo`` also keeps its
    full-precision weights, as in Hugging Face; the other kernels are rounded to float16 on use.
  * Attention logits and softmax statistics are float32 (the library-wide attention
    function), where Hugging Face's eager path stays in float16: a rounding-level difference.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from t2ijax.models.attention import attention
from t2ijax.models.layers import Dense, Embed, RMSNorm, activation
from t2ijax.models.text.common import check_text_inputs, key_padding_mask

Dtype = Any

T5_MODEL_TYPES = ("t5", "mt5", "umt5")


@dataclasses.dataclass(frozen=True)
class T5Config:
    """The encoder fields of a Hugging Face T5 / mT5 / UMT5 config."""

    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    model_type: str = "t5"

    def __post_init__(self):
        if self.model_type not in T5_MODEL_TYPES:
            raise ValueError(f"T5Config.model_type must be one of {T5_MODEL_TYPES}, got {self.model_type!r}")
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r} must be 'ACT' or 'gated-ACT'")
        activation(self.dense_act_fn)  # raises on an unknown activation

    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def dense_act_fn(self) -> str:
        # Hugging Face maps "gated-gelu" to the tanh approximation (gelu_new), as the original T5 v1.1 code.
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else self.feed_forward_proj.split("-")[-1]

    @property
    def per_layer_relative_bias(self) -> bool:
        return self.model_type == "umt5"

    @classmethod
    def from_hf(cls, cfg: dict) -> "T5Config":
        names = [f.name for f in dataclasses.fields(cls)]
        kwargs = {k: cfg[k] for k in names if k in cfg}
        kwargs.setdefault("feed_forward_proj", "relu" if cfg.get("model_type", "t5") == "t5" else "gated-gelu")
        return cls(**kwargs)

    def to_hf(self) -> dict:
        arch = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}[self.model_type]
        out = dataclasses.asdict(self)
        out.update(architectures=[arch], is_encoder_decoder=False, use_cache=False, dropout_rate=0.0,
                   is_gated_act=self.is_gated_act, dense_act_fn=self.dense_act_fn, pad_token_id=0,
                   eos_token_id=1, tie_word_embeddings=True)
        return out


def relative_position_bucket(relative_position: np.ndarray, num_buckets: int, max_distance: int) -> np.ndarray:
    """T5's bidirectional bucketing of (key - query) offsets (Mesh TensorFlow's rule).

    Half of the buckets encode the sign; within each half, small distances get their own
    bucket and larger ones share logarithmically wider buckets up to `max_distance`.
    Computed with numpy at trace time: it depends only on the sequence length.
    """
    num_buckets //= 2
    buckets = (relative_position > 0).astype(np.int64) * num_buckets
    distance = np.abs(relative_position)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    with np.errstate(divide="ignore"):
        log_ratio = np.log(np.maximum(distance, 1).astype(np.float32) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(is_small, distance, large)


class T5Attention(nn.Module):
    config: T5Config
    has_relative_attention_bias: bool
    dtype: Dtype = jnp.float32

    def compute_bias(self, length: int):
        """(1, heads, L, L) float32 position bias for a length-L self-attention."""
        cfg = self.config
        pos = np.arange(length)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], cfg.relative_attention_num_buckets,
                                           cfg.relative_attention_max_distance)
        table = Embed(cfg.relative_attention_num_buckets, cfg.num_heads, ("relpos", "heads"), dtype=jnp.float32,
                      name="relative_attention_bias")
        values = table(jnp.asarray(buckets, jnp.int32))  # (L, L, H)
        return jnp.transpose(values, (2, 0, 1))[None]

    @nn.compact
    def __call__(self, x, mask, position_bias):
        cfg = self.config
        b, length, _ = x.shape
        inner = cfg.num_heads * cfg.d_kv

        def proj(name):
            y = Dense(inner, ("embed", "heads"), use_bias=False, dtype=self.dtype, name=name)(x)
            return y.reshape(b, length, cfg.num_heads, cfg.d_kv)

        q, k, v = proj("q"), proj("k"), proj("v")
        if self.has_relative_attention_bias:
            position_bias = self.compute_bias(length)
        out = attention(q, k, v, bias=position_bias, mask=mask, scale=1.0)
        out = Dense(cfg.d_model, ("heads", "embed"), use_bias=False, dtype=self.dtype, name="o")(
            out.reshape(b, length, inner))
        return out, position_bias


class T5DenseReluDense(nn.Module):
    """T5DenseActDense (``wi``) or T5DenseGatedActDense (``wi_0`` * ``wi_1``), then ``wo``."""
    config: T5Config
    dtype: Dtype = jnp.float32
    keep_wo_float32: bool = True

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        act = activation(cfg.dense_act_fn)
        if cfg.is_gated_act:
            h = act(Dense(cfg.d_ff, ("embed", "mlp"), use_bias=False, dtype=self.dtype, name="wi_0")(x))
            h = h * Dense(cfg.d_ff, ("embed", "mlp"), use_bias=False, dtype=self.dtype, name="wi_1")(x)
        else:
            h = act(Dense(cfg.d_ff, ("embed", "mlp"), use_bias=False, dtype=self.dtype, name="wi")(x))
        wo_dtype = jnp.float32 if self.keep_wo_float32 else self.dtype
        return Dense(cfg.d_model, ("mlp", "embed"), use_bias=False, dtype=wo_dtype, name="wo")(h)


def _clamp_float16(h):
    """Hugging Face's guard against inf in float16 residual streams (a no-op for other dtypes)."""
    if h.dtype != jnp.float16:
        return h
    fmax = float(jnp.finfo(jnp.float16).max)
    limit = jnp.where(jnp.isinf(h).any(), fmax - 1000.0, fmax).astype(h.dtype)
    return jnp.clip(h, -limit, limit)


class T5LayerSelfAttention(nn.Module):
    config: T5Config
    has_relative_attention_bias: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, mask, position_bias):
        normed = RMSNorm(self.config.layer_norm_epsilon, dtype=self.dtype, name="layer_norm")(h)
        out, position_bias = T5Attention(self.config, self.has_relative_attention_bias, self.dtype,
                                         name="SelfAttention")(normed, mask, position_bias)
        return h + out, position_bias


class T5LayerFF(nn.Module):
    config: T5Config
    dtype: Dtype = jnp.float32
    keep_wo_float32: bool = True

    @nn.compact
    def __call__(self, h):
        normed = RMSNorm(self.config.layer_norm_epsilon, dtype=self.dtype, name="layer_norm")(h)
        return h + T5DenseReluDense(self.config, self.dtype, self.keep_wo_float32, name="DenseReluDense")(normed)


class T5Block(nn.Module):
    config: T5Config
    has_relative_attention_bias: bool
    dtype: Dtype = jnp.float32
    keep_wo_float32: bool = True

    @nn.compact
    def __call__(self, h, mask, position_bias):
        h, position_bias = T5LayerSelfAttention(self.config, self.has_relative_attention_bias, self.dtype,
                                                name="layer.0")(h, mask, position_bias)
        h = _clamp_float16(h)
        h = T5LayerFF(self.config, self.dtype, self.keep_wo_float32, name="layer.1")(h)
        return _clamp_float16(h), position_bias


class T5Stack(nn.Module):
    """``encoder``: the blocks and the final norm (the token embedding is the top-level ``shared``)."""
    config: T5Config
    dtype: Dtype = jnp.float32
    keep_wo_float32: bool = True

    @nn.compact
    def __call__(self, h, attention_mask, output_hidden_states: bool = False):
        cfg = self.config
        mask = key_padding_mask(attention_mask)
        position_bias = None
        hidden_states = [h]
        for i in range(cfg.num_layers):
            has_bias = i == 0 or cfg.per_layer_relative_bias
            h, bias = T5Block(cfg, has_bias, self.dtype, self.keep_wo_float32, name=f"block.{i}")(
                h, mask, None if cfg.per_layer_relative_bias else position_bias)
            position_bias = bias
            hidden_states.append(h)
        h = RMSNorm(cfg.layer_norm_epsilon, dtype=self.dtype, name="final_layer_norm")(h)
        if output_hidden_states:
            hidden_states[-1] = h  # as Hugging Face: the last entry is after the final norm
            return tuple(hidden_states)
        return h


class T5EncoderModel(nn.Module):
    """T5 / mT5 / UMT5 encoder.

    `apply({"params": p}, input_ids, attention_mask)` -> last hidden state (B, L, d_model) in `dtype`
    (float32 when `dtype` is float32, float16 for float16 as in Hugging Face).
    attention_mask: (B, L), 1 for tokens, 0 for padding; None means no padding.
    output_hidden_states=True returns Hugging Face's `hidden_states` tuple instead: the embeddings,
    then every block's output, the last one after the final norm.
    """
    config: T5Config
    dtype: Dtype = jnp.float32
    keep_wo_float32: bool = True

    def setup(self):
        cfg = self.config
        self.shared = Embed(cfg.vocab_size, cfg.d_model, ("vocab", "embed"), dtype=self.dtype,
                            init=nn.initializers.normal(1.0))
        self.encoder = T5Stack(cfg, self.dtype, self.keep_wo_float32)

    def __call__(self, input_ids, attention_mask=None, output_hidden_states: bool = False):
        attention_mask = check_text_inputs(input_ids, attention_mask)
        return self.encoder(self.shared(input_ids), attention_mask, output_hidden_states)

    def encode(self, input_ids, attention_mask=None):
        """(last hidden state, None): T5 has no pooled output of its own."""
        return self(input_ids, attention_mask), None

