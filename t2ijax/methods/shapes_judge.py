"""Training method of the CNN Shapes judge (`t2ijax.eval.cnn_judge`): per-pixel segmentation of Shapes renders.

Data: ``config.data.name = "shapes_judge"`` (`t2ijax.eval.cnn_judge_data`). Model: `ShapesJudgeNet` with
``config.model.widths`` / ``deep_convs``. Loss, each term a mean over the pixels it is
defined on: cross-entropy of the colour (over every pixel, plus again over the pixels of marks), of the
shape (pixels of any mark: circle, square, triangle or not a shape), of the size (pixels of Shapes
objects), plus ``config.model.box_weight`` x the Huber error (L1 beyond BOX_HUBER, quadratic below it) of
the four box distances (pixels of Shapes objects).

The second colour term matters: marks cover about a fifth of the pixels, so a colour loss over every pixel
alone gives the marks' colours a fifth of the weight of their shapes: so trained, the colour head stayed near
chance among the six colours for 700 steps (0.88 pixel accuracy, shapes already at 0.99), while alone it
learns them in 50 steps. The Huber box loss lets the box gradient fade as the boxes become right.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from t2ijax.models.shapes_judge_net import INPUT_RESOLUTION, ShapesJudgeNet, split_heads

BOX_HUBER = 0.1  # box error (in BOX_SCALE units: 1.6 px of the 32 px input) below which the loss is quadratic


def _masked_mean(values, mask):
    mask = mask.astype(jnp.float32)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _cross_entropy(logits, labels):
    """Per-pixel cross-entropy; labels < 0 (undefined pixels) are clipped and must be masked by the caller."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))


def make_network(model_config, dtype=jnp.float32) -> ShapesJudgeNet:
    return ShapesJudgeNet(widths=tuple(int(w) for w in model_config.widths), deep_convs=int(model_config.deep_convs),
                          dtype=dtype)


class ShapesJudgeMethod:
    """Method interface (t2ijax.train.method) for `ShapesJudgeNet`."""

    def __init__(self, config):
        self.module = make_network(config.model, jnp.dtype(config.compute_dtype))
        self.box_weight = float(config.model.box_weight)
        self.flops_per_example = 3.0 * self.module.forward_flops()

    def init(self, rng, config):
        return self.module.init(rng, jnp.zeros((1, INPUT_RESOLUTION, INPUT_RESOLUTION, 3)))["params"]

    def frozen(self, config):
        return {}

    def loss(self, params, frozen, batch, rng):
        heads = split_heads(self.module.apply({"params": params}, batch["image"]))
        marked, is_object = batch["shape"] >= 0, batch["size"] >= 0
        colour_ce = _cross_entropy(heads["colour"], batch["colour"])
        colour = jnp.mean(colour_ce) + _masked_mean(colour_ce, marked)
        shape = _masked_mean(_cross_entropy(heads["shape"], batch["shape"]), marked)
        size = _masked_mean(_cross_entropy(heads["size"], batch["size"]), is_object)
        box_error = optax.huber_loss(heads["box"], batch["box"], delta=BOX_HUBER) / BOX_HUBER
        box = _masked_mean(jnp.sum(box_error, -1), is_object)
        loss = colour + shape + size + self.box_weight * box
        return loss, {
            "colour_loss": colour, "shape_loss": shape, "size_loss": size, "box_loss": box,
            "colour_accuracy": jnp.mean(jnp.argmax(heads["colour"], -1) == batch["colour"]),
            "shape_accuracy": _masked_mean(jnp.argmax(heads["shape"], -1) == batch["shape"], marked),
        }


def make_method(config) -> ShapesJudgeMethod:
    return ShapesJudgeMethod(config)
