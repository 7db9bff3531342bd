"""T5 encoder-decoder with an LM head (Hugging Face `T5ForConditionalGeneration` layout), trainable.

`t2ijax.models.text.t5` has the encoder only (a frozen feature extractor). This module adds the decoder stack
and the LM head with Hugging Face's state-dict names, so that ``params_to_state_dict`` of the params of
`T5ForConditionalGeneration` is a `transformers.T5ForConditionalGeneration` checkpoint:

  shared.weight
  encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}.weight   (+ block 0: relative_attention_bias.weight)
  encoder.block.{i}.layer.{0,1}.layer_norm.weight, encoder.block.{i}.layer.1.DenseReluDense.{wi_0,wi_1,wo}
  encoder.final_layer_norm.weight
  decoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}.weight   (+ block 0: relative_attention_bias.weight)
  decoder.block.{i}.layer.1.EncDecAttention.{q,k,v,o}.weight
  decoder.block.{i}.layer.{0,1,2}.layer_norm.weight, decoder.block.{i}.layer.2.DenseReluDense.*
  decoder.final_layer_norm.weight
  lm_head.weight                                              (untied: T5 v1.1 / Flan-T5 style)

The encoder is `t2ijax.models.text.t5.T5Stack` itself, so `t2ijax.weights.load_text_encoder` of an export
(which ignores ``decoder.*`` and ``lm_head.*``) gives a `T5EncoderModel` with bit-identical encoder params.

Decoder, as Hugging Face: causal self-attention with a *unidirectional* bucketed relative position bias
(computed in block 0 and shared), cross-attention without position bias (masked by the encoder's padding),
no attention scaling (T5 folds 1/sqrt(d) into the initialisation), RMS norms, the encoder's feed-forward.
With ``tie_word_embeddings`` the decoder output is scaled by d_model**-0.5 and multiplied by ``shared``
(T5 v1.0); by default the head is a separate ``lm_head`` (v1.1).

Initialisation: as the t2ijax encoder (LeCun normal kernels, N(0, 1) embeddings) except the query projections,
which `t5_reference_init` rescales to Hugging Face's std (d_model * d_kv)**-0.5 (the unscaled attention
would otherwise start with logits of std ~sqrt(d_kv)); the untied ``lm_head`` keeps LeCun normal (std
d_model**-0.5; Hugging Face draws it with std 1, i.e. initial logits of std ~sqrt(d_model)).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t2ijax.models.attention import attention
from t2ijax.models.layers import Dense, Embed, RMSNorm
from t2ijax.models.text.common import check_text_inputs, key_padding_mask
from t2ijax.models.text.t5 import T5Config, T5LayerFF, T5Stack, _clamp_float16

Dtype = Any


def decoder_relative_position_bucket(relative_position: np.ndarray, num_buckets: int, max_distance: int) -> np.ndarray:
    """T5's unidirectional bucketing of (key - query) offsets: only the past counts (future offsets -> bucket 0)."""
    n = np.maximum(-relative_position, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    with np.errstate(divide="ignore"):
        log_ratio = np.log(np.maximum(n, 1).astype(np.float32) / max_exact) / math.log(max_distance / max_exact)
    large = np.minimum(max_exact + (log_ratio * (num_buckets - max_exact)).astype(np.int64), num_buckets - 1)
    return np.where(is_small, n, large)


class T5CrossOrCausalAttention(nn.Module):
    """Decoder attention: ``SelfAttention`` (causal, kv = x) or ``EncDecAttention`` (kv = encoder states)."""
    config: T5Config
    has_relative_attention_bias: bool = False
    dtype: Dtype = jnp.float32

    def compute_bias(self, lq: int, lk: int):
        cfg = self.config
        q_pos, k_pos = np.arange(lq), np.arange(lk)
        buckets = decoder_relative_position_bucket(k_pos[None, :] - q_pos[:, None], cfg.relative_attention_num_buckets,
                                                   cfg.relative_attention_max_distance)
        table = Embed(cfg.relative_attention_num_buckets, cfg.num_heads, ("relpos", "heads"), dtype=jnp.float32,
                      name="relative_attention_bias")
        return jnp.transpose(table(jnp.asarray(buckets, jnp.int32)), (2, 0, 1))[None]

    @nn.compact
    def __call__(self, x, kv, mask, position_bias, causal: bool):
        cfg = self.config
        inner = cfg.num_heads * cfg.d_kv

        def proj(name, y):
            out = Dense(inner, ("embed", "heads"), use_bias=False, dtype=self.dtype, name=name)(y)
            return out.reshape(y.shape[0], y.shape[1], cfg.num_heads, cfg.d_kv)

        q, k, v = proj("q", x), proj("k", kv), proj("v", kv)
        if self.has_relative_attention_bias:
            position_bias = self.compute_bias(x.shape[1], kv.shape[1])
        out = attention(q, k, v, bias=position_bias, mask=mask, causal=causal, scale=1.0)
        out = Dense(cfg.d_model, ("heads", "embed"), use_bias=False, dtype=self.dtype, name="o")(
            out.reshape(x.shape[0], x.shape[1], inner))
        return out, position_bias


class T5DecoderLayerSelfAttention(nn.Module):
    config: T5Config
    has_relative_attention_bias: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, mask, position_bias):
        normed = RMSNorm(self.config.layer_norm_epsilon, dtype=self.dtype, name="layer_norm")(h)
        out, position_bias = T5CrossOrCausalAttention(self.config, self.has_relative_attention_bias, self.dtype,
                                                      name="SelfAttention")(normed, normed, mask, position_bias, True)
        return h + out, position_bias


class T5LayerCrossAttention(nn.Module):
    config: T5Config
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, encoder_states, encoder_mask):
        normed = RMSNorm(self.config.layer_norm_epsilon, dtype=self.dtype, name="layer_norm")(h)
        out, _ = T5CrossOrCausalAttention(self.config, False, self.dtype, name="EncDecAttention")(
            normed, encoder_states, encoder_mask, None, False)
        return h + out


class T5DecoderBlock(nn.Module):
    config: T5Config
    has_relative_attention_bias: bool
    dtype: Dtype = jnp.float32
    keep_wo_float32: bool = True

    @nn.compact
    def __call__(self, h, self_mask, position_bias, encoder_states, encoder_mask):
        h, position_bias = T5DecoderLayerSelfAttention(self.config, self.has_relative_attention_bias, self.dtype,
                                                       name="layer.0")(h, self_mask, position_bias)
        h = _clamp_float16(h)
        h = _clamp_float16(T5LayerCrossAttention(self.config, self.dtype, name="layer.1")(h, encoder_states,
                                                                                         encoder_mask))
        h = T5LayerFF(self.config, self.dtype, self.keep_wo_float32, name="layer.2")(h)
        return _clamp_float16(h), position_bias


class T5DecoderStack(nn.Module):
    """``decoder``: the blocks and the final norm (embedding = the top-level ``shared``)."""
    config: T5Config
    num_layers: int
    dtype: Dtype = jnp.float32
    keep_wo_float32: bool = True

    @nn.compact
    def __call__(self, h, attention_mask, encoder_states, encoder_mask):
        self_mask = key_padding_mask(attention_mask)
        cross_mask = key_padding_mask(encoder_mask)
        position_bias = None
        for i in range(self.num_layers):
            h, position_bias = T5DecoderBlock(self.config, i == 0, self.dtype, self.keep_wo_float32,
                                              name=f"block.{i}")(h, self_mask, position_bias, encoder_states,
                                                                 cross_mask)
        return RMSNorm(self.config.layer_norm_epsilon, dtype=self.dtype, name="final_layer_norm")(h)


class T5ForConditionalGeneration(nn.Module):
    """T5 encoder-decoder with LM head.

    ``apply(v, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask)`` -> logits (B, Ld, V)
    in float32; ``method="encode_states"`` -> the encoder's last hidden state (B, L, d_model) (what
    `T5EncoderModel` of an export gives); ``method="decode"`` -> logits from given encoder states.
    Decoder inputs are the targets shifted right behind ``decoder_start_token_id`` (the pad id, 0 in T5).
    """
    config: T5Config
    num_decoder_layers: int
    tie_word_embeddings: bool = False
    dtype: Dtype = jnp.float32

    def setup(self):
        cfg = self.config
        if cfg.per_layer_relative_bias:
            raise ValueError("T5ForConditionalGeneration: UMT5's per-layer position bias is not supported")
        self.shared = Embed(cfg.vocab_size, cfg.d_model, ("vocab", "embed"), dtype=self.dtype,
                            init=nn.initializers.normal(1.0))
        self.encoder = T5Stack(cfg, self.dtype)
        self.decoder = T5DecoderStack(cfg, self.num_decoder_layers, self.dtype)
        if not self.tie_word_embeddings:
            self.lm_head = Dense(cfg.vocab_size, ("embed", "vocab"), use_bias=False, dtype=self.dtype)

    def encode_states(self, input_ids, attention_mask=None):
        attention_mask = check_text_inputs(input_ids, attention_mask)
        return self.encoder(self.shared(input_ids), attention_mask)

    def decode(self, decoder_input_ids, decoder_attention_mask, encoder_states, attention_mask):
        decoder_attention_mask = check_text_inputs(decoder_input_ids, decoder_attention_mask)
        h = self.decoder(self.shared(decoder_input_ids), decoder_attention_mask, encoder_states, attention_mask)
        if self.tie_word_embeddings:
            h = h * (self.config.d_model ** -0.5)
            return self.shared.attend(h.astype(jnp.float32)).astype(jnp.float32)
        return self.lm_head(h).astype(jnp.float32)

    def __call__(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask=None):
        attention_mask = check_text_inputs(input_ids, attention_mask)
        states = self.encode_states(input_ids, attention_mask)
        return self.decode(decoder_input_ids, decoder_attention_mask, states, attention_mask)


def t5_reference_init(params, config: T5Config):
    """Rescale every attention query kernel by d_kv**-0.5: LeCun normal (std d_model**-0.5) becomes Hugging Face's
    T5 query std (d_model * d_kv)**-0.5. Works on plain and on logically-boxed param trees."""
    scale = config.d_kv ** -0.5

    def one(path, leaf):
        keys = [getattr(k, "key", None) for k in path]
        if len(keys) >= 2 and keys[-1] == "kernel" and keys[-2] == "q":
            if isinstance(leaf, nn.meta.AxisMetadata):
                return leaf.replace_boxed(leaf.unbox(apply_constraint=False) * scale)
            return leaf * scale
        return leaf

    return jax.tree_util.tree_map_with_path(one, params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def hf_seq2seq_config(config: T5Config, num_decoder_layers: int, *, tie_word_embeddings: bool = False,
                      pad_token_id: int = 0, eos_token_id: int = 1, decoder_start_token_id: int = 0) -> dict:
    """config.json of a `transformers.T5ForConditionalGeneration` (read by `load_text_encoder` as its encoder)."""
    out = config.to_hf()
    out.update(architectures=["T5ForConditionalGeneration"], is_encoder_decoder=True, use_cache=True,
               num_decoder_layers=int(num_decoder_layers), tie_word_embeddings=bool(tie_word_embeddings),
               pad_token_id=int(pad_token_id), eos_token_id=int(eos_token_id),
               decoder_start_token_id=int(decoder_start_token_id))
    return out
