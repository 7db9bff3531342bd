"""Programmatic judge for Shapes images: detect objects, answer scene-graph questions.

Detection: every pixel is assigned to the nearest palette colour or the
background (pixels farther than `max_colour_distance` from all of them count as
background); the 8-connected components of each colour above a minimum area are
objects (components that vanish under one erosion, such as the blurred fringe of
another object, are dropped). The shape comes from geometry: the component is
compared (IoU) with a square, a circle and a triangle drawn in its bounding box,
which separates fill ratio (1, pi/4, 1/2) and outline (a triangle is narrow at
the top). The size compares the longer box side with the midpoint between the
small and large side lengths.

Questions are plain dicts (the structured form of a yes/no question):

  {"type": "exists",   "ref": R}
  {"type": "colour",   "ref": R, "value": "red"}
  {"type": "shape",    "ref": R, "value": "circle"}
  {"type": "size",     "ref": R, "value": "large"}
  {"type": "relation", "ref": R, "relation": "left of", "ref2": R2}
  {"type": "count",    "ref": R, "value": 2}

where a reference R is a dict with any of "colour", "shape", "size" (an empty
dict matches every object). A question is true when some object matching R has
the asked attribute (relation: some pair of distinct matching objects is in the
relation; count: exactly `value` objects match R).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import ndimage

from t2ijax.data import shapes

QUESTION_TYPES = ("exists", "colour", "shape", "size", "relation", "count")


@dataclasses.dataclass(frozen=True)
class Detection:
    colour: str
    shape: str
    size: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in pixels
    centre: tuple[float, float]  # x, y
    area: int
    fill: float


def _as_uint8(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"judge expects an (H, W, 3) image, got shape {image.shape}")
    if np.issubdtype(image.dtype, np.floating):  # [-1, 1] model output
        return np.clip(np.round((image.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return image.astype(np.uint8)


_REFERENCE = np.asarray([shapes.BACKGROUND_RGB] + [shapes.PALETTE[c] for c in shapes.COLOURS], np.float32)


def colour_labels(image, max_colour_distance: float = 90.0) -> np.ndarray:
    """(H, W) int: 0 background / unknown, k >= 1 the palette colour shapes.COLOURS[k - 1]."""
    pixels = _as_uint8(image).astype(np.float32)
    dist = np.linalg.norm(pixels[:, :, None, :] - _REFERENCE[None, None], axis=-1)
    labels = np.argmin(dist, axis=-1)
    labels[np.min(dist, axis=-1) > max_colour_distance] = 0
    return labels


@functools.lru_cache(maxsize=256)
def _templates(side: int) -> dict[str, np.ndarray]:
    return {s: shapes.object_mask(shapes.ShapeObject(s, "red", "small", (0, 0, side, side)), side)
            for s in shapes.SHAPES}


def classify_shape(mask: np.ndarray) -> str:
    """The shape whose template (rendered at the component's longer box side, centred on the box)
    overlaps the component best (IoU): a blur-tolerant version of comparing fill ratio and outline."""
    h, w = mask.shape
    side = max(h, w)
    canvas = np.zeros((side, side), bool)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top:top + h, left:left + w] = mask
    best, best_iou = "square", -1.0
    for name, template in _templates(side).items():
        iou = np.logical_and(canvas, template).sum() / max(1, np.logical_or(canvas, template).sum())
        if iou > best_iou:
            best, best_iou = name, iou
    return best


def detect(image, *, min_area_fraction: float = 0.3, max_colour_distance: float = 90.0) -> list[Detection]:
    """Objects in a Shapes-style image (uint8 [0, 255] or float [-1, 1], (H, W, 3)), sorted left to right."""
    labels = colour_labels(image, max_colour_distance)
    resolution = min(labels.shape)
    small, large = (shapes.side_length(z, resolution) for z in shapes.SIZES)
    # A component must cover a good part of the smallest possible object (a small triangle).
    min_area = max(3, int(min_area_fraction * 0.5 * small * small))
    size_threshold = (small + large) / 2.0
    found = []
    for k, colour in enumerate(shapes.COLOURS, start=1):
        components, count = ndimage.label(labels == k, structure=np.ones((3, 3)))
        for sl, idx in zip(ndimage.find_objects(components), range(1, count + 1)):
            mask = components[sl] == idx
            area = int(mask.sum())
            # Thin rings and fringes (blurred edges of another object) vanish under erosion; real objects do not.
            if area < min_area or not ndimage.binary_erosion(np.pad(mask, 1)).any():
                continue
            ys, xs = sl
            h, w = ys.stop - ys.start, xs.stop - xs.start
            fill = area / float(h * w)
            cy, cx = ndimage.center_of_mass(mask)
            found.append(Detection(
                colour=colour, shape=classify_shape(mask),
                size="large" if max(h, w) >= size_threshold else "small",
                box=(xs.start, ys.start, xs.stop, ys.stop),
                centre=(xs.start + cx + 0.5, ys.start + cy + 0.5), area=area, fill=fill,
            ))
    return sorted(found, key=lambda d: d.centre)


def detections_from_scene(scene_graph: dict) -> list[Detection]:
    """Ground-truth 'detections' of a scene graph (to compute the true answer of any question)."""
    scene = shapes.Scene.from_graph(scene_graph)
    return [Detection(o.colour, o.shape, o.size, o.box, o.centre, 0, 1.0) for o in scene.objects]


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
        return any(a is not b and shapes.relation_holds(a.centre, b.centre, question["relation"])
                   for a in matching for b in others)
    if qtype == "count":
        return len(matching) == int(question["value"])
    raise ValueError(f"unknown question type {qtype!r}; expected one of {QUESTION_TYPES}")


def judge(image, questions: list[dict], **detect_kwargs) -> list[bool]:
    """Answer every structured question on one image (detection runs once)."""
    detections = detect(image, **detect_kwargs)
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
    """A `vqa(image, question_text) -> "yes" | "no"` function backed by the judge.

    It answers the natural-language questions produced by `question_text` for the
    structured questions it is given; detection is cached per image object.
    """

    def __init__(self, questions: list[dict] = (), **detect_kwargs):
        self._queries = {}
        self._detect_kwargs = detect_kwargs
        self._cache_key, self._cache = None, None
        self.add(questions)

    def add(self, questions) -> None:
        for q in questions:
            self._queries[question_text(q)] = q

    def __call__(self, image, question: str) -> str:
        if question not in self._queries:
            raise KeyError(f"JudgeVQA was not given a structured form for the question {question!r}")
        if self._cache_key is not image:
            self._cache_key, self._cache = image, detect(np.asarray(image.convert("RGB")) if hasattr(image, "convert")
                                                          else image, **self._detect_kwargs)
        return "yes" if answer(self._queries[question], self._cache) else "no"
