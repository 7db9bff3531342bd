"""CLIP text and vision towers (Hugging Face `CLIPTextModel`, `CLIPTextModelWithProjection`,
`CLIPVisionModel`, `CLIPModel`).

Module names mirror the Hugging Face state-dict paths (``text_model.embeddings.token_embedding``,
``text_model.encoder.layers.{i}.self_attn.q_proj``, ``mlp.fc1``, ``layer_norm1``,
``vision_model.embeddings.patch_embedding``, ``vision_model.pre_layrnorm`` (sic, Hugging Face's
spelling), ``text_projection``, ``visual_projection``, ``logit_scale``).

Text: learned position embeddings, causal self-attention combined with the padding mask,
``quick_gelu`` or ``gelu`` per ``hidden_act``, ``final_layer_norm``. The pooled output is the
final state at the end-of-text token, with Hugging Face's rule: configs with the legacy
``eos_token_id == 2`` take the argmax of ``input_ids`` (the EOT id is the largest in CLIP's
vocabulary), others the first position equal to ``eos_token_id``.

Vision: pixel values are NHWC (B, H, W, C), already resized to ``image_size`` and normalised
with CLIP's mean/std; a bias-free patch convolution, a class token, learned position
embeddings, ``pre_layrnorm``, the encoder, and ``post_layernorm`` on the class token.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from t2ijax.models.attention import attention
from t2ijax.models.layers import Conv, Dense, Embed, LayerNorm, activation, param
from t2ijax.models.text.common import check_text_inputs, key_padding_mask

Dtype = Any


def _pick(cls, cfg: dict) -> dict:
    return {f.name: cfg[f.name] for f in dataclasses.fields(cls) if f.name in cfg}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407
    projection_dim: int = 512

    def __post_init__(self):
        activation(self.hidden_act)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")

    @classmethod
    def from_hf(cls, cfg: dict) -> "CLIPTextConfig":
        return cls(**_pick(cls, cfg))

    def to_hf(self) -> dict:
        return dict(dataclasses.asdict(self), model_type="clip_text_model", bos_token_id=49406, pad_token_id=1)


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        activation(self.hidden_act)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @classmethod
    def from_hf(cls, cfg: dict) -> "CLIPVisionConfig":
        return cls(**_pick(cls, cfg))

    def to_hf(self) -> dict:
        return dict(dataclasses.asdict(self), model_type="clip_vision_model")


class CLIPAttention(nn.Module):
    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None, causal: bool = False):
        b, length, width = x.shape
        head_dim = width // self.num_heads

        def proj(name):
            y = Dense(width, ("embed", "heads"), dtype=self.dtype, name=name)(x)
            return y.reshape(b, length, self.num_heads, head_dim)

        out = attention(proj("q_proj"), proj("k_proj"), proj("v_proj"), mask=mask, causal=causal)
        return Dense(width, ("heads", "embed"), dtype=self.dtype, name="out_proj")(out.reshape(b, length, width))


class CLIPMLP(nn.Module):
    hidden_size: int
    intermediate_size: int
    hidden_act: str
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = Dense(self.intermediate_size, ("embed", "mlp"), dtype=self.dtype, name="fc1")(x)
        h = activation(self.hidden_act)(h)
        return Dense(self.hidden_size, ("mlp", "embed"), dtype=self.dtype, name="fc2")(h)


class CLIPEncoder(nn.Module):
    """``encoder.layers.{i}``: pre-norm transformer layers. Returns every layer's output."""
    config: CLIPTextConfig | CLIPVisionConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, mask=None, causal: bool = False):
        cfg = self.config
        outputs = []
        for i in range(cfg.num_hidden_layers):
            layer = _CLIPEncoderLayer(cfg, self.dtype, name=f"layers.{i}")
            h = layer(h, mask, causal)
            outputs.append(h)
        return outputs


class _CLIPEncoderLayer(nn.Module):
    config: CLIPTextConfig | CLIPVisionConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, mask, causal):
        cfg = self.config
        x = LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="layer_norm1")(h)
        h = h + CLIPAttention(cfg.num_attention_heads, self.dtype, name="self_attn")(x, mask, causal)
        x = LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="layer_norm2")(h)
        return h + CLIPMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, self.dtype, name="mlp")(x)


class CLIPTextTransformer(nn.Module):
    """``text_model``: returns (last_hidden_state, pooled_output, hidden_states tuple)."""
    config: CLIPTextConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask):
        cfg = self.config
        length = input_ids.shape[1]
        if length > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {length} exceeds CLIP's max_position_embeddings "
                             f"{cfg.max_position_embeddings}")
        tok = Embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), dtype=self.dtype,
                    name="embeddings.token_embedding")(input_ids)
        pos = Embed(cfg.max_position_embeddings, cfg.hidden_size, (None, "embed"), dtype=self.dtype,
                    name="embeddings.position_embedding")(jnp.arange(length)[None])
        h = tok + pos
        outputs = CLIPEncoder(cfg, self.dtype, name="encoder")(h, key_padding_mask(attention_mask), causal=True)
        last = LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="final_layer_norm")(outputs[-1])
        if cfg.eos_token_id == 2:
            eos_index = jnp.argmax(input_ids, axis=-1)  # legacy configs: the EOT id is the largest id
        else:
            eos_index = jnp.argmax(input_ids == cfg.eos_token_id, axis=-1)  # first EOT position
        pooled = jnp.take_along_axis(last, eos_index[:, None, None], axis=1)[:, 0]
        return last, pooled, (h, *outputs)


class CLIPVisionTransformer(nn.Module):
    """``vision_model``: NHWC pixels -> (last_hidden_state, pooled_output, hidden_states tuple)."""
    config: CLIPVisionConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values):
        cfg = self.config
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (cfg.image_size, cfg.image_size, cfg.num_channels):
            raise ValueError(f"pixel_values must be NHWC (B, {cfg.image_size}, {cfg.image_size}, "
                             f"{cfg.num_channels}), got shape {tuple(pixel_values.shape)}")
        b = pixel_values.shape[0]
        patches = Conv(cfg.hidden_size, (cfg.patch_size, cfg.patch_size), strides=cfg.patch_size, padding="VALID",
                       use_bias=False, dtype=self.dtype, name="embeddings.patch_embedding")(pixel_values)
        patches = patches.reshape(b, -1, cfg.hidden_size)  # row-major over the patch grid, as torch's flatten
        cls = param(self, "embeddings.class_embedding", nn.initializers.normal(1.0), (cfg.hidden_size,), ("embed",))
        cls = jnp.broadcast_to(cls.astype(patches.dtype), (b, 1, cfg.hidden_size))
        h = jnp.concatenate([cls, patches], axis=1)
        num_positions = (cfg.image_size // cfg.patch_size) ** 2 + 1
        h = h + Embed(num_positions, cfg.hidden_size, (None, "embed"), dtype=self.dtype,
                      name="embeddings.position_embedding")(jnp.arange(num_positions)[None])
        h = LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="pre_layrnorm")(h)
        outputs = CLIPEncoder(cfg, self.dtype, name="encoder")(h)
        pooled = LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="post_layernorm")(outputs[-1][:, 0])
        return outputs[-1], pooled, (h, *outputs)


class CLIPTextModel(nn.Module):
    """CLIP text tower (`CLIPTextModel`, or `CLIPTextModelWithProjection` when `with_projection`).

    `apply(v, input_ids, attention_mask)` -> last hidden state (B, L, hidden_size).
    `apply(v, ids, mask, output_hidden_states=True)` -> Hugging Face's `hidden_states` tuple:
    the embeddings, then every layer's output (the last one before `final_layer_norm`).
    `apply(v, ids, mask, method="get_text_features")` -> the pooled EOT state, projected
    by `text_projection` when the model has one.
    """
    config: CLIPTextConfig
    with_projection: bool = False
    dtype: Dtype = jnp.float32

    def setup(self):
        self.text_model = CLIPTextTransformer(self.config, self.dtype)
        if self.with_projection:
            self.text_projection = Dense(self.config.projection_dim, ("embed", None), use_bias=False,
                                         dtype=self.dtype)

    def __call__(self, input_ids, attention_mask=None, output_hidden_states: bool = False):
        return self.encode(input_ids, attention_mask, output_hidden_states)[0]

    def encode(self, input_ids, attention_mask=None, output_hidden_states: bool = False):
        """(last hidden state or hidden_states tuple, pooled/projected text features)."""
        attention_mask = check_text_inputs(input_ids, attention_mask)
        last, pooled, hidden = self.text_model(input_ids, attention_mask)
        if self.with_projection:
            pooled = self.text_projection(pooled)
        return (hidden if output_hidden_states else last), pooled

    def get_text_features(self, input_ids, attention_mask=None):
        return self.encode(input_ids, attention_mask)[1]


class CLIPModel(nn.Module):
    """Both CLIP towers with their projections (Hugging Face `CLIPModel`).

    `apply(v, ids, mask, method="get_text_features")` -> (B, projection_dim) text embeddings;
    `apply(v, pixels_nhwc, method="get_image_features")` -> (B, projection_dim) image embeddings,
    both unnormalised, as Hugging Face returns them. `__call__(ids, mask, pixels)` returns both.
    `logit_scale` is kept (log of the contrastive temperature) so that exports are complete.
    """
    text_config: CLIPTextConfig
    vision_config: CLIPVisionConfig
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592
    dtype: Dtype = jnp.float32

    def setup(self):
        self.text_model = CLIPTextTransformer(self.text_config, self.dtype)
        self.vision_model = CLIPVisionTransformer(self.vision_config, self.dtype)
        self.text_projection = Dense(self.projection_dim, ("embed", None), use_bias=False, dtype=self.dtype)
        self.visual_projection = Dense(self.projection_dim, ("embed", None), use_bias=False, dtype=self.dtype)
        self.logit_scale = param(self, "logit_scale", nn.initializers.constant(self.logit_scale_init_value), (), ())

    def __call__(self, input_ids, attention_mask=None, pixel_values=None):
        text = self.get_text_features(input_ids, attention_mask)
        image = None if pixel_values is None else self.get_image_features(pixel_values)
        return text, image

    def encode(self, input_ids, attention_mask=None, output_hidden_states: bool = False):
        """(text last hidden state or hidden_states tuple, projected text features)."""
        attention_mask = check_text_inputs(input_ids, attention_mask)
        last, pooled, hidden = self.text_model(input_ids, attention_mask)
        return (hidden if output_hidden_states else last), self.text_projection(pooled)

    def get_text_features(self, input_ids, attention_mask=None):
        return self.encode(input_ids, attention_mask)[1]

    def get_image_features(self, pixel_values):
        return self.visual_projection(self.vision_model(pixel_values)[1])
