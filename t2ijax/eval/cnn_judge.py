"""The CNN Shapes judge: a second judge, learned, independent of the programmatic one (`t2ijax.eval.judge`).

The programmatic judge fits shape templates to colour patches. This one shares none of its method: a small
convolutional network (`t2ijax.models.shapes_judge_net`, trained by ``configs/shapes_judge.py`` on
augmented train-split renders, `t2ijax.eval.cnn_judge_data`) labels every pixel with a colour, a shape
(or "not a shape"), a size and its object's box. Objects are then read off the labels:

  1. Pixels take their most likely colour; background pixels are dropped.
  2. Neighbouring pixels (4-connected) of one colour belong to one object when the box centres they vote
     for (pixel centre + predicted box distances) are within VOTE_LINK pixels: two touching objects of one
     colour are one patch but vote for centres an object apart, so the link between them breaks.
  3. Small groups are not marks: under MIN_PIXELS pixels on their own (noise), under MIN_PART_PIXELS when
     they touch another group (a fringe of an object's edge, labelled with a neighbouring colour, or cut off
     by disagreeing votes at a corner). The smallest object, a small triangle, covers about 20 pixels.
  4. Each group's shape and size are the argmax of its pixels' mean logits. When "not a shape" wins (bars,
     stretched ellipses, blobs) the group is rejected: it answers no question and is not counted, as with the
     programmatic judge. Otherwise its box is the mean of its pixels' predicted boxes (sub-pixel, unlike the
     bounding box of the group's pixels), its centre the box centre, its `fit` the mean probability of its
     shape.

The network reads 32 px; a 64 px image (any multiple of 32) is area-downsampled to 32 px first, and the
boxes are scaled back. VOTE_LINK, MIN_PIXELS and MIN_PART_PIXELS were chosen on train-split renders
(``experiments/judge/cnn_judge_accuracy.py --split train``).

    from t2ijax.eval import cnn_judge, judge
    cnn = cnn_judge.load()                     # the committed weights (assets/cnn_judge.safetensors)
    detections = cnn.detect(image)             # uint8 (H, W, 3) or float [-1, 1]; H = W = 32 or 64
    per_image = cnn.detect_batch(images)       # one network call per batch of up to MAX_BATCH images
    answers = [judge.answer(q, detections) for q in questions]
    vqa = judge.JudgeVQA(questions, detector=cnn.detect)   # vqa(image, question text) -> "yes" | "no"

`cnn_judge.detect` (the committed weights) is the detector `t2ijax.eval.evaluate` uses for ``judge="cnn"``.

Measured (``python experiments/judge/cnn_judge_accuracy.py --num_scenes 150``, 2026-12-01): on validation-
split `shapes_stress.realistic` renders at 32 and 64 px, blur sigma 0 / 0.5 / 0.8 / 1.2, 100.0% of the
answers match the truth in every question category; 0% of bars and 3:1 ellipses are accepted as objects
(lobed blobs are compact patches and are accepted as the shape they resemble, 80-97%, as by the programmatic
judge). On the definitions' sweep the circle / square line falls at superellipse n = 3 (68% circle) and the
stretched line at aspect 1.5 (ellipses 53%, rectangles 50% kept).

Weights: a flat safetensors file ("in_a/kernel", ...; never pickle) and a JSON file beside it with the
network's config, the class order and the training run. ``python -m t2ijax.eval.cnn_judge export
--workdir=runs/shapes_judge`` writes both from a training run's latest checkpoint (EMA params).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from t2ijax.config_utils import config_to_dict
from t2ijax.data import shapes
from t2ijax.eval.cnn_judge_data import area_downsample
from t2ijax.eval.judge import Detection
from t2ijax.models.shapes_judge_net import (BOX_SCALE, INPUT_RESOLUTION, NOT_A_SHAPE, ShapesJudgeNet,
                                            split_heads)

DEFAULT_WEIGHTS = os.path.join(os.path.dirname(__file__), "assets", "cnn_judge.safetensors")
VOTE_LINK = 1.5  # pixels (of the 32 px input) between the box-centre votes of two linked neighbours
MIN_PIXELS = 6  # pixels (of the 32 px input) of the smallest group that is a mark
MIN_PART_PIXELS = 12  # the same for a group that touches another group
MAX_BATCH = 64  # images per network call
_CLASSES = {"colours": list(shapes.COLOURS), "shapes": list(shapes.SHAPES), "sizes": list(shapes.SIZES)}
_CONTRACT = {**_CLASSES, "input_resolution": INPUT_RESOLUTION, "box_scale": BOX_SCALE}  # what weights assume
_SHAPE_CLASSES = (*shapes.SHAPES, "not a shape")  # the shape head's classes


@dataclasses.dataclass(frozen=True)
class Instance:
    """One group of pixels read off the network's labels, and the verdict on it."""

    detection: Detection  # as the most likely of circle / square / triangle
    shape_probs: dict  # circle, square, triangle, "not a shape" -> probability (softmax of the mean logits)
    rejected: bool  # "not a shape" won: not a Shapes object


def _metadata_path(weights_path: str) -> str:
    return os.path.splitext(weights_path)[0] + ".json"


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def network_input(images) -> tuple[np.ndarray, float]:
    """(N, 32, 32, 3) float32 in [-1, 1] and the factor from input pixels to image pixels, for uint8 or
    float [-1, 1] images (H, W, 3) or (N, H, W, 3) with H = W a multiple of 32."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2] or x.shape[1] % INPUT_RESOLUTION:
        raise ValueError(f"the CNN judge reads square RGB images of a multiple of {INPUT_RESOLUTION} px, "
                         f"(H, W, 3) or (N, H, W, 3); got shape {x.shape}")
    if np.issubdtype(x.dtype, np.floating):
        x = np.clip(x.astype(np.float32), -1.0, 1.0)
    else:
        x = x.astype(np.float32) / 127.5 - 1.0
    factor = x.shape[1] // INPUT_RESOLUTION
    return area_downsample(x, factor), float(factor)


def _groups(colour: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """(H, W) group id per pixel, -1 on the background: 4-neighbours of one colour whose votes agree."""
    h, w = colour.shape
    ids = np.arange(h * w).reshape(h, w)
    src, dst = [], []
    for a, b in (((slice(None), slice(0, -1)), (slice(None), slice(1, None))),
                 ((slice(0, -1), slice(None)), (slice(1, None), slice(None)))):
        linked = ((colour[a] > 0) & (colour[a] == colour[b])
                  & (np.linalg.norm(votes[a] - votes[b], axis=-1) < VOTE_LINK))
        src.append(ids[a][linked])
        dst.append(ids[b][linked])
    src, dst = np.concatenate(src), np.concatenate(dst)
    graph = sparse.coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(h * w, h * w))
    _, group = csgraph.connected_components(graph, directed=False)
    return np.where(colour > 0, group.reshape(h, w), -1)


def _touches_another(member: np.ndarray, group: np.ndarray) -> bool:
    """Whether any 8-neighbour of the group's pixels belongs to another group."""
    ring = ndimage.binary_dilation(member, structure=np.ones((3, 3), bool)) & ~member
    return bool(np.any(group[ring] >= 0))


def read_instances(outputs: np.ndarray, factor: float) -> list[Instance]:
    """The groups of one image's network outputs (32, 32, channels) as instances, boxes in image pixels
    (input pixels x `factor`), sorted left to right."""
    heads = split_heads(outputs)
    colour = np.argmax(heads["colour"], -1)
    n = colour.shape[0]
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    left, top, right, bottom = np.moveaxis(heads["box"] * BOX_SCALE, -1, 0)
    boxes = np.stack([xs - left, ys - top, xs + right, ys + bottom], -1)
    votes = np.stack([boxes[..., 0] + boxes[..., 2], boxes[..., 1] + boxes[..., 3]], -1) / 2
    group = _groups(colour, votes)
    out = []
    for g in np.unique(group[group >= 0]):
        member = group == g
        pixels = int(member.sum())
        if pixels < MIN_PIXELS or (pixels < MIN_PART_PIXELS and _touches_another(member, group)):
            continue
        shape_probs = _softmax(heads["shape"][member].mean(0))
        best = int(np.argmax(shape_probs[:NOT_A_SHAPE]))
        size = shapes.SIZES[int(np.argmax(heads["size"][member].mean(0)))]
        x0, y0, x1, y1 = (float(v) * factor for v in boxes[member].mean(0))
        detection = Detection(colour=shapes.COLOURS[int(colour[member][0]) - 1], shape=shapes.SHAPES[best], size=size,
                              box=(x0, y0, x1, y1), centre=((x0 + x1) / 2, (y0 + y1) / 2),
                              area=pixels * factor * factor, fit=float(shape_probs[best]))
        out.append(Instance(detection, {k: float(p) for k, p in zip(_SHAPE_CLASSES, shape_probs)},
                            rejected=int(np.argmax(shape_probs)) == NOT_A_SHAPE))
    return sorted(out, key=lambda i: i.detection.centre)


class CNNJudge:
    """A loaded CNN judge (see the module doc); build it with `load`."""

    def __init__(self, network: ShapesJudgeNet, params, metadata: dict):
        self.network, self.params, self.metadata = network, params, metadata
        self._apply = jax.jit(lambda p, x: network.apply({"params": p}, x))

    def outputs(self, images) -> tuple[np.ndarray, float]:
        """Network outputs (N, 32, 32, channels) for a batch of images, MAX_BATCH per call (the last call
        padded to a power of two so that few shapes compile), and the input-to-image pixel factor."""
        x, factor = network_input(images)
        chunks = []
        for start in range(0, len(x), MAX_BATCH):
            chunk = x[start:start + MAX_BATCH]
            padded = 1 << (len(chunk) - 1).bit_length()
            chunk = np.concatenate([chunk, np.zeros((padded - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            chunks.append(np.asarray(self._apply(self.params, jnp.asarray(chunk)))[:min(MAX_BATCH, len(x) - start)])
        return np.concatenate(chunks), factor

    def analyse_batch(self, images) -> list[list[Instance]]:
        """Every group of every image, accepted or rejected."""
        outputs, factor = self.outputs(images)
        return [read_instances(o, factor) for o in outputs]

    def detect_batch(self, images) -> list[list[Detection]]:
        """The Shapes objects of each image (N, H, W, 3), sorted left to right."""
        return [[i.detection for i in found if not i.rejected] for found in self.analyse_batch(images)]

    def detect(self, image) -> list[Detection]:
        """The Shapes objects of one image (H, W, 3), sorted left to right."""
        image = np.asarray(image)
        if image.ndim != 3:
            raise ValueError(f"detect takes one (H, W, 3) image, got shape {image.shape}; use detect_batch")
        return self.detect_batch(image[None])[0]


def _read_metadata(path: str) -> dict:
    meta_path = _metadata_path(path)
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{meta_path} not found: the CNN judge's weights {path} need their JSON beside them")
    with open(meta_path) as f:
        metadata = json.load(f)
    contract = {k: metadata.get(k) for k in _CONTRACT}
    if contract != _CONTRACT:
        raise ValueError(f"{meta_path} was trained for {contract}, but this code reads {_CONTRACT}")
    return metadata


@functools.lru_cache(maxsize=4)
def load(path: str | None = None) -> CNNJudge:
    """The CNN judge from `path` (default: the committed DEFAULT_WEIGHTS) and the JSON beside it. Loading is
    strict: a missing, unexpected or mis-shaped tensor is an error naming it."""
    from safetensors.numpy import load_file

    path = os.path.abspath(path or DEFAULT_WEIGHTS)
    metadata = _read_metadata(path)
    network = ShapesJudgeNet(**metadata["model"])
    abstract = nn.meta.unbox(jax.eval_shape(network.init, jax.random.PRNGKey(0),
                                            jnp.zeros((1, INPUT_RESOLUTION, INPUT_RESOLUTION, 3)))["params"])
    expected = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(abstract, sep="/").items()}
    tensors = load_file(path)
    problems = [f"missing {k} {expected[k]}" for k in sorted(set(expected) - set(tensors))]
    problems += [f"unexpected {k} {tensors[k].shape}" for k in sorted(set(tensors) - set(expected))]
    problems += [f"{k}: file {tensors[k].shape}, network {expected[k]}" for k in sorted(set(expected) & set(tensors))
                 if tuple(tensors[k].shape) != tuple(expected[k])]
    if problems:
        raise ValueError(f"{path} does not match the network of {_metadata_path(path)}: " + "; ".join(problems))
    params = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in tensors.items()}, sep="/")
    return CNNJudge(network, params, metadata)


def detect(image) -> list[Detection]:
    """`CNNJudge.detect` with the committed weights."""
    return load().detect(image)


def detect_batch(images) -> list[list[Detection]]:
    """`CNNJudge.detect_batch` with the committed weights."""
    return load().detect_batch(images)


def export(workdir: str, path: str | None = None, *, ema: bool = True) -> str:
    """Write the latest checkpoint of a ``configs/shapes_judge.py`` run (EMA params when `ema` and present) as
    the judge's safetensors file + JSON (default: DEFAULT_WEIGHTS). Returns the safetensors path."""
    from safetensors.numpy import save_file

    from t2ijax.train.sampling import config_from_workdir, load_for_inference

    config = config_from_workdir(workdir)
    if config.method != "shapes_judge":
        raise ValueError(f"{workdir} is a {config.method!r} run; the CNN judge is exported from a shapes_judge run")
    _, params, _, _ = load_for_inference(config, workdir, ema=ema)
    path = os.path.abspath(path or DEFAULT_WEIGHTS)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tensors = {k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
    save_file(tensors, path)
    os.chmod(path, 0o644)  # safetensors writes 0600; the file is a package asset, read by everyone
    metadata = {
        "model": {"widths": list(config.model.widths), "deep_convs": int(config.model.deep_convs)},
        **_CONTRACT,
        "training": _training_record(workdir, config, ema),
    }
    with open(_metadata_path(path), "w") as f:
        json.dump(metadata, f, indent=2)
    return path


def _training_record(workdir: str, config, ema: bool) -> dict:
    """What produced the weights: config essentials and the last logged metrics of the run."""
    last = {}
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            for line in f:
                row = json.loads(line)
                if "loss" in row:
                    last = row
    return {"config": "configs/shapes_judge.py", "total_steps": int(config.total_steps),
            "batch_size": int(config.batch_size), "ema": ema and float(config.get("ema_decay", 0.0)) > 0,
            "ema_decay": float(config.get("ema_decay", 0.0)), "data": config_to_dict(config.data),
            "last_logged": last}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m t2ijax.eval.cnn_judge",
                                     description="Export a configs/shapes_judge.py run as the CNN judge's weights.")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="latest checkpoint of --workdir -> safetensors + JSON")
    exp.add_argument("--workdir", required=True)
    exp.add_argument("--out", default=None, help=f"safetensors path (default {DEFAULT_WEIGHTS})")
    exp.add_argument("--no_ema", action="store_true", help="export the raw params instead of the EMA copy")
    args = parser.parse_args(argv)
    print(export(args.workdir, args.out, ema=not args.no_ema))


if __name__ == "__main__":
    main()
