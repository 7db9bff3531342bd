"""Llama-family decoder used as a frozen feature extractor (TinyLlama, LLaMA, LLaMA-2).

Mirrors Hugging Face's `LlamaModel` (state-dict names ``embed_tokens``,
``layers.{i}.self_attn.q_proj|k_proj|v_proj|o_proj``, ``layers.{i}.mlp.gate_proj|up_proj|down_proj``,
``layers.{i}.input_layernorm``, ``layers.{i}.post_attention_layernorm``, ``norm``):
RMSNorm, rotary position embeddings (half-split "rotate_half" layout) with ``rope_theta``,
grouped-query attention with ``num_key_value_heads``, a SwiGLU MLP, causal + padding masks.
Positions are 0..L-1 whatever the padding, as in Hugging Face without explicit position ids,
so pad on the right.

There is no ``lm_head``: features only. SUR-adapter reads an intermediate layer, so
``output_hidden_states=True`` returns Hugging Face's ``hidden_states`` tuple: the embeddings
first, then each layer's output, the last one after the final ``norm`` (or before it, with
``last_layer_pre_norm=True``).

RoPE scaling: ``rope_scaling`` None / ``rope_type`` "default" is the original RoPE; "linear"
(position interpolation) divides the frequencies by ``factor``. Other types (dynamic, yarn, llama3,
longrope) raise an error naming the type.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from t2ijax.models.attention import attention
from t2ijax.models.layers import Dense, Embed, RMSNorm, activation
from t2ijax.models.text.common import check_text_inputs, key_padding_mask

Dtype = Any

SUPPORTED_ROPE_TYPES = ("default", "linear")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    max_position_embeddings: int = 2048
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False

    def __post_init__(self):
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(f"unsupported rope scaling type {self.rope_type!r}: t2ijax's Llama supports "
                             f"{SUPPORTED_ROPE_TYPES} (rope_scaling null is 'default')")
        activation(self.hidden_act)

    @classmethod
    def from_hf(cls, cfg: dict) -> "LlamaConfig":
        """From a Hugging Face config: legacy ``rope_theta`` + ``rope_scaling`` or v5 ``rope_parameters``."""
        names = {f.name for f in dataclasses.fields(cls)} - {"rope_theta", "rope_type", "rope_factor"}
        kwargs = {k: cfg[k] for k in names if cfg.get(k) is not None}
        rope = dict(cfg.get("rope_scaling") or {})
        rope.update(cfg.get("rope_parameters") or {})
        theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(f"unsupported rope scaling type {rope_type!r} in this Llama config "
                             f"(rope_scaling={cfg.get('rope_scaling')}, rope_parameters={cfg.get('rope_parameters')});"
                             f" supported: {SUPPORTED_ROPE_TYPES}")
        factor = float(rope.get("factor", 1.0)) if rope_type == "linear" else 1.0
        return cls(**kwargs, rope_theta=float(theta), rope_type=rope_type, rope_factor=factor)

    def to_hf(self) -> dict:
        out = dataclasses.asdict(self)
        for k in ("rope_theta", "rope_type", "rope_factor"):
            out.pop(k)
        rope = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
        if self.rope_type == "linear":
            rope["factor"] = self.rope_factor
        out.update(model_type="llama", architectures=["LlamaModel"], rope_parameters=rope,
                   rope_theta=self.rope_theta,
                   rope_scaling=None if self.rope_type == "default" else {"rope_type": "linear",
                                                                          "factor": self.rope_factor})
        return out


def rotary_cos_sin(length: int, head_dim: int, theta: float, factor: float = 1.0):
    """(L, head_dim) cos and sin tables in float32, frequencies repeated over both halves."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)) / factor
    freqs = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rotary(x, cos, sin):
    """x: (B, L, H, D); cos/sin: (L, D), cast to x's dtype as Hugging Face does."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = cos[None, :, None, :].astype(x.dtype)
    sin = sin[None, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


class LlamaAttention(nn.Module):
    config: LlamaConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask, cos, sin):
        cfg = self.config
        b, length, _ = x.shape

        def proj(name, heads):
            y = Dense(heads * cfg.head_dim, ("embed", "heads"), use_bias=cfg.attention_bias, dtype=self.dtype,
                      name=name)(x)
            return y.reshape(b, length, heads, cfg.head_dim)

        q = apply_rotary(proj("q_proj", cfg.num_attention_heads), cos, sin)
        k = apply_rotary(proj("k_proj", cfg.num_key_value_heads), cos, sin)
        v = proj("v_proj", cfg.num_key_value_heads)
        out = attention(q, k, v, mask=mask, causal=True)
        out = out.reshape(b, length, cfg.num_attention_heads * cfg.head_dim)
        return Dense(cfg.hidden_size, ("heads", "embed"), use_bias=cfg.attention_bias, dtype=self.dtype,
                     name="o_proj")(out)


class LlamaMLP(nn.Module):
    config: LlamaConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg = self.config

        def dense(features, axes, name):
            return Dense(features, axes, use_bias=cfg.mlp_bias, dtype=self.dtype, name=name)

        gate = activation(cfg.hidden_act)(dense(cfg.intermediate_size, ("embed", "mlp"), "gate_proj")(x))
        up = dense(cfg.intermediate_size, ("embed", "mlp"), "up_proj")(x)
        return dense(cfg.hidden_size, ("mlp", "embed"), "down_proj")(gate * up)


class LlamaDecoderLayer(nn.Module):
    config: LlamaConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, mask, cos, sin):
        cfg = self.config
        x = RMSNorm(cfg.rms_norm_eps, dtype=self.dtype, name="input_layernorm")(h)
        h = h + LlamaAttention(cfg, self.dtype, name="self_attn")(x, mask, cos, sin)
        x = RMSNorm(cfg.rms_norm_eps, dtype=self.dtype, name="post_attention_layernorm")(h)
        return h + LlamaMLP(cfg, self.dtype, name="mlp")(x)


class LlamaModel(nn.Module):
    """Llama decoder stack without the LM head.

    `apply(v, input_ids, attention_mask)` -> last hidden state (B, L, hidden_size), after `norm`.
    `apply(v, ids, mask, output_hidden_states=True)` -> tuple of num_hidden_layers + 1 arrays:
    the embeddings, then each layer's output, the last one after the final norm (Hugging Face's
    `hidden_states`). attention_mask: (B, L), 1 for tokens, 0 for (right) padding.
    `last_layer_pre_norm=True` makes the tuple's last entry the last layer's raw output instead
    (before `norm`): SUR-adapter's "layer 39" of LLaMA-13B, which Hugging Face's tuple lacks.
    """
    config: LlamaConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, output_hidden_states: bool = False,
                 last_layer_pre_norm: bool = False):
        cfg = self.config
        attention_mask = check_text_inputs(input_ids, attention_mask)
        h = Embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), dtype=self.dtype, name="embed_tokens")(input_ids)
        cos, sin = rotary_cos_sin(input_ids.shape[1], cfg.head_dim, cfg.rope_theta, cfg.rope_factor)
        mask = key_padding_mask(attention_mask)
        hidden_states = [h]
        for i in range(cfg.num_hidden_layers):
            h = LlamaDecoderLayer(cfg, self.dtype, name=f"layers.{i}")(h, mask, cos, sin)
            hidden_states.append(h)
        h = RMSNorm(cfg.rms_norm_eps, dtype=self.dtype, name="norm")(h)
        if output_hidden_states:
            if not last_layer_pre_norm:
                hidden_states[-1] = h
            return tuple(hidden_states)
        return h

    def encode(self, input_ids, attention_mask=None):
        """(last hidden state, None): a decoder has no pooled output of its own."""
        return self(input_ids, attention_mask), None
