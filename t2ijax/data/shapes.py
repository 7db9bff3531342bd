"""Shapes: a procedural text-to-image dataset with exact scene graphs.

Every scene holds 1-4 non-overlapping objects on a plain white background. An
object is a shape (circle, square, triangle), a colour from a well-separated
palette and a size (small, large). Relations (left of, right of, above, below)
and counts follow from the layout. Each scene comes with three captions:

  dense      names every object with all its attributes, the relation between
             consecutive objects and the per-shape counts;
  short      colour and shape of every object, nothing else;
  narrative  names attributes only indirectly, through common knowledge
             ("the colour of fresh grass", "round like a coin"): the kind of
             prompt the SUR-adapter is trained to understand.

plus the scene graph, per-object boxes and masks (ERNIE-ViLG 2.0 region
weighting, eDiff-I paint-with-words) and character spans of the key words and
object phrases in every caption (ERNIE-ViLG 2.0 key-token emphasis).

Scenes are a pure function of (seed, split, index). Compositional
generalisation: the (colour, shape) pairs in `HELD_OUT_PAIRS` never occur in
the train and validation splits, and every test scene contains at least one.

Rendering is hard-edged (no anti-aliasing) so that every object pixel has its
exact palette colour and the masks are exact.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Sequence

import numpy as np

SHAPES = ("circle", "square", "triangle")
PALETTE = {
    "red": (210, 30, 30),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 60, 190),
    "orange": (250, 130, 0),
}
COLOURS = tuple(PALETTE)
BACKGROUND = "white"
BACKGROUND_RGB = (255, 255, 255)
SIZES = ("small", "large")
# Object side length as a fraction of the image side.
SIZE_FRACTION = {"small": 0.22, "large": 0.375}
RELATIONS = ("left of", "right of", "above", "below")
INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
MAX_OBJECTS = 4
SPLITS = ("train", "validation", "test")
# (colour, shape) pairs that only appear in the test split.
HELD_OUT_PAIRS = (("red", "triangle"), ("blue", "circle"), ("yellow", "square"), ("purple", "triangle"))

NUMBER_WORDS = ("zero", "one", "two", "three", "four")
RELATION_PHRASE = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
NARRATIVE_COLOUR = {
    "red": ("the colour of a ripe tomato", "the colour of a fire engine"),
    "green": ("the colour of fresh grass", "the colour of a frog"),
    "blue": ("the colour of a clear sky", "the colour of the deep sea"),
    "yellow": ("the colour of a banana", "the colour of a lemon"),
    "purple": ("the colour of lavender", "the colour of a ripe plum"),
    "orange": ("the colour of a carrot", "the colour of a pumpkin"),
}
NARRATIVE_SHAPE = {
    "circle": ("round like a coin", "round like a full moon"),
    "square": ("with four equal sides like a chessboard tile", "shaped like a postage stamp"),
    "triangle": ("with three corners like a slice of pizza", "pointed like a mountain peak"),
}
NARRATIVE_SIZE = {"small": ("little", "tiny"), "large": ("big", "huge")}
NARRATIVE_RELATION = {  # phrase describing the NEW object relative to the previous one
    "left of": "To its right",
    "right of": "To its left",
    "above": "Below it",
    "below": "Above it",
}
# The fixed words of the caption templates below (for the word-level vocabulary).
_FIXED_TEXT = (
    "object objects on a an white background : , and . The the is There there are",
    "Picture a white page . On it there is a thing ,",
)


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    size: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels (x1, y1 exclusive)

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0


@dataclasses.dataclass(frozen=True)
class Scene:
    """One Shapes scene: objects in caption order plus the stated relations."""

    resolution: int
    objects: tuple[ShapeObject, ...]
    relations: tuple[tuple[int, str, int], ...]  # (subject index, relation, object index)

    def counts(self) -> dict[str, int]:
        return {s: sum(o.shape == s for o in self.objects) for s in SHAPES}

    def to_graph(self) -> dict:
        """The scene graph as plain JSON-able data (objects, attributes, relations, counts)."""
        r = float(self.resolution)
        return {
            "resolution": self.resolution,
            "background": BACKGROUND,
            "objects": [
                {"id": i, "shape": o.shape, "colour": o.colour, "size": o.size,
                 "box": [o.box[0] / r, o.box[1] / r, o.box[2] / r, o.box[3] / r]}
                for i, o in enumerate(self.objects)
            ],
            "relations": [{"subject": a, "relation": rel, "object": b} for a, rel, b in self.relations],
            "counts": self.counts(),
        }

    @staticmethod
    def from_graph(graph: dict) -> "Scene":
        """Inverse of `to_graph` (boxes are rounded back to pixels)."""
        res = int(graph["resolution"])
        objects = tuple(
            ShapeObject(o["shape"], o["colour"], o["size"], tuple(int(round(v * res)) for v in o["box"]))
            for o in graph["objects"]
        )
        relations = tuple((r["subject"], r["relation"], r["object"]) for r in graph["relations"])
        return Scene(res, objects, relations)


def side_length(size: str, resolution: int) -> int:
    return max(3, int(round(SIZE_FRACTION[size] * resolution)))


def spatial_relation(a_centre, b_centre) -> str:
    """The relation of a point `a_centre` (x, y) to `b_centre`, image y pointing down, along the axis of the
    larger centre displacement (ties go to the horizontal axis).

    The one rule of the dataset: captions state it and the judges check it.
    """
    (ax, ay), (bx, by) = a_centre, b_centre
    dx, dy = ax - bx, ay - by
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def relation_holds(a_centre, b_centre, relation: str, tolerance: float = 0.0) -> bool:
    """Whether `relation` is what `spatial_relation` says of the two centres, or, when the displacement is
    within `tolerance` of the diagonal (| |dx| - |dy| | <= tolerance * (|dx| + |dy|)), what it says with the
    tie broken towards the other axis. tolerance=0 is the captions' rule exactly; a judge of drawn images,
    whose centres are estimates, allows a small one."""
    if relation not in INVERSE_RELATION:
        raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")
    if relation == spatial_relation(a_centre, b_centre):
        return True
    (ax, ay), (bx, by) = a_centre, b_centre
    dx, dy = ax - bx, ay - by
    if abs(abs(dx) - abs(dy)) > tolerance * (abs(dx) + abs(dy)):
        return False
    return {"left of": dx < 0, "right of": dx > 0, "above": dy < 0, "below": dy > 0}[relation]


def allowed_pairs(split: str) -> list[tuple[str, str]]:
    """The (colour, shape) pairs an object may have in `split`."""
    if split not in SPLITS:
        raise ValueError(f"unknown Shapes split {split!r}; expected one of {SPLITS}")
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    if split == "test":
        return pairs
    return [p for p in pairs if p not in HELD_OUT_PAIRS]


def sample_scene(seed: int, split: str, index: int, resolution: int) -> Scene:
    """Deterministically sample scene `index` of `split` (a pure function of its arguments)."""
    if resolution < 16:
        raise ValueError(f"Shapes needs resolution >= 16, got {resolution}")
    rng = np.random.default_rng([int(seed), SPLITS.index(split), int(index)])
    pairs = allowed_pairs(split)
    while True:
        n = int(rng.integers(1, MAX_OBJECTS + 1))
        chosen = [pairs[i] for i in rng.choice(len(pairs), size=n, replace=False)]
        if split == "test" and not any(p in HELD_OUT_PAIRS for p in chosen):
            chosen[int(rng.integers(n))] = HELD_OUT_PAIRS[int(rng.integers(len(HELD_OUT_PAIRS)))]
            if len(set(chosen)) < n:
                continue
        sizes = [SIZES[int(rng.integers(2))] for _ in range(n)]
        boxes = _place(rng, [side_length(z, resolution) for z in sizes], resolution)
        if boxes is not None:
            break
    objects = tuple(ShapeObject(s, c, z, b) for (c, s), z, b in zip(chosen, sizes, boxes))
    relations = tuple((i, spatial_relation(objects[i].centre, objects[i + 1].centre), i + 1) for i in range(n - 1))
    return Scene(resolution, objects, relations)


def _place(rng, sides: Sequence[int], resolution: int, gap: int = 1, tries: int = 200):
    boxes: list[tuple[int, int, int, int]] = []
    for side in sides:
        for _ in range(tries):
            x0 = int(rng.integers(1, resolution - side))
            y0 = int(rng.integers(1, resolution - side))
            box = (x0, y0, x0 + side, y0 + side)
            if all(_separated(box, other, gap) for other in boxes):
                boxes.append(box)
                break
        else:
            return None
    return boxes


def _separated(a, b, gap) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def sample_points(height: int, width: int, *, origin=(0, 0), supersample: int = 1):
    """(py, px): the sample points of a window, `supersample` x `supersample` per pixel, as broadcastable
    (height * supersample, 1) and (1, width * supersample) float32 arrays in image pixel units; `origin` =
    (x, y) is the window's top-left pixel. With supersample=1 the points are the pixel centres."""
    offsets = (np.arange(supersample, dtype=np.float32) + 0.5) / supersample
    py = (np.arange(height, dtype=np.float32)[:, None] + origin[1] + offsets[None, :]).reshape(-1, 1)
    px = (np.arange(width, dtype=np.float32)[:, None] + origin[0] + offsets[None, :]).reshape(1, -1)
    return py, px


def pixel_fraction(inside: np.ndarray, supersample: int) -> np.ndarray:
    """Per-pixel fraction of True samples of a sample-point mask from `sample_points`."""
    h, w = inside.shape[0] // supersample, inside.shape[1] // supersample
    return inside.reshape(h, supersample, w, supersample).mean(axis=(1, 3), dtype=np.float32)


def shape_inside(shape: str, box, py, px) -> np.ndarray:
    """Which points (py, px) lie inside `shape` drawn in `box` = (x0, y0, x1, y1) (floats allowed).

    square fills the box; circle is the ellipse inscribed in it (a circle in a square box); triangle has its
    apex at the top centre and its base on the bottom edge.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    if w <= 0 or h <= 0:
        raise ValueError(f"empty box {box}")
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    inside_box = (px >= x0) & (px < x1) & (py >= y0) & (py < y1)
    if shape == "square":
        return inside_box
    if shape == "circle":
        return (px - cx) ** 2 + ((py - cy) * (w / h)) ** 2 <= (w / 2.0) ** 2
    if shape == "triangle":
        return inside_box & (np.abs(px - cx) <= (py - y0) * w / (2.0 * h))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def superellipse_inside(box, exponent: float, py, px) -> np.ndarray:
    """Which points (py, px) lie inside the axis-aligned superellipse |x/a|^n + |y/b|^n <= 1 inscribed in
    `box` = (x0, y0, x1, y1) (a, b its half sides; n = `exponent`, 2 the ellipse, inf the box itself)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty box {box}")
    u = np.abs(px - (x0 + x1) / 2) / ((x1 - x0) / 2)
    v = np.abs(py - (y0 + y1) / 2) / ((y1 - y0) / 2)
    if math.isinf(exponent):
        return np.maximum(u, v) <= 1.0
    if exponent <= 0:
        raise ValueError(f"superellipse exponent {exponent} must be > 0")
    with np.errstate(over="ignore"):
        return u ** exponent + v ** exponent <= 1.0


def _segment_distance(py, px, a, b) -> np.ndarray:
    (ax, ay), (bx, by) = a, b
    dx, dy = bx - ax, by - ay
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(px - ax - t * dx, py - ay - t * dy)


def rounded_triangle_inside(box, radius: float, py, px) -> np.ndarray:
    """Which points lie inside the apex-up triangle of `box` (`shapes.shape_inside`) with its corners rounded
    by `radius` pixels: the triangle shrunk towards its incentre until its sides are `radius` inside the
    original ones, dilated by a disc of `radius` (the straight parts of the sides stay where they were)."""
    if radius <= 0:
        return shape_inside("triangle", box, py, px)
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    leg = math.hypot(w / 2, h)
    inradius = w * h / (w + 2 * leg)
    radius = min(radius, 0.9 * inradius)
    ix, iy = (w * (x0 + x1) / 2 + leg * x0 + leg * x1) / (w + 2 * leg), (w * y0 + 2 * leg * y1) / (w + 2 * leg)
    t = (inradius - radius) / inradius
    inner = (ix + t * (x0 - ix), iy + t * (y0 - iy), ix + t * (x1 - ix), iy + t * (y1 - iy))
    apex, left, right = ((inner[0] + inner[2]) / 2, inner[1]), (inner[0], inner[3]), (inner[2], inner[3])
    near = np.minimum(np.minimum(_segment_distance(py, px, apex, left), _segment_distance(py, px, left, right)),
                      _segment_distance(py, px, right, apex))
    return shape_inside("triangle", inner, py, px) | (near <= radius)


def shape_coverage(shape: str, box, height: int, width: int, *, origin=(0, 0), supersample: int = 1) -> np.ndarray:
    """(height, width) float32: the fraction of each pixel's sample points inside `shape` in `box` (see
    `sample_points` and `shape_inside`); supersample=1 gives the dataset's hard edges, larger values anti-alias."""
    py, px = sample_points(height, width, origin=origin, supersample=supersample)
    return pixel_fraction(shape_inside(shape, box, py, px), supersample)


def object_mask(obj: ShapeObject, resolution: int) -> np.ndarray:
    """(H, W) bool mask of one object, evaluated at pixel centres (the hard-edged render)."""
    return shape_coverage(obj.shape, obj.box, resolution, resolution) > 0.5


def render(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Render a scene: (image (H, W, 3) uint8, masks (MAX_OBJECTS, H, W) uint8, zero-padded)."""
    r = scene.resolution
    image = np.empty((r, r, 3), np.uint8)
    image[...] = BACKGROUND_RGB
    masks = np.zeros((MAX_OBJECTS, r, r), np.uint8)
    for i, obj in enumerate(scene.objects):
        m = object_mask(obj, r)
        image[m] = PALETTE[obj.colour]
        masks[i] = m
    return image, masks


class _Caption:
    """Accumulates caption text while recording spans of key words and object phrases."""

    def __init__(self):
        self.text = ""
        self.key_spans: list[tuple[int, int, str]] = []
        self.object_spans: dict[int, tuple[int, int]] = {}

    def add(self, piece: str, kind: str | None = None, obj: int | None = None):
        start = len(self.text)
        self.text += piece
        if kind is not None:
            self.key_spans.append((start, len(self.text), kind))
        if obj is not None and obj not in self.object_spans:
            self.object_spans[obj] = (start, len(self.text))

    def add_object(self, obj_index: int, words: Sequence[tuple[str, str]]):
        """Add space-separated (word, kind) pairs forming the phrase of one object."""
        start = len(self.text)
        for k, (word, kind) in enumerate(words):
            if k:
                self.add(" ")
            self.add(word, kind)
        self.object_spans.setdefault(obj_index, (start, len(self.text)))

    def spans(self, num_objects: int) -> dict:
        return {
            "key": [[s, e, k] for s, e, k in self.key_spans],
            "objects": [list(self.object_spans.get(i, (0, 0))) for i in range(num_objects)],
        }


def _join(caption: _Caption, items: Sequence, add_item):
    for k, item in enumerate(items):
        if k:
            caption.add(" and " if k == len(items) - 1 else ", ")
        add_item(item)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def dense_caption(scene: Scene) -> _Caption:
    c = _Caption()
    n = len(scene.objects)
    c.add(NUMBER_WORDS[n].capitalize(), "count")
    c.add(f" {'object' if n == 1 else 'objects'} on a white background: ")

    def add_obj(i):
        o = scene.objects[i]
        c.add(f"{_article(o.size)} ")
        c.add_object(i, [(o.size, "size"), (o.colour, "colour"), (o.shape, "shape")])

    _join(c, range(n), add_obj)
    c.add(".")
    for a, rel, b in scene.relations:
        oa, ob = scene.objects[a], scene.objects[b]
        c.add(" The ")
        c.add(oa.colour, "colour")
        c.add(" ")
        c.add(oa.shape, "shape")
        c.add(" is ")
        c.add(RELATION_PHRASE[rel], "relation")
        c.add(" the ")
        c.add(ob.colour, "colour")
        c.add(" ")
        c.add(ob.shape, "shape")
        c.add(".")
    counts = [(s, k) for s, k in scene.counts().items() if k]
    c.add(" There is " if n == 1 else " There are ")

    def add_count(item):
        s, k = item
        c.add(NUMBER_WORDS[k], "count")
        c.add(" ")
        c.add(s if k == 1 else s + "s", "shape")

    _join(c, counts, add_count)
    c.add(".")
    return c


def short_caption(scene: Scene) -> _Caption:
    c = _Caption()

    def add_obj(i):
        o = scene.objects[i]
        c.add(f"{_article(o.colour)} ")
        c.add_object(i, [(o.colour, "colour"), (o.shape, "shape")])

    _join(c, range(len(scene.objects)), add_obj)
    return c


def narrative_caption(scene: Scene, rng: np.random.Generator) -> _Caption:
    c = _Caption()
    c.add("Picture a white page.")
    for i, o in enumerate(scene.objects):
        size = NARRATIVE_SIZE[o.size][int(rng.integers(2))]
        shape = NARRATIVE_SHAPE[o.shape][int(rng.integers(2))]
        colour = NARRATIVE_COLOUR[o.colour][int(rng.integers(2))]
        if i == 0:
            c.add(" On it there is a ")
        else:
            c.add(" ")
            c.add(NARRATIVE_RELATION[scene.relations[i - 1][1]], "relation")
            c.add(" there is a ")
        start = len(c.text)
        c.add(size, "size")
        c.add(" thing ")
        c.add(shape, "shape")
        c.add(", ")
        c.add(colour, "colour")
        c.object_spans[i] = (start, len(c.text))
        c.add(".")
    return c


@dataclasses.dataclass(frozen=True)
class ShapesExample:
    index: int
    scene: Scene
    image: np.ndarray  # (H, W, 3) uint8
    masks: np.ndarray  # (MAX_OBJECTS, H, W) uint8
    captions: dict  # kind -> str
    spans: dict  # kind -> {"key": [[start, end, kind]], "objects": [[start, end]]}

    def record(self) -> dict:
        """The flat record stored in the TFDS dataset."""
        boxes = np.zeros((MAX_OBJECTS, 4), np.float32)
        for i, o in enumerate(self.scene.objects):
            boxes[i] = np.asarray(o.box, np.float32) / self.scene.resolution
        graph = self.scene.to_graph()
        graph["spans"] = self.spans
        return {
            "index": self.index,
            "image": self.image,
            "masks": self.masks,
            "boxes": boxes,
            "num_objects": len(self.scene.objects),
            "dense": self.captions["dense"],
            "short": self.captions["short"],
            "narrative": self.captions["narrative"],
            "scene_graph": json.dumps(graph, sort_keys=True),
        }


def make_example(seed: int, split: str, index: int, resolution: int) -> ShapesExample:
    """Scene, render, captions and spans of example `index` of `split`."""
    scene = sample_scene(seed, split, index, resolution)
    image, masks = render(scene)
    rng = np.random.default_rng([int(seed), SPLITS.index(split), int(index), 1])
    built = {"dense": dense_caption(scene), "short": short_caption(scene), "narrative": narrative_caption(scene, rng)}
    n = len(scene.objects)
    return ShapesExample(
        index=index, scene=scene, image=image, masks=masks,
        captions={k: v.text for k, v in built.items()},
        spans={k: v.spans(n) for k, v in built.items()},
    )


def vocabulary() -> list[str]:
    """Every word and punctuation token any Shapes caption can contain (sorted)."""
    import re

    texts = list(_FIXED_TEXT) + list(SHAPES) + [s + "s" for s in SHAPES] + list(COLOURS) + list(SIZES)
    texts += list(NUMBER_WORDS) + [w.capitalize() for w in NUMBER_WORDS] + list(RELATION_PHRASE.values())
    texts += list(NARRATIVE_RELATION.values())
    for table in (NARRATIVE_COLOUR, NARRATIVE_SHAPE, NARRATIVE_SIZE):
        for phrases in table.values():
            texts += list(phrases)
    words = set()
    for t in texts:
        words.update(w.lower() for w in re.findall(r"\w+|[^\w\s]+", t))
    return sorted(words)
