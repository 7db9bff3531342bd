"""ERNIE-ViLG 2.0's knowledge-enhanced training (Feng et al. 2022, section 3.1), as switches of any text-to-image
method built on `t2ijax.methods.common.DiffusionMethod` (``config.model.knowledge``):

* key-token emphasis (textual knowledge, Eq. 8-9): on a `key_fraction` of the training examples (50%) the
  cross-attention to the caption's key words (nouns, adjectives, numerals, ...: batch["key_token_mask"], from
  the data's key-word provider) is multiplied by (1 + w_a), w_a = `key_weight` 0.01. Where the factor sits is
  not given by the paper; `key_placement`:
    "post_softmax"  (default) the attention weights a_ij of key tokens j times (1 + w_a), not renormalised:
                    the paper's "the attention scores ... are multiplied", read as the attention map. It is
                    computed exactly as value vectors scaled by (1 + w_a) (`AttentionEdit.value_scale`).
    "renormalised"  the same, renormalised over the keys: log(1 + w_a) added to the key tokens' logits.
    "logits"        the pre-softmax logits QK^T / sqrt(d) of key tokens times (1 + w_a).
* region weighting (visual knowledge, Eq. 10-11): on a `region_fraction` of the examples (50%) the per-pixel
  squared error of the denoising loss is weighted by (1 + w_l M), w_l = `region_weight` 0.1, with M the union
  of the object masks (`regions` "masks") or of their boxes ("boxes"), resized to the model's resolution
  (latents: the mean over each latent pixel's block; bilinear when the sizes are not multiples). The
  per-pixel form is presumed (methods.md: unverified).
* caption completion (objects detected in the image but missing from the caption are appended) is a data
  switch: ``config.data.complete_captions`` (`t2ijax.data.knowledge`).

Examples whose caption classifier-free-guidance dropout replaced get no key-token emphasis (the empty caption
has no key words). Everything is training-only: sampling uses plain prompts.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from t2ijax.models.attention import AttentionEdit

PLACEMENTS = ("post_softmax", "renormalised", "logits")
REGIONS = ("masks", "boxes")


@dataclasses.dataclass(frozen=True)
class Knowledge:
    key_tokens: bool = True
    key_weight: float = 0.01
    key_fraction: float = 0.5
    key_placement: str = "post_softmax"
    regions: str = "masks"          # "" = no region weighting
    region_weight: float = 0.1
    region_fraction: float = 0.5

    def __post_init__(self):
        if self.key_placement not in PLACEMENTS:
            raise ValueError(f"model.knowledge.key_placement {self.key_placement!r}; choose one of {PLACEMENTS}")
        if self.regions not in REGIONS + ("",):
            raise ValueError(f"model.knowledge.regions {self.regions!r}; choose one of {REGIONS} or '' (off)")
        for name in ("key_fraction", "region_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"model.knowledge.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.key_weight <= -1.0:
            raise ValueError(f"model.knowledge.key_weight must be > -1, got {self.key_weight}")

    @classmethod
    def from_config(cls, cfg) -> "Knowledge | None":
        """`config.model.knowledge` (absent, None or {"enabled": False}: no knowledge)."""
        if cfg is None:
            return None
        cfg = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
        if not cfg.pop("enabled", True):
            return None
        unknown = set(cfg) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"config.model.knowledge has unknown fields {sorted(unknown)}; known: enabled, "
                             f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**cfg)

    def check_data(self, data_config) -> None:
        if (self.key_tokens or self.regions) and not data_config.get("with_regions", False):
            raise ValueError("model.knowledge needs the key-word and object annotations: set data.with_regions=True")

    # ---------------------------------------------------------------- training inputs

    def key_token_weights(self, batch, key, keep):
        """(B, L) 0/1: the key tokens to emphasise (zero for the examples not drawn or whose caption was
        dropped: `keep` (B,) bool), or None when key-token emphasis is off."""
        if not self.key_tokens:
            return None
        chosen = jax.random.bernoulli(key, self.key_fraction, keep.shape) & keep
        return batch["key_token_mask"].astype(jnp.float32) * chosen[:, None].astype(jnp.float32)

    def region_weights(self, batch, key, hw: tuple[int, int]):
        """(B, h, w, 1) loss weights 1 + w_l M on the drawn examples (1 elsewhere), or None when off."""
        if not self.regions:
            return None
        valid = batch["object_valid"].astype(jnp.float32)
        if self.regions == "masks":
            masks = batch["masks"].astype(jnp.float32)
        else:
            masks = boxes_to_masks(batch["boxes"], batch["masks"].shape[-2:])
        union = jnp.max(masks * valid[:, :, None, None], axis=1)
        union = resize_to(union, hw)
        chosen = jax.random.bernoulli(key, self.region_fraction, union.shape[:1]).astype(jnp.float32)
        return (1.0 + self.region_weight * union * chosen[:, None, None])[..., None]

    def training_inputs(self, batch, key, keep, hw):
        """(key-token weights or None, loss weight map or None) of a training batch."""
        key_key, region_key = jax.random.split(key)
        return self.key_token_weights(batch, key_key, keep), self.region_weights(batch, region_key, hw)

    # ---------------------------------------------------------------- the attention edit

    def key_token_fn(self, key_tokens):
        """Cross-attention hook emphasising `key_tokens` (B, L) 0/1."""
        m = jnp.asarray(key_tokens, jnp.float32)

        def fn(query_length, key_length):
            if key_length != m.shape[-1]:
                raise ValueError(f"key-token emphasis: {key_length} cross-attention keys for {m.shape[-1]} tokens")
            if self.key_placement == "post_softmax":
                return AttentionEdit(value_scale=1.0 + self.key_weight * m)
            if self.key_placement == "renormalised":
                return AttentionEdit(bias=math.log1p(self.key_weight) * m[:, None, None, :])
            return AttentionEdit(score_bias=lambda s: self.key_weight * m[:, None, None, :] * s,
                                 score_bias_before_scale=True)

        return fn


def resize_to(maps, hw):
    """(B, H, W) -> (B, h, w): block means when H, W are multiples of h, w (a latent pixel's share of the
    region), else bilinear."""
    b, big_h, big_w = maps.shape
    h, w = hw
    if (big_h, big_w) == (h, w):
        return maps
    if big_h % h == 0 and big_w % w == 0:
        return maps.reshape(b, h, big_h // h, w, big_w // w).mean(axis=(2, 4))
    return jax.image.resize(maps, (b, h, w), "linear")


def boxes_to_masks(boxes, hw: tuple[int, int]):
    """(B, K, 4) normalised x0, y0, x1, y1 -> (B, K, H, W) 0/1 masks of the pixels whose centre is inside."""
    h, w = hw
    ys = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
    xs = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
    b = jnp.asarray(boxes, jnp.float32)[..., None, None]
    inside_x = (xs >= b[..., 0, :, :]) & (xs < b[..., 2, :, :])
    inside_y = (ys[:, None] >= b[..., 1, :, :]) & (ys[:, None] < b[..., 3, :, :])
    return (inside_x & inside_y).astype(jnp.float32)
