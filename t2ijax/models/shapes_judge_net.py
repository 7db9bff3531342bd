"""The network of the CNN Shapes judge (`t2ijax.eval.cnn_judge`): a small fully-convolutional encoder-decoder.

It reads a 32 x 32 image in [-1, 1] and predicts, for every pixel, what the pixel belongs to:

  colour  (7 logits)  background or one of the six palette colours (`shapes.COLOURS` order)
  shape   (4 logits)  circle / square / triangle (`shapes.SHAPES` order) or not a shape (bar, stretched patch)
  size    (2 logits)  small / large (`shapes.SIZES` order)
  box     (4 values)  distances from the pixel centre to the left, top, right and bottom edges of the box of
                      the object the pixel belongs to, in units of `BOX_SCALE` pixels

The box distances let every pixel vote for its object's box centre: two touching objects of one colour form
one colour patch, but their pixels vote for centres a whole object apart, which is what separates them.

Layout: two 3x3 convs at 32 px, a stride-2 conv and a conv at 16 px, a stride-2 conv and `deep_convs` convs
at 8 px (the receptive field, about 40 px, covers the whole image, so a pixel at the end of a bar sees that
it is a bar), then nearest-neighbour upsampling with skip connections back to 32 px, a last conv that also
reads the input image, and a 1x1 head. Every conv is followed by SiLU and nothing else.

The shape and box targets do not depend on colour, so the shared features learn to ignore it; the input
image at the last conv gives every pixel its own colour back (colour loss 0.18 vs 0.27 without it in a
135-step trial). The net is shallow enough to train without normalisation layers. Parameters carry logical
axis names (`t2ijax.models.layers`).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from t2ijax.data import shapes
from t2ijax.models import layers

INPUT_RESOLUTION = 32
NOT_A_SHAPE = len(shapes.SHAPES)  # index of the "not a shape" class of the shape head
BOX_SCALE = 16.0  # box distances are predicted in units of this many pixels (of the 32 px input)
HEADS = {"colour": 1 + len(shapes.COLOURS), "shape": len(shapes.SHAPES) + 1, "size": len(shapes.SIZES), "box": 4}


def split_heads(outputs):
    """{"colour", "shape", "size", "box"} slices of the network's last axis (`HEADS` order)."""
    out, start = {}, 0
    for name, width in HEADS.items():
        out[name] = outputs[..., start:start + width]
        start += width
    return out


class ShapesJudgeNet(nn.Module):
    widths: Sequence[int] = (24, 48, 64)  # channels at 32, 16 and 8 px
    deep_convs: int = 3  # convs at 8 px
    dtype: jnp.dtype = jnp.float32

    def _block(self, h, features: int, name: str, stride: int = 1):
        return nn.silu(layers.Conv(features, (3, 3), strides=stride, dtype=self.dtype, name=name)(h))

    @nn.compact
    def __call__(self, images):
        """images (B, 32, 32, 3) in [-1, 1] -> (B, 32, 32, sum(HEADS.values())) float32."""
        w32, w16, w8 = self.widths
        h32 = self._block(self._block(images.astype(self.dtype), w32, "in_a"), w32, "in_b")
        h16 = self._block(self._block(h32, w16, "down16", stride=2), w16, "conv16")
        h = self._block(h16, w8, "down8", stride=2)
        for i in range(self.deep_convs):
            h = self._block(h, w8, f"deep{i}")
        h = self._block(jnp.concatenate([_upsample(h), h16], -1), w16, "up16")
        h = self._block(jnp.concatenate([_upsample(h), h32], -1), w32, "up32")
        h = self._block(jnp.concatenate([h, images.astype(self.dtype)], -1), w32, "out")
        outputs = layers.Conv(sum(HEADS.values()), (1, 1), dtype=self.dtype, name="head")(h)
        return outputs.astype(jnp.float32)

    def forward_flops(self, resolution: int = INPUT_RESOLUTION) -> float:
        """Multiply-adds x 2 of one forward pass on a `resolution` x `resolution` image (convs only)."""
        w32, w16, w8 = self.widths
        at = {1: resolution ** 2, 2: (resolution // 2) ** 2, 4: (resolution // 4) ** 2}
        convs = [  # (pixels, kernel taps, in, out)
            (at[1], 9, 3, w32), (at[1], 9, w32, w32), (at[2], 9, w32, w16), (at[2], 9, w16, w16),
            (at[4], 9, w16, w8), *[(at[4], 9, w8, w8)] * self.deep_convs, (at[2], 9, w8 + w16, w16),
            (at[1], 9, w16 + w32, w32), (at[1], 9, w32 + 3, w32), (at[1], 1, w32, sum(HEADS.values()))]
        return 2.0 * sum(p * k * i * o for p, k, i, o in convs)


def _upsample(h):
    return jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
