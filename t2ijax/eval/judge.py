"""Programmatic judge for Shapes images: find the circles, squares and triangles, answer scene-graph questions.

Detection (`analyse`, `detect`):
  1. Colour: every pixel is explained as white mixed with one palette colour (`unmix`); the mixing weight
     ("ink", 1 inside an object, falling to 0 across a blurred or anti-aliased edge) is what blur changes,
     the colour's direction is not, so edges keep their colour instead of turning into a neighbouring one.
  2. Components: 4-connected pixels of one colour with ink >= 0.5 (the true edge of a shape under any
     symmetric blur); specks are dropped.
  3. Shape: each component's ink (in a window around it, renormalised by its interior level so that pale
     objects weigh fully) is compared with templates of each shape (`TEMPLATES`: the triangle with sharp and
     rounded corners, superellipses from the circle to the square). A template's width and height come
     from the ink mass and second moments, its centre from the ink centroid (all unchanged by blur), its blur
     from the moments too; a small search refines size and blur. The best soft IoU names the shape.
  4. Rejection: a component that is stretched (principal standard deviations of what was drawn, the ink's
     less the fitted blur, more than MAX_ELONGATION apart: bars, 3:1 ellipses, two objects merged side by
     side), that no template fits
     (soft IoU < MIN_FIT), or whose fitted side is implausible for Shapes (SIDE_RANGE) is not an object.
     It answers no question and is not counted: "how many objects?" counts circles, squares and triangles.
     A component that fits nothing but that erosion splits into parts that each fit (touching objects of
     one colour) gives those parts.
  5. Size: the fitted side against the midpoint of the small and large side lengths; the centre is the
     fitted box centre (a triangle's centroid lies below it), the point the captions' relations use.

MIN_FIT and MAX_ELONGATION were calibrated on renders of the train split under the degradations of
`t2ijax.eval.shapes_stress`, never on the test split: `python experiments/judge/calibrate.py` (docs/judge.md
records the run and why the line sits just above what shapeless marks reach rather than just below what
clean renders reach: generated shapes are rounded and lumpy, and are still shapes).

Questions are plain dicts (the structured form of a yes/no question):

  {"type": "exists",   "ref": R}
  {"type": "colour",   "ref": R, "value": "red"}
  {"type": "shape",    "ref": R, "value": "circle"}
  {"type": "size",     "ref": R, "value": "large"}
  {"type": "relation", "ref": R, "relation": "left of", "ref2": R2}
  {"type": "count",    "ref": R, "value": 2}

where a reference R is a dict with any of "colour", "shape", "size" (an empty
dict matches every object). A question is true when some object matching R has
the asked attribute (relation: some pair of distinct matching objects whose centres
are in the relation by `shapes.spatial_relation`, the rule the captions use, with
either axis accepted within RELATION_TIE of the diagonal; count: exactly `value`
objects match R).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import numpy as np
from scipy import ndimage

from t2ijax.data import shapes

QUESTION_TYPES = ("exists", "colour", "shape", "size", "relation", "count")

# Calibrated on train-split renders (experiments/judge/calibrate.py, docs/judge.md).
MIN_FIT = 0.82  # soft IoU below which a component is no shape: 0.03 above 99% of bars and 3:1 ellipses
MAX_ELONGATION = 1.5  # ratio of the ink's principal standard deviations (circle, square 1, triangle 1.15)
SIDE_RANGE = (0.6, 1.45)  # plausible fitted side: from 0.6 x the small side to 1.45 x the large side
# Fixed by construction.
MAX_RESIDUAL = 80.0  # RGB distance from the nearest white-to-colour line beyond which a pixel has no palette colour
MIN_INK = 0.15  # mixing weight under which a pixel takes no colour label
INK_FLOOR = 0.08  # ink under which a window pixel is taken as background noise when fitting
WINDOW_PAD = 3  # pixels around a component that may hold its blurred edge (2.5 sigma at sigma 1.2)
MIN_CORE_FRACTION = 0.3  # a component must cover this fraction of the smallest object (a small triangle)
RELATION_TIE = 0.1  # relations within this of the diagonal accept either axis (shapes.relation_holds)


@dataclasses.dataclass(frozen=True)
class Detection:
    colour: str
    shape: str
    size: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 (exclusive) in pixels
    centre: tuple[float, float]  # x, y: the box centre (the point the captions' relations use)
    area: float  # pixels of ink (blur-invariant mass)
    fit: float  # soft IoU of the fitted shape template, in [0, 1]


@dataclasses.dataclass(frozen=True)
class Component:
    """One connected patch of a palette colour and the judge's verdict on it (`detect` keeps the accepted)."""

    colour: str
    fits: dict  # shape -> soft IoU of its best template
    side: dict  # shape -> fitted side length in pixels
    elongation: float  # ratio of the principal standard deviations of what was drawn (the ink's, less the blur)
    detection: Detection  # as the best-fitting shape
    rejected: str  # "" when accepted, else why it is not a Shapes object


def _as_uint8(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"judge expects an (H, W, 3) image, got shape {image.shape}")
    if np.issubdtype(image.dtype, np.floating):  # [-1, 1] model output
        return np.clip(np.round((image.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return image.astype(np.uint8)


_WHITE = np.asarray(shapes.BACKGROUND_RGB, np.float32)
_INK = np.asarray([shapes.PALETTE[c] for c in shapes.COLOURS], np.float32) - _WHITE  # (K, 3) white -> colour


def unmix(image, max_residual: float = MAX_RESIDUAL) -> tuple[np.ndarray, np.ndarray]:
    """Explain every pixel as white mixed with one palette colour: pixel = white + a * (colour - white).

    Returns (labels (H, W) int: 0 = background or no palette colour within `max_residual`, k >= 1 the colour
    shapes.COLOURS[k - 1]; ink (H, W, K) float32: each colour's mixing weight a, clipped to [0, 1]). Blur, anti-
    aliasing and pale generated colours change a, not the colour's direction, so edges keep their colour.
    """
    q = _as_uint8(image).astype(np.float32) - _WHITE
    a = np.einsum("hwc,kc->hwk", q, _INK) / np.sum(_INK * _INK, axis=1)
    a_pos = np.maximum(a, 0.0)
    residual = np.linalg.norm(q[:, :, None, :] - a_pos[..., None] * _INK, axis=-1)
    residual = np.where(a >= MIN_INK, residual, np.inf)
    labels = np.argmin(residual, axis=-1) + 1
    labels[np.min(residual, axis=-1) > max_residual] = 0
    return labels, np.clip(a, 0.0, 1.0)


# The templates: the apex-up triangle with its corners rounded by 0, 0.1 or 0.2 of its side, and the axis-aligned
# superellipses |x|^n + |y|^n <= 1 between the circle (n = 2) and the square (n = inf). A superellipse with
# n < SQUARE_EXPONENT is a circle, above it a square: generated squares are rounded and generated circles bulge,
# and the exponent that fits best says which they resemble more. Generated triangles are blunt: without the
# rounded templates a blunt triangle fits a circle better than a sharp triangle (docs/judge.md).
SQUARE_EXPONENT = 3.0
ROUND_EXPONENTS = (2.0, 2.4, 2.8, 3.5, 4.5, 7.0, np.inf)
TRIANGLE_ROUNDINGS = (0.0, 0.1, 0.2)  # corner radius / side, as `shapes.rounded_triangle_inside`
TEMPLATES = (tuple(("triangle", r) for r in TRIANGLE_ROUNDINGS)
             + tuple(("circle" if n < SQUARE_EXPONENT else "square", n) for n in ROUND_EXPONENTS))


def _inside(shape: str, variant: float, box, py, px) -> np.ndarray:
    """Inside test of a template: `variant` is the triangle's corner rounding or the superellipse exponent."""
    if shape == "triangle":
        return shapes.rounded_triangle_inside(box, variant * (box[2] - box[0]), py, px)
    return shapes.superellipse_inside(box, variant, py, px)


@functools.lru_cache(maxsize=None)
def _moments(shape: str, variant: float) -> tuple[float, float, float, float]:
    """(area, var_x, var_y, centroid below the box centre) of the template in a unit box, by dense sampling."""
    py, px = shapes.sample_points(1, 1, supersample=512)
    inside = _inside(shape, variant, (0.0, 0.0, 1.0, 1.0), py, px)
    ys, xs = np.broadcast_to(py, inside.shape)[inside], np.broadcast_to(px, inside.shape)[inside]
    return float(inside.mean()), float(xs.var()), float(ys.var()), float(ys.mean() - 0.5)


def _template_box(shape: str, variant: float, width: float, height: float, cx: float, cy: float):
    """The box of a template of `width` x `height` whose centre of mass is (cx, cy)."""
    top = cy - height / 2 - height * _moments(shape, variant)[3]
    return (cx - width / 2, top, cx + width / 2, top + height)


def _coverage(shape: str, variant: float, box, origin, hw) -> np.ndarray:
    """The template's coverage of the window's pixels."""
    py, px = shapes.sample_points(hw[0], hw[1], origin=origin, supersample=4)
    return shapes.pixel_fraction(_inside(shape, variant, box, py, px), 4)


def _extent(mass: float, var_x: float, var_y: float, moments) -> tuple[float, float, float]:
    """(width, height, blur sigma) of a template that has the ink's mass and second moments: width * height *
    area = mass and size^2 * var + sigma^2 = the ink's variance on each axis (blur adds sigma^2 to both),
    solved in closed form. A rectangle generated a little taller than wide fits a stretched square, not a
    circle. The template's aspect is held within MAX_ELONGATION, so that a bar fits nothing well (MIN_FIT);
    how stretched a component may be is the verdict's business (its elongation)."""
    area, vx, vy, _ = moments
    product = mass / area  # width * height
    d = var_x - var_y  # = width^2 vx - height^2 vy, with height = product / width
    width2 = (d + np.sqrt(d * d + 4 * vx * vy * product * product)) / (2 * vx)
    width = float(np.clip(np.sqrt(width2), np.sqrt(product / MAX_ELONGATION), np.sqrt(product * MAX_ELONGATION)))
    height = product / width
    sigma2 = ((var_x - width * width * vx) + (var_y - height * height * vy)) / 2
    return width, height, float(np.sqrt(max(sigma2, 0.0)))


def _soft_iou(a: np.ndarray, t: np.ndarray) -> float:
    """Soft IoU after the same floor on both maps, so that noise in the window's background weighs nothing."""
    a, t = (np.clip((x - INK_FLOOR) / (1.0 - INK_FLOOR), 0.0, 1.0) for x in (a, t))
    return float(np.minimum(a, t).sum() / max(np.maximum(a, t).sum(), 1e-6))


def _elongation(ink: np.ndarray, blur: float = 0.0) -> float:
    """Ratio of the principal standard deviations of what was drawn under an ink window blurred by `blur`
    (blur adds sigma^2 to both principal variances): 1 for a disc or a square, 1.15 for the triangle."""
    h, w = ink.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    mass = ink.sum()
    cx, cy = (ink * xs).sum() / mass, (ink * ys).sum() / mass
    cov = np.cov(np.stack([xs.ravel() - cx, ys.ravel() - cy]), aweights=ink.ravel() + 1e-12, bias=True)
    low, high = np.linalg.eigvalsh(cov) - blur * blur
    return float(np.sqrt(max(high, 1e-9) / max(low, 0.05 * max(high, 1e-9), 1e-9)))


def _fit(ink: np.ndarray, origin) -> tuple[dict, dict, dict, dict]:
    """Fit the templates to an ink window: width and height from the mass and the second moments, centre
    from the centroid (all blur-invariant), blur from the moments; then a small search around them. Returns
    (iou, side, box, blur) per shape, each shape's values those of its best template (side: sqrt(width *
    height); blur: the closed-form sigma, not the searched one)."""
    h, w = ink.shape
    ink = np.where(ink >= INK_FLOOR, ink, 0.0)
    mass = float(ink.sum())
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    cx, cy = float((ink * xs).sum() / mass), float((ink * ys).sum() / mass)
    var_x, var_y = float((ink * (xs - cx) ** 2).sum() / mass), float((ink * (ys - cy) ** 2).sum() / mass)
    cx, cy = cx + origin[0], cy + origin[1]
    ious, sides, boxes, blurs = {}, {}, {}, {}
    for shape, variant in TEMPLATES:
        width0, height0, sigma0 = _extent(mass, var_x, var_y, _moments(shape, variant))
        for scale in (0.94, 1.0, 1.06):
            box = _template_box(shape, variant, width0 * scale, height0 * scale, cx, cy)
            cover = _coverage(shape, variant, box, origin, (h, w))
            for sigma in sorted({0.0, 0.7 * sigma0, sigma0, 1.3 * sigma0}):
                blurred = ndimage.gaussian_filter(cover, sigma, mode="constant") if sigma > 0.05 else cover
                iou = _soft_iou(ink, blurred)
                if iou > ious.get(shape, -1.0):
                    ious[shape], sides[shape], boxes[shape] = iou, scale * np.sqrt(width0 * height0), box
                    blurs[shape] = sigma0
    return ious, sides, boxes, blurs


@dataclasses.dataclass(frozen=True)
class _Frame:
    """What a component is judged against at one image resolution."""

    small: float  # side lengths in pixels
    large: float
    min_area: float  # smallest core that is a mark, not a speck

    @staticmethod
    def of(resolution: int) -> "_Frame":
        small, large = (shapes.side_length(z, resolution) for z in shapes.SIZES)
        return _Frame(small, large, MIN_CORE_FRACTION * 0.5 * small * small)

    def verdict(self, shape: str, side: float, fit: float, elongation: float) -> str:
        if elongation > MAX_ELONGATION:
            return f"stretched (elongation {elongation:.2f} > {MAX_ELONGATION})"
        if fit < MIN_FIT:
            return f"no shape fits (best {shape} soft IoU {fit:.2f} < {MIN_FIT})"
        lo, hi = SIDE_RANGE[0] * self.small, SIDE_RANGE[1] * self.large
        if not lo <= side <= hi:
            return f"implausible size (side {side:.1f} px outside [{lo:.1f}, {hi:.1f}])"
        return ""


def _judge_core(k: int, core: np.ndarray, all_cores: np.ndarray, ink: np.ndarray, frame: _Frame) -> Component:
    """Fit the shapes to one core (bool (H, W)) of colour k and give the verdict."""
    ys, xs = np.nonzero(core)
    y0, x0 = max(ys.min() - WINDOW_PAD, 0), max(xs.min() - WINDOW_PAD, 0)
    y1, x1 = min(ys.max() + 1 + WINDOW_PAD, core.shape[0]), min(xs.max() + 1 + WINDOW_PAD, core.shape[1])
    window = (slice(y0, y1), slice(x0, x1))
    # A pixel belongs to the core nearest to it: a blurred edge is claimed whatever colour label the noise gave
    # it (red, orange and yellow edges are close), a neighbour's edge is not. Distances see past the window.
    ey0, ex0 = max(y0 - WINDOW_PAD, 0), max(x0 - WINDOW_PAD, 0)
    context = (slice(ey0, y1 + WINDOW_PAD), slice(ex0, x1 + WINDOW_PAD))
    own, others = core[context], all_cores[context] & ~core[context]
    claim = (ndimage.distance_transform_edt(~own) <= ndimage.distance_transform_edt(~others)
             if others.any() else np.ones_like(own))
    claim = claim[y0 - ey0:y1 - ey0, x0 - ex0:x1 - ex0]
    own = core[window]
    a = np.where(claim, ink[window + (k - 1,)], 0.0)
    inner = ndimage.binary_erosion(own)
    level = float(np.median(a[inner])) if inner.any() else float(a[own].max())
    a = np.clip(a / max(level, 0.5), 0.0, 1.0)
    ious, sides, boxes, blurs = _fit(a, (x0, y0))
    shape = max(ious, key=ious.get)
    elongation = _elongation(np.where(a >= INK_FLOOR, a, 0.0), blurs[shape])
    side, box = sides[shape], boxes[shape]
    detection = Detection(
        colour=shapes.COLOURS[k - 1], shape=shape, size="large" if side >= (frame.small + frame.large) / 2 else "small",
        box=tuple(float(v) for v in box), centre=((box[0] + box[2]) / 2, (box[1] + box[3]) / 2),
        area=float(a.sum()), fit=ious[shape])
    return Component(shapes.COLOURS[k - 1], ious, sides, elongation, detection,
                     frame.verdict(shape, side, ious[shape], elongation))


def _split(core: np.ndarray, min_area: float) -> list[np.ndarray]:
    """Parts of a core that erosion separates (objects of one colour that touch), each core pixel going to the
    nearest part; [] when one to three erosions leave fewer than two parts."""
    for iterations in range(1, 4):
        seeds, count = ndimage.label(ndimage.binary_erosion(core, iterations=iterations))
        sizes = ndimage.sum(core, seeds, range(1, count + 1))
        if count >= 2 and np.sum(sizes >= 2) >= 2:
            _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
            nearest = seeds[iy, ix]
            parts = [core & (nearest == j) for j in range(1, count + 1)]
            return [p for p in parts if p.sum() >= min_area]
        if count == 0:
            break
    return []


def analyse(image, *, max_residual: float = MAX_RESIDUAL) -> list[Component]:
    """Every colour component of a Shapes-style image (uint8 [0, 255] or float [-1, 1], (H, W, 3)) with the
    judge's verdict: accepted as a circle / square / triangle, or rejected with the reason. A component that
    fits no shape but that erosion splits into parts that each fit one (touching objects of one colour)
    gives those parts."""
    labels, ink = unmix(image, max_residual)
    frame = _Frame.of(min(labels.shape))
    cores = []
    for k in range(1, len(shapes.COLOURS) + 1):
        components, count = ndimage.label((labels == k) & (ink[..., k - 1] >= 0.5))
        cores += [(k, components == j) for j in range(1, count + 1)]
    cores = [(k, c) for k, c in cores if c.sum() >= frame.min_area]  # specks: noise, not marks
    all_cores = np.any([c for _, c in cores], axis=0) if cores else np.zeros(labels.shape, bool)
    out = []
    for k, core in cores:
        whole = _judge_core(k, core, all_cores, ink, frame)
        parts = _split(core, frame.min_area) if whole.rejected else []
        if len(parts) >= 2:
            # Judged against each other as against any neighbour: the parts become separate cores.
            split_cores = all_cores & ~core
            for p in parts:
                split_cores |= ndimage.binary_erosion(p) if p.sum() > 4 else p
            judged = [_judge_core(k, p, split_cores | p, ink, frame) for p in parts]
            if not any(j.rejected for j in judged):
                out += judged
                continue
        out.append(whole)
    return out


def detect(image, **kwargs) -> list[Detection]:
    """The Shapes objects in an image (see `analyse`), sorted left to right. Rejected components (bars,
    stretched ellipses, ragged blobs, merged objects, specks) are not objects: they answer no question and are
    not counted."""
    return sorted((c.detection for c in analyse(image, **kwargs) if not c.rejected), key=lambda d: d.centre)


def detections_from_scene(scene_graph: dict) -> list[Detection]:
    """Ground-truth 'detections' of a scene graph (to compute the true answer of any question)."""
    scene = shapes.Scene.from_graph(scene_graph)
    return [Detection(o.colour, o.shape, o.size, o.box, o.centre, 0.0, 1.0) for o in scene.objects]


def _matches(det: Detection, ref: dict) -> bool:
    return all(getattr(det, key) == value for key, value in ref.items())


def answer(question: dict, detections: list[Detection]) -> bool:
    """Truth value of a structured question (see module doc) given the detected objects."""
    qtype, ref = question["type"], question.get("ref", {})
    unknown = set(ref) - {"colour", "shape", "size"}
    if unknown:
        raise ValueError(f"question reference has unknown keys {sorted(unknown)}: {question}")
    matching = [d for d in detections if _matches(d, ref)]
    if qtype == "exists":
        return bool(matching)
    if qtype in ("colour", "shape", "size"):
        return any(getattr(d, qtype) == question["value"] for d in matching)
    if qtype == "relation":
        others = [d for d in detections if _matches(d, question["ref2"])]
        return any(a is not b and shapes.relation_holds(a.centre, b.centre, question["relation"], RELATION_TIE)
                   for a in matching for b in others)
    if qtype == "count":
        return len(matching) == int(question["value"])
    raise ValueError(f"unknown question type {qtype!r}; expected one of {QUESTION_TYPES}")


def judge(image, questions: list[dict], detector: Callable = detect) -> list[bool]:
    """Answer every structured question on one image (`detector` runs once; the programmatic judge by default,
    `t2ijax.eval.cnn_judge.detect` for the second judge)."""
    detections = detector(image)
    return [answer(q, detections) for q in questions]


def _ref_text(ref: dict) -> str:
    words = [ref[k] for k in ("size", "colour") if k in ref]
    return " ".join(words + [ref.get("shape", "object")])


def question_text(question: dict) -> str:
    """A natural-language yes/no question for a structured one (for VQA models and reports)."""
    qtype, ref = question["type"], question.get("ref", {})
    noun = _ref_text(ref)
    if qtype == "exists":
        return f"Is there {'an' if noun[0] in 'aeiou' else 'a'} {noun}?"
    if qtype in ("colour", "size"):
        return f"Is the {noun} {question['value']}?"
    if qtype == "shape":
        return f"Is the {noun} a {question['value']}?"
    if qtype == "relation":
        return f"Is the {noun} {shapes.RELATION_PHRASE[question['relation']]} the {_ref_text(question['ref2'])}?"
    if qtype == "count":
        n = int(question["value"])
        plural = noun if n == 1 else noun + "s"
        return f"{'Is there' if n == 1 else 'Are there'} exactly {shapes.NUMBER_WORDS[n] if n < len(shapes.NUMBER_WORDS) else n} {plural}?"
    raise ValueError(f"unknown question type {qtype!r}; expected one of {QUESTION_TYPES}")


class JudgeVQA:
    """A `vqa(image, question_text) -> "yes" | "no"` function backed by a detector.

    It answers the natural-language questions produced by `question_text` for the structured questions it is
    given. `detector(image) -> list[Detection]` is the programmatic judge's `detect` by default; detections are
    cached per image object. An oracle is `JudgeVQA(questions, detector=lambda detections: detections)` asked
    on lists of true detections instead of images.
    """

    def __init__(self, questions: list[dict] = (), detector: Callable = detect):
        self._queries = {}
        self._detector = detector
        self._cache_key, self._cache = None, None
        self.add(questions)

    def add(self, questions) -> None:
        for q in questions:
            self._queries[question_text(q)] = q

    def __call__(self, image, question: str) -> str:
        if question not in self._queries:
            raise KeyError(f"JudgeVQA was not given a structured form for the question {question!r}")
        if self._cache_key is not image:
            pixels = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else image
            self._cache_key, self._cache = image, self._detector(pixels)
        return "yes" if answer(self._queries[question], self._cache) else "no"
