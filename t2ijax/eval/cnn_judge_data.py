"""Training data of the CNN Shapes judge (``config.data.name = "shapes_judge"``): augmented renders of Shapes
scenes with per-pixel targets, generated on the fly.

The benchmark's definitions, which the data teaches (the programmatic judge, `t2ijax.eval.judge`, implements
the same ones by its own method):

  circle / square  the axis-aligned superellipses |x/a|^n + |y/a|^n <= 1 (`shapes.superellipse_inside`) go from the
                   circle (n = 2) to the square (n = inf); below n = SQUARE_EXPONENT (3) a superellipse is a
                   circle, above it a square. Circles are drawn with n uniform in CIRCLE_EXPONENT ([2, 2.6]),
                   squares with 1/n uniform in [0, 1/3.6] (SQUARE_EXPONENT_MIN): the band around 3 is never
                   trained on, so that neither side pulls the line.
  triangle         apex up, isoceles (`shapes.shape_inside`), with corners Minkowski-rounded by a radius up to
                   MAX_ROUNDING of its side (a smaller triangle dilated by a disc; `shapes.rounded_triangle_inside`).
  not a shape      a stretched patch, principal standard deviations more than 1.5 apart (bars, 2:1 or longer
                   ellipses and rectangles, lumpy elongated patches, two objects merged side by side), or a
                   thin mark. A lumpy, rounded or wobbly compact patch IS a shape: the one it most resembles
                   (lobed blobs are not negatives and are not trained on).

Each example is one scene of the loader's split (training uses "train" only; validation and test scenes
are never trained on), drawn at a resolution picked from ``data.resolutions`` (32 and 64 px) the way
generated images look: every object moved by a sub-pixel offset (`shapes_stress.jittered`), given a side
anywhere in SIZE_SCALE of its size's side (generated objects come in every size; it grows at most until it
touches its nearest neighbour), stretched by up to ``aspect_max`` along one axis, rotated by up to
``rotation_max`` degrees, given with probability ``variation_prob`` its shape's variation above (a
superellipse exponent, rounded triangle corners), with probability ``wobble_prob`` a wobbly outline (the
sample points displaced by a smooth random field, amplitude up to ``wobble_max`` of the side, before the
inside test), with probability ``unevenness_prob`` an uneven colour (a smooth field of up to
``unevenness_max`` per channel), drawn in a shifted colour, anti-aliased, then blurred (sigma uniform in
[0, ``blur_max``] pixels of that resolution), noised, and JPEG-compressed with 4:4:4 or 4:2:0 chroma. Every
object's colour is redrawn uniformly from the palette with probability ``recolour_prob``: the train split
never pairs red with triangle, blue with circle, yellow with square or purple with triangle
(`shapes.HELD_OUT_PAIRS`), and a judge that never saw those pairs reads them worse; layouts stay the train
split's.

Negatives teach rejection: each object is replaced, with probability ``not_a_shape_prob``, by one of
NOT_A_SHAPE_KINDS of its colour over its box: a bar (short / long side 0.2-0.34), a stretched ellipse (aspect
2-4), a stretched patch (a wobbly superellipse of any exponent, aspect 1.6-3.5, at any angle) or a merged
pair (two wobbly, rounded squares or triangles of its colour overlapping by 20-50%); a stretched patch or
merged pair whose drawn coverage has principal standard deviations less than MIN_ELONGATION apart stays the
object instead. With probability ``touching_prob`` a second object of one object's colour is put against it
(gap -0.5 to 1.5 px) and both stay objects, so that touching objects of one colour are told from merged ones.

The network always reads 32 px: a 64 px render is area-downsampled (2 x 2 means) to 32 px, as
`t2ijax.eval.cnn_judge` does at inference. Targets are on the 32 px grid, from each mark's coverage of a
pixel (16 sample points, covered when >= 0.5; a later mark overrides an earlier one, as when drawing):
colour (0 background, k the colour ``shapes.COLOURS[k-1]``), shape (`shapes.SHAPES` index or NOT_A_SHAPE;
-1 on the background), size (`shapes.SIZES` index; -1 where there is no Shapes object) and box (distances
from the pixel centre to the object's box edges left, top, right, bottom, in `BOX_SCALE` pixels; read
where size >= 0).

Batches: "image" (B, 32, 32, 3) float32 in [-1, 1], "colour", "shape", "size" (B, 32, 32) int32, "box"
(B, 32, 32, 4) float32, "example_id" (B,) int32. Example i of a loader is a pure function of (seed, split,
i, data config); batch n of shard s holds examples ``(n * shard_count + s) * batch_size + j``.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections
import numpy as np

from t2ijax.data import shapes
from t2ijax.data.procedural import ProceduralLoader
from t2ijax.eval import shapes_stress as st
from t2ijax.models.shapes_judge_net import BOX_SCALE, INPUT_RESOLUTION, NOT_A_SHAPE

SQUARE_EXPONENT = 3.0  # superellipse exponent between circles (below) and squares (above); never trained on
CIRCLE_EXPONENT = (2.0, 2.6)  # exponents drawn for circles
SQUARE_EXPONENT_MIN = 3.6  # squares: 1 / n uniform in [0, 1 / SQUARE_EXPONENT_MIN]
MAX_ROUNDING = 0.2  # triangle corner radius / side
# Object sides drawn as the size's side times a factor in this range: generated objects come in every size in
# between, and a judge that saw only the two (a first run) rejected a clean 9 px square at 32 px. The ranges
# stop short of the midpoint between the two sides, where the size label flips.
SIZE_SCALE = {"small": (0.8, 1.25), "large": (0.8, 1.2)}
NOT_A_SHAPE_KINDS = ("bar", "ellipse", "stretched", "merged")
STRETCH = {"bar": (1 / 0.34, 1 / 0.2), "ellipse": (2.0, 4.0), "stretched": (1.6, 3.5)}  # long / short side
MERGED_OVERLAP = (0.2, 0.5)  # of the smaller side
# Stretched patches and merged pairs are negatives only when the principal standard deviations of what is drawn
# are at least this far apart (the line is 1.5; objects reach 1.33, a triangle stretched by aspect_max).
MIN_ELONGATION = 1.65
TOUCHING_GAP = (-0.5, 1.5)  # pixels between a touching pair's boxes (negative: overlapping)
TARGET_SUPERSAMPLE = 4
NONE = "none"  # Mark.kind of a mark that is not a Shapes object


def data_config(**overrides) -> ml_collections.ConfigDict:
    """The data config of the CNN judge (`configs/shapes_judge.py`); every field is read by the loader."""
    c = dict(name="shapes_judge", seed=0, resolutions=[32, 64], blur_max=1.5, noise_max=10.0,
             colour_shift_max=20.0, jpeg_prob=0.75, jpeg_quality=[50, 95], chroma_subsampling_prob=0.5,
             recolour_prob=0.5, aspect_max=1.15, rotation_max=10.0, variation_prob=0.75, wobble_prob=0.7,
             wobble_max=0.08,
             unevenness_prob=0.5, unevenness_max=20.0, not_a_shape_prob=0.25, touching_prob=0.15)
    c.update(overrides)
    return ml_collections.ConfigDict(c)


# ---------------------------------------------------------------------------------------------- geometry

def smooth_field(seed, u, v, channels: int, *, waves: int = 3) -> list[np.ndarray]:
    """`channels` smooth random fields in [-1, 1] at points (u, v) (units of a half side): each a sum of `waves`
    plane waves with random directions, phases and wavelengths of 0.6 to 2 sides."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(channels):
        weights = rng.uniform(0.3, 1.0, waves)
        field = 0.0
        for weight in weights / weights.sum():
            angle, phase, k = rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi), rng.uniform(1.5, 5.0)
            field = field + weight * np.sin(k * (np.cos(angle) * u + np.sin(angle) * v) + phase)
        out.append(field)
    return out


@dataclasses.dataclass(frozen=True)
class Mark:
    """One thing drawn in a training image: a Shapes object (kind in shapes.SHAPES) or not (kind NONE).

    The outline is a superellipse of `exponent` inscribed in `box` or (outline "triangle") the apex-up triangle
    of `box` with corners rounded by `rounding` x its shorter side; rotated by `angle` (radians) about the box
    centre, then deformed by a smooth random field of amplitude `wobble` x the shorter side. The colour is
    `rgb` (default the palette's) plus a smooth field of up to `unevenness` per channel. The box is the
    object's box target whatever the wobble."""

    kind: str
    colour: str
    box: tuple[float, float, float, float]
    size: str = ""
    rgb: tuple[float, float, float] | None = None
    outline: str = "superellipse"
    exponent: float = 2.0
    rounding: float = 0.0
    angle: float = 0.0
    wobble: float = 0.0
    unevenness: float = 0.0
    seed: int = 0

    def _frame(self):
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2, min(x1 - x0, y1 - y0) / 2

    def inside(self, py, px) -> np.ndarray:
        py, px = np.broadcast_arrays(np.asarray(py, np.float32), np.asarray(px, np.float32))
        cx, cy, half = self._frame()
        if self.angle:
            c, s = math.cos(self.angle), math.sin(self.angle)
            px, py = cx + c * (px - cx) + s * (py - cy), cy - s * (px - cx) + c * (py - cy)
        if self.wobble > 0:
            dx, dy = smooth_field([self.seed, 1], (px - cx) / half, (py - cy) / half, 2)
            px, py = px + self.wobble * 2 * half * dx, py + self.wobble * 2 * half * dy
        if self.outline == "triangle":
            return shapes.rounded_triangle_inside(self.box, self.rounding * 2 * half, py, px)
        return shapes.superellipse_inside(self.box, self.exponent, py, px)

    def colour_at(self, py, px) -> np.ndarray:
        """(..., 3) colour at points (py, px) (broadcastable)."""
        py, px = np.broadcast_arrays(np.asarray(py, np.float32), np.asarray(px, np.float32))
        rgb = np.asarray(self.rgb if self.rgb is not None else shapes.PALETTE[self.colour], np.float32)
        if self.unevenness <= 0:
            return np.broadcast_to(rgb, (*py.shape, 3))
        cx, cy, half = self._frame()
        field = np.stack(smooth_field([self.seed, 2], (px - cx) / half, (py - cy) / half, 3), -1)
        return np.clip(rgb + self.unevenness * field, 0, 255)


def coverage(mark: Mark, resolution: int, supersample: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """The window of a `resolution` x `resolution` image that can hold `mark` and the fraction of each of its
    pixels' `supersample` x `supersample` sample points that the mark covers."""
    x0, y0, x1, y1 = mark.box
    cx, cy, half = mark._frame()
    reach = mark.wobble * 2 * half + 1.0
    if mark.angle:
        radius = math.hypot(x1 - x0, y1 - y0) / 2
        x0, y0, x1, y1 = cx - radius, cy - radius, cx + radius, cy + radius
    wx0, wy0 = max(int(math.floor(x0 - reach)), 0), max(int(math.floor(y0 - reach)), 0)
    wx1, wy1 = min(int(math.ceil(x1 + reach)), resolution), min(int(math.ceil(y1 + reach)), resolution)
    window = (slice(wy0, max(wy1, wy0)), slice(wx0, max(wx1, wx0)))
    if wx1 <= wx0 or wy1 <= wy0:
        return window, np.zeros((max(wy1 - wy0, 0), max(wx1 - wx0, 0)), np.float32)
    py, px = shapes.sample_points(wy1 - wy0, wx1 - wx0, origin=(wx0, wy0), supersample=supersample)
    return window, shapes.pixel_fraction(mark.inside(py, px), supersample)


def draw(marks, resolution: int, *, supersample: int = 8) -> np.ndarray:
    """Anti-aliased (H, W, 3) uint8 image of `marks` on the white background (as `shapes_stress.draw`, with
    each mark's colour field read at the pixel centres)."""
    image = np.empty((resolution, resolution, 3), np.float32)
    image[...] = shapes.BACKGROUND_RGB
    for mark in marks:
        window, cover = coverage(mark, resolution, supersample)
        if cover.size:
            cy, cx = shapes.sample_points(*cover.shape, origin=(window[1].start, window[0].start))
            image[window] = image[window] * (1.0 - cover[..., None]) + mark.colour_at(cy, cx) * cover[..., None]
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def elongation(cover: np.ndarray) -> float:
    """Ratio of the principal standard deviations of a coverage map (1 for a disc or a square)."""
    ys, xs = np.nonzero(cover > 0)
    weights = cover[ys, xs]
    if len(ys) < 3:
        return float("inf")
    cov = np.cov(np.stack([xs, ys]).astype(np.float64), aweights=weights, bias=True)
    low, high = np.linalg.eigvalsh(cov)
    return float(np.sqrt(high / max(low, 1e-9)))


# ------------------------------------------------------------------------------------------------ marks

def _recoloured(scene: shapes.Scene, rng: np.random.Generator, probability: float) -> shapes.Scene:
    """The scene with each object's colour redrawn uniformly from the palette with `probability`."""
    objects = tuple(dataclasses.replace(o, colour=shapes.COLOURS[int(rng.integers(len(shapes.COLOURS)))])
                    if rng.random() < probability else o for o in scene.objects)
    return dataclasses.replace(scene, objects=objects)


def _square_exponent(rng: np.random.Generator) -> float:
    inverse = rng.uniform(0.0, 1.0 / SQUARE_EXPONENT_MIN)
    return math.inf if inverse < 1e-3 else 1.0 / inverse


def _room(boxes) -> list[float]:
    """For each box, half the largest gap that separates it from its nearest neighbour box (how far each of two
    neighbours may grow before they touch); inf for a lone box."""
    out = []
    for i, a in enumerate(boxes):
        gaps = [max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3]) for j, b in enumerate(boxes) if j != i]
        out.append(min(gaps) / 2 if gaps else math.inf)
    return out


def _object(kind: str, colour: str, box, size: str, rgb, rng: np.random.Generator, data, *,
            scale: bool = True, room: float = math.inf) -> Mark:
    """A Shapes object of `kind` over `box` (scaled about its centre by SIZE_SCALE[size] when `scale`, growing
    by at most `room` pixels on each side), given the data config's variations (see the module doc)."""
    x0, y0, x1, y1 = box
    f = rng.uniform(*SIZE_SCALE[size]) if scale and size else 1.0
    f = min(f, 1.0 + 2 * max(room, 0.0) / (x1 - x0))
    stretch = math.exp(rng.uniform(-1, 1) * math.log(float(data.aspect_max)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw, hh = (x1 - x0) / 2 * f * math.sqrt(stretch), (y1 - y0) / 2 * f / math.sqrt(stretch)
    vary = rng.random() < float(data.variation_prob)
    outline, exponent, rounding = "superellipse", 2.0, 0.0
    if kind == "circle":
        exponent = rng.uniform(*CIRCLE_EXPONENT) if vary else 2.0
    elif kind == "square":
        exponent = _square_exponent(rng) if vary else math.inf
    else:
        outline, rounding = "triangle", (rng.uniform(0.0, MAX_ROUNDING) if vary else 0.0)
    wobble = rng.uniform(0.0, float(data.wobble_max)) if rng.random() < float(data.wobble_prob) else 0.0
    uneven = rng.uniform(0.0, float(data.unevenness_max)) if rng.random() < float(data.unevenness_prob) else 0.0
    angle = math.radians(rng.uniform(-1, 1) * float(data.rotation_max))
    return Mark(kind, colour, (cx - hw, cy - hh, cx + hw, cy + hh), size, rgb, outline, exponent, rounding,
                angle, wobble, uneven, int(rng.integers(2**31)))


def _stretched_box(box, aspect: float, vertical: bool):
    x0, y0, x1, y1 = box
    cx, cy, long = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0
    thin = long / aspect
    return (cx - thin / 2, y0, cx + thin / 2, y1) if vertical else (x0, cy - thin / 2, x1, cy + thin / 2)


def _not_a_shape(mark: Mark, kind: str, rng: np.random.Generator, data, resolution: int) -> list[Mark]:
    """The marks of a not-a-shape of `kind` (NOT_A_SHAPE_KINDS) of the object's colour over its box; [mark]
    when what would be drawn is not stretched enough (MIN_ELONGATION)."""
    base = dict(colour=mark.colour, rgb=mark.rgb, seed=int(rng.integers(2**31)),
                unevenness=mark.unevenness, wobble=0.0)
    vertical = bool(rng.integers(2))
    if kind in ("bar", "ellipse"):
        box = _stretched_box(mark.box, rng.uniform(*STRETCH[kind]), vertical)
        return [Mark(NONE, box=box, exponent=math.inf if kind == "bar" else 2.0, **base)]
    if kind == "stretched":
        x0, y0, x1, y1 = mark.box
        f = rng.uniform(0.9, 1.3)  # long side against the object's side
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * f / 2
        box = _stretched_box((cx - half, cy - half, cx + half, cy + half), rng.uniform(*STRETCH[kind]), vertical)
        base.update(wobble=rng.uniform(0.0, float(data.wobble_max)))
        parts = [Mark(NONE, box=box, exponent=1.0 / rng.uniform(0.0, 0.5), angle=rng.uniform(0, np.pi), **base)]
    elif kind == "merged":
        parts = _merged_pair(mark, rng, data)
    else:
        raise ValueError(f"unknown not-a-shape kind {kind!r}; expected one of {NOT_A_SHAPE_KINDS}")
    cover = np.zeros((resolution, resolution), np.float32)
    for part in parts:
        window, c = coverage(part, resolution, 2)
        cover[window] = np.maximum(cover[window], c)
    return parts if elongation(cover) >= MIN_ELONGATION else [mark]


def _merged_pair(mark: Mark, rng: np.random.Generator, data) -> list[Mark]:
    """Two rounded squares or triangles of the mark's colour, overlapping side by side over its box."""
    x0, y0, x1, y1 = mark.box
    sides = (x1 - x0) * rng.uniform(0.75, 1.0, 2)
    step = (sides.sum() / 2) - rng.uniform(*MERGED_OVERLAP) * sides.min()  # centre to centre
    angle = rng.uniform(0, np.pi)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    parts = []
    for sign, side in zip((-1, 1), sides):
        px, py = cx + sign * step / 2 * math.cos(angle), cy + sign * step / 2 * math.sin(angle)
        kind_j = "triangle" if rng.random() < 0.3 else "square"
        part = _object(kind_j, mark.colour, (px - side / 2, py - side / 2, px + side / 2, py + side / 2), "",
                       mark.rgb, rng, data, scale=False)
        parts.append(dataclasses.replace(part, kind=NONE))
    return parts


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _touching(marks: list[Mark], rng: np.random.Generator, resolution: int, colour_shift: float, data) -> list[Mark]:
    """`marks` plus a random object of one object's colour against it; unchanged when it would leave the
    image or overlap a third mark."""
    objects = [m for m in marks if m.kind in shapes.SHAPES]
    if not objects:
        return marks
    anchor = objects[int(rng.integers(len(objects)))]
    size = shapes.SIZES[int(rng.integers(2))]
    side = shapes.side_length(size, resolution) * rng.uniform(*SIZE_SCALE[size])
    x0, y0, x1, y1 = anchor.box
    gap = rng.uniform(*TOUCHING_GAP)
    slide = rng.uniform(-0.5, 0.5) * min(side, x1 - x0)
    cx, cy = (x0 + x1) / 2 + slide, (y0 + y1) / 2 + slide
    nx0, ny0 = {0: (x1 + gap, cy - side / 2), 1: (x0 - gap - side, cy - side / 2),
                2: (cx - side / 2, y1 + gap), 3: (cx - side / 2, y0 - gap - side)}[int(rng.integers(4))]
    box = (nx0, ny0, nx0 + side, ny0 + side)
    if min(box) < 0 or max(box) > resolution or any(_overlaps(box, m.box) for m in marks if m is not anchor):
        return marks
    rgb = np.clip(np.asarray(shapes.PALETTE[anchor.colour], np.float32)
                  + rng.uniform(-colour_shift, colour_shift, 3), 0, 255)
    kind = shapes.SHAPES[int(rng.integers(len(shapes.SHAPES)))]
    return marks + [_object(kind, anchor.colour, box, size, tuple(float(v) for v in rgb), rng, data, scale=False)]


def area_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """(..., H, W, C) -> (..., H / factor, W / factor, C): means over factor x factor blocks."""
    if factor == 1:
        return image
    *lead, h, w, c = image.shape
    return image.reshape(*lead, h // factor, factor, w // factor, factor, c).mean(axis=(-4, -2))


def targets(marks, resolution: int) -> dict[str, np.ndarray]:
    """Per-pixel targets on the 32 px grid of marks drawn at `resolution` (see the module doc)."""
    n = INPUT_RESOLUTION
    scale = resolution / n
    centres = np.arange(n, dtype=np.float32) + 0.5
    out = {"colour": np.zeros((n, n), np.int32), "shape": np.full((n, n), -1, np.int32),
           "size": np.full((n, n), -1, np.int32), "box": np.zeros((n, n, 4), np.float32)}
    for mark in marks:
        x0, y0, x1, y1 = (v / scale for v in mark.box)
        window, fraction = coverage(dataclasses.replace(mark, box=(x0, y0, x1, y1)), n, TARGET_SUPERSAMPLE)
        cover = np.zeros((n, n), bool)
        cover[window] = fraction >= 0.5
        out["colour"][cover] = shapes.COLOURS.index(mark.colour) + 1
        if mark.kind in shapes.SHAPES:
            out["shape"][cover] = shapes.SHAPES.index(mark.kind)
            out["size"][cover] = shapes.SIZES.index(mark.size)
            distances = np.stack(np.broadcast_arrays(centres[None, :] - x0, centres[:, None] - y0,
                                                     x1 - centres[None, :], y1 - centres[:, None]), -1)
            out["box"][cover] = distances[cover] / BOX_SCALE
        else:
            out["shape"][cover] = NOT_A_SHAPE
            out["size"][cover] = -1
    return out


def example_marks(data, split: str, index: int, rng: np.random.Generator) -> tuple[list[Mark], int, float]:
    """The marks of one training example of scene `index` of `split`, its resolution and colour shift."""
    resolution = int(data.resolutions[int(rng.integers(len(data.resolutions)))])
    if resolution % INPUT_RESOLUTION:
        raise ValueError(f"data.resolutions holds {resolution}: every resolution must be a multiple of "
                         f"{INPUT_RESOLUTION}, the network's input")
    scene = _recoloured(shapes.sample_scene(int(data.seed), split, index, resolution), rng,
                        float(data.recolour_prob))
    colour_shift = rng.uniform(0.0, float(data.colour_shift_max))
    rooms = _room([o.box for o in scene.objects])  # objects may grow until they touch, not overlap
    marks = [_object(m.kind, m.colour, m.box, m.size, m.rgb, rng, data, room=room)
             for m, room in zip(st.jittered(scene, rng, scale=0.0, colour_shift=colour_shift), rooms)]
    out = []
    for m in marks:
        if rng.random() < float(data.not_a_shape_prob):
            out += _not_a_shape(m, NOT_A_SHAPE_KINDS[int(rng.integers(len(NOT_A_SHAPE_KINDS)))], rng, data,
                                resolution)
        else:
            out.append(m)
    if rng.random() < float(data.touching_prob):
        out = _touching(out, rng, resolution, colour_shift, data)
    return out, resolution, colour_shift


def render_example(data, split: str, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One augmented example of scene `index` of `split` (image in [-1, 1] at 32 px and its targets)."""
    marks, resolution, _ = example_marks(data, split, index, rng)
    image = draw(marks, resolution, supersample=max(1, 8 * INPUT_RESOLUTION // resolution))  # 8 x 8 per input px
    jpeg = rng.random() < float(data.jpeg_prob)
    image = st.degrade(image, rng, blur=rng.uniform(0.0, float(data.blur_max)),
                       noise=rng.uniform(0.0, float(data.noise_max)),
                       jpeg_quality=int(rng.integers(data.jpeg_quality[0], data.jpeg_quality[1] + 1)) if jpeg else None,
                       chroma_subsampling=rng.random() < float(data.chroma_subsampling_prob))
    x = area_downsample(image.astype(np.float32) / 127.5 - 1.0, resolution // INPUT_RESOLUTION)
    return {"image": x, **targets(marks, resolution)}


class ShapesJudgeLoader(ProceduralLoader):
    """Infinite iterator of batches (see the module doc) with ``get_state()`` / ``set_state(state)``."""

    def __init__(self, data, *, split: str, batch_size: int, seed: int, shard_index: int = 0, shard_count: int = 1):
        if split not in shapes.SPLITS:
            raise ValueError(f"split={split!r}; choose one of {shapes.SPLITS}")
        super().__init__(batch_size=batch_size, seed=seed, shard_index=shard_index, shard_count=shard_count)
        self.data, self.split = data, split

    def batch(self, n: int) -> dict[str, np.ndarray]:
        ids = self.example_ids(n)
        examples = [render_example(self.data, self.split, int(i),
                                   np.random.default_rng([self.seed, shapes.SPLITS.index(self.split), int(i)]))
                    for i in ids]
        batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
        return {**batch, "example_id": ids}


def make_loader(data_config, *, split: str, batch_size: int, seed: int, shard_index: int = 0,
                shard_count: int = 1) -> ShapesJudgeLoader:
    """The loader factory named by ``config.data.name = "shapes_judge"`` (`t2ijax.train.loop.make_loader`)."""
    return ShapesJudgeLoader(data_config, split=split, batch_size=batch_size, seed=seed, shard_index=shard_index,
                             shard_count=shard_count)
