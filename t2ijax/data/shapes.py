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


def spatial_relation(a: ShapeObject, b: ShapeObject) -> str:
    """The relation of `a` to `b` along the axis with the larger centre displacement."""
    (ax, ay), (bx, by) = a.centre, b.centre
    dx, dy = ax - bx, ay - by
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def relation_holds(a_centre, b_centre, relation: str) -> bool:
    """Whether `relation` holds between two centres (x, y), image y pointing down."""
    (ax, ay), (bx, by) = a_centre, b_centre
    return {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[relation]


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
    relations = tuple((i, spatial_relation(objects[i], objects[i + 1]), i + 1) for i in range(n - 1))
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


def object_mask(obj: ShapeObject, resolution: int) -> np.ndarray:
    """(H, W) bool mask of one object, evaluated at pixel centres."""
    x0, y0, x1, y1 = obj.box
    side = x1 - x0
    py, px = np.mgrid[0:resolution, 0:resolution].astype(np.float32) + 0.5
    cx, cy = obj.centre
    inside_box = (px >= x0) & (px < x1) & (py >= y0) & (py < y1)
    if obj.shape == "square":
        return inside_box
    if obj.shape == "circle":
        return (px - cx) ** 2 + (py - cy) ** 2 <= (side / 2.0) ** 2
    if obj.shape == "triangle":  # apex up, base on the bottom edge of the box
        return inside_box & (np.abs(px - cx) <= (py - y0) / 2.0)
    raise ValueError(f"unknown shape {obj.shape!r}")


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
