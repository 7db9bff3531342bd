"""eDiff-I's multi-encoder conditioning (Balaji et al. 2022, arXiv 2211.01324, "Multiple conditional inputs").

Three embeddings, computed by frozen encoders (offline in the paper):
  t5_states    (B, Lt, Dt)  T5-XXL token states
  clip_states  (B, Lc, Dc)  CLIP L/14 text token states
  clip_pooled  (B, Dp)      the pooled CLIP text embedding (end-of-text state, projected when the encoder has one)
  clip_image   (B, Di)      the CLIP L/14 image embedding (optional: style conditioning)
and one keep flag (B,) bool per embedding (False = dropped in training, or not given at sampling). A dropped
embedding is ZEROED BEFORE its projection, as the paper zeroes the whole tensor; dropping all of them gives
the unconditional model of classifier-free guidance. The pooled CLIP text embedding shares the CLIP text
flag.

    module = MultiEncoderConditioning(width=1024)
    context, class_vector = module.apply({"params": p}, t5_states, clip_states, clip_pooled, clip_image,
                                         keep_t5, keep_clip_text, keep_clip_image)

Outputs:
  context       (B, Lc + Lt + 1 + 1, width): the U-Net's cross-attention keys / values, in this order:
                [clip_text_proj(clip tokens), t5_proj(T5 tokens), clip_image_proj(image) as one token,
                 a learnable null token] (the paper's concat(CLIP text, T5, CLIP image) plus its null token)
  class vector  (B, Dp + Di) = concat(pooled CLIP text, CLIP image), zeroed where dropped. It feeds the U-Net's
                diffusers class embedding ``class_embed_type="projection"`` with
                ``projection_class_embeddings_input_dim = Dp + Di``: that TimestepEmbedding's first linear on the
                concatenation equals projecting each embedding and summing, and its output is added to the time
                embedding, the paper's global path ("projected and added to the time embedding"). Keeping that
                projection inside the U-Net keeps the U-Net exportable to diffusers.

Choices that are ours (the paper gives no layer-level description; no code is public):
  * each projection is one affine Linear (with bias) to `width`; so a dropped (zeroed) embedding becomes the
    projection's bias, a learned "absent" token, in every position it occupies;
  * `layer_norm` (default False): no normalisation after the projections. True adds one LayerNorm per
    projected stream (clip tokens, T5 tokens, image token; the null token is left as learned), as some
    re-implementations do to balance T5-XXL's large-magnitude states against CLIP's;
  * the null token is initialised N(0, 0.02^2) and is the same for every example;
  * no attention mask: padded token positions stay in the context (our U-Net's cross-attention, like Stable
    Diffusion's, takes no key mask); a dropped encoder's positions all hold its bias token.
Parameters carry logical axis names (`t2ijax.models.layers`): projection kernels (None, "embed"), biases,
norms and the null token ("embed",) / ("norm",).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from t2ijax.models.layers import Dense, LayerNorm, param

Dtype = Any

#: the three conditioning inputs, in the order of their keep flags
INPUTS = ("t5", "clip_text", "clip_image")


def context_layout(clip_length: int, t5_length: int) -> dict[str, slice]:
    """The positions of each part of the context: {"clip_text", "t5", "clip_image", "null"} -> slice."""
    lc, lt = int(clip_length), int(t5_length)
    return {"clip_text": slice(0, lc), "t5": slice(lc, lc + lt), "clip_image": slice(lc + lt, lc + lt + 1),
            "null": slice(lc + lt + 1, lc + lt + 2)}


def _zero_dropped(x, keep):
    """`x` (B, ...) with the rows whose `keep` (B,) is False set to zero."""
    keep = jnp.asarray(keep, bool).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x, jnp.zeros((), x.dtype))


class MultiEncoderConditioning(nn.Module):
    """Projects eDiff-I's three embeddings to the U-Net's cross-attention context and class vector.

    width: the U-Net's ``cross_attention_dim``. layer_norm: a LayerNorm after each projection (see the module
    docstring; default off). dtype: compute dtype of the projections (params stay float32).
    """

    width: int
    layer_norm: bool = False
    dtype: Dtype = jnp.float32

    def _project(self, x, name: str):
        y = Dense(self.width, (None, "embed"), dtype=self.dtype, name=f"{name}_proj")(x)
        if self.layer_norm:
            y = LayerNorm(dtype=self.dtype, name=f"{name}_norm")(y)
        return y

    @nn.compact
    def __call__(self, t5_states, clip_states, clip_pooled, clip_image, keep_t5, keep_clip_text, keep_clip_image):
        b = clip_states.shape[0]
        for name, x, ndim in (("t5_states", t5_states, 3), ("clip_states", clip_states, 3),
                              ("clip_pooled", clip_pooled, 2), ("clip_image", clip_image, 2)):
            if x.ndim != ndim or x.shape[0] != b:
                raise ValueError(f"MultiEncoderConditioning: {name} must be {ndim}-d with batch {b}, "
                                 f"got shape {tuple(x.shape)}")
        for name, k in (("keep_t5", keep_t5), ("keep_clip_text", keep_clip_text),
                        ("keep_clip_image", keep_clip_image)):
            if jnp.shape(k) != (b,):
                raise ValueError(f"MultiEncoderConditioning: {name} must have shape ({b},), got {jnp.shape(k)}")
        t5 = _zero_dropped(t5_states, keep_t5)
        clip = _zero_dropped(clip_states, keep_clip_text)
        pooled = _zero_dropped(clip_pooled, keep_clip_text)
        image = _zero_dropped(clip_image, keep_clip_image)
        null = param(self, "null_token", nn.initializers.normal(0.02), (self.width,), ("embed",))
        context = jnp.concatenate([
            self._project(clip, "clip_text"),
            self._project(t5, "t5"),
            self._project(image, "clip_image")[:, None],
            jnp.broadcast_to(null.astype(self.dtype), (b, 1, self.width)),
        ], axis=1)
        class_vector = jnp.concatenate([pooled.astype(jnp.float32), image.astype(jnp.float32)], axis=-1)
        return context, class_vector
