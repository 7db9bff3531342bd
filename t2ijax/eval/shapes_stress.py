"""Stress images for Shapes judges: what generated images look like, what cheats look like, and the truth.

A judge validated only on the dataset's own hard-edged renders can be fooled. This module draws the
images it is tested against, each with the exact list of objects that was drawn (the oracle's view):

  realistic   `jittered(scene, rng)`: every object moved by a random sub-pixel offset and scaled by a few
              percent, anti-aliased (`draw`), then `degrade`d: Gaussian blur, per-pixel colour noise, a
              per-object colour shift (generated colours are never exactly the palette's), JPEG artefacts.
  cheats      `cheat(scene, kind, rng)` for kind in `CHEATS`:
                bars      a bar of each object's colour across its true box (width = the box, thickness a
                          quarter of it), horizontal or vertical: right colour, right place, no shape
                ellipses  a 3:1 ellipse of each object's colour, centred in its true box
                blobs     3-4 round lobes of each object's colour around its true box centre
                swapped   every object drawn with another shape (circle -> square -> triangle -> circle)
                palette   one fixed image for every prompt: the six colours as six small objects
                blank     the empty white canvas

A `Mark` is one thing drawn; `truth(marks)` is what an oracle that knows the drawing sees: the circles,
squares and triangles among the marks (bars, ellipses and blobs are not Shapes objects). Answering a
prompt's questions on `truth(...)` gives the oracle's score of an image; the judge's score beside it shows
how far the judge is from the truth.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from scipy import ndimage

from t2ijax.data import shapes
from t2ijax.eval.judge import Detection

CHEATS = ("bars", "ellipses", "blobs", "swapped", "palette", "blank")
NOT_OBJECTS = ("bar", "ellipse", "blob")
SWAP = {"circle": "square", "square": "triangle", "triangle": "circle"}


@dataclasses.dataclass(frozen=True)
class Mark:
    """One thing drawn: a Shapes object (kind in shapes.SHAPES) or a non-object (kind in NOT_OBJECTS)."""

    kind: str
    colour: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, floats allowed
    size: str = ""  # the object's size class ("small" / "large"); shapes only
    rgb: tuple[float, float, float] | None = None  # drawn colour; None = the palette colour
    seed: int = 0  # the random discs of a blob

    def inside(self, py, px) -> np.ndarray:
        if self.kind in shapes.SHAPES:
            return shapes.shape_inside(self.kind, self.box, py, px)
        x0, y0, x1, y1 = self.box
        if self.kind in ("bar", "ellipse"):
            return shapes.shape_inside("square" if self.kind == "bar" else "circle", self.box, py, px)
        if self.kind == "blob":  # 3-4 lobes around the box centre: lumpy, with dents between the lobes
            rng = np.random.default_rng(self.seed)
            side = min(x1 - x0, y1 - y0)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            lobes = int(rng.integers(3, 5))
            start = rng.uniform(0, 2 * np.pi)
            out = np.zeros(np.broadcast_shapes(py.shape, px.shape), bool)
            for j in range(lobes):
                angle = start + 2 * np.pi * j / lobes + rng.uniform(-0.3, 0.3)
                r = side * rng.uniform(0.2, 0.26)
                lx, ly = cx + 0.2 * side * np.cos(angle), cy + 0.2 * side * np.sin(angle)
                out |= shapes.shape_inside("circle", (lx - r, ly - r, lx + r, ly + r), py, px)
            return out
        raise ValueError(f"unknown mark kind {self.kind!r}; expected one of {shapes.SHAPES + NOT_OBJECTS}")


def draw(marks, resolution: int, *, supersample: int = 8) -> np.ndarray:
    """Anti-aliased (H, W, 3) uint8 image of `marks` on the white background (each pixel blends its mark's
    colour with what is under it by the fraction of its sample points the mark covers)."""
    image = np.empty((resolution, resolution, 3), np.float32)
    image[...] = shapes.BACKGROUND_RGB
    py, px = shapes.sample_points(resolution, resolution, supersample=supersample)
    for mark in marks:
        cover = shapes.pixel_fraction(mark.inside(py, px), supersample)[..., None]
        rgb = np.asarray(mark.rgb if mark.rgb is not None else shapes.PALETTE[mark.colour], np.float32)
        image = image * (1.0 - cover) + rgb * cover
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def truth(marks) -> list[Detection]:
    """The Shapes objects among `marks`, as detections (what an oracle knows was drawn)."""
    out = []
    for m in marks:
        if m.kind in shapes.SHAPES:
            x0, y0, x1, y1 = m.box
            out.append(Detection(m.colour, m.kind, m.size, tuple(m.box), ((x0 + x1) / 2, (y0 + y1) / 2), 0, 1.0))
    return out


def scene_marks(scene: shapes.Scene) -> list[Mark]:
    """The scene's objects exactly as the dataset draws them."""
    return [Mark(o.shape, o.colour, tuple(float(v) for v in o.box), o.size) for o in scene.objects]


def jittered(scene: shapes.Scene, rng: np.random.Generator, *, shift: float = 0.5, scale: float = 0.06,
             colour_shift: float = 0.0) -> list[Mark]:
    """The scene's objects moved by uniform sub-pixel offsets in [-shift, shift], scaled by a factor in
    [1 - scale, 1 + scale] about their centres, and drawn in colours moved by up to `colour_shift` per channel."""
    marks = []
    for m in scene_marks(scene):
        x0, y0, x1, y1 = m.box
        f = rng.uniform(1 - scale, 1 + scale)
        cx, cy = (x0 + x1) / 2 + rng.uniform(-shift, shift), (y0 + y1) / 2 + rng.uniform(-shift, shift)
        half = (x1 - x0) * f / 2
        rgb = np.clip(np.asarray(shapes.PALETTE[m.colour], np.float32)
                      + rng.uniform(-colour_shift, colour_shift, 3), 0, 255)
        marks.append(dataclasses.replace(m, box=(cx - half, cy - half, cx + half, cy + half),
                                         rgb=tuple(float(v) for v in rgb)))
    return marks


def degrade(image: np.ndarray, rng: np.random.Generator, *, blur: float = 0.0, noise: float = 0.0,
            jpeg_quality: int | None = None, chroma_subsampling: bool = False) -> np.ndarray:
    """Gaussian blur (sigma in pixels), then per-pixel Gaussian colour noise (sd in 0-255 units), then a JPEG
    round trip at `jpeg_quality` (None: none), with 4:2:0 chroma subsampling (colour at half resolution, as
    most JPEG files; at 32 px it smears colour across whole small objects) or without (4:4:4). uint8 in/out."""
    out = image.astype(np.float32)
    if blur > 0:
        out = ndimage.gaussian_filter(out, sigma=(blur, blur, 0), mode="nearest")
    if noise > 0:
        out = out + rng.normal(0.0, noise, out.shape)
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    if jpeg_quality is not None:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(out).save(buffer, format="JPEG", quality=int(jpeg_quality),
                                 subsampling=2 if chroma_subsampling else 0)
        out = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return out


def palette_marks(resolution: int) -> list[Mark]:
    """The prompt-ignoring palette image: the six colours as six small objects on a 3 x 2 grid."""
    side = shapes.side_length("small", resolution)
    marks = []
    for k, colour in enumerate(shapes.COLOURS):
        cx, cy = resolution * (0.2 + 0.3 * (k % 3)), resolution * (0.3 + 0.4 * (k // 3))
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        marks.append(Mark(shapes.SHAPES[k % 3], colour, box, "small"))
    return marks


def cheat(scene: shapes.Scene, kind: str, rng: np.random.Generator) -> list[Mark]:
    """The marks of cheat `kind` (see the module doc) for `scene`."""
    if kind == "blank":
        return []
    if kind == "palette":
        return palette_marks(scene.resolution)
    if kind == "swapped":
        return [dataclasses.replace(m, kind=SWAP[m.kind]) for m in scene_marks(scene)]
    if kind not in CHEATS:
        raise ValueError(f"unknown cheat {kind!r}; expected one of {CHEATS}")
    marks = []
    for m in scene_marks(scene):
        x0, y0, x1, y1 = m.box
        cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0
        if kind == "blobs":
            marks.append(Mark("blob", m.colour, m.box, seed=int(rng.integers(2**31))))
            continue
        thin = side / 4 if kind == "bars" else side / 3
        if rng.integers(2):  # horizontal
            box = (x0, cy - thin / 2, x1, cy + thin / 2)
        else:
            box = (cx - thin / 2, y0, cx + thin / 2, y1)
        marks.append(Mark("bar" if kind == "bars" else "ellipse", m.colour, box))
    return marks


# Degradation settings of the validation report (docs/judge.md), also used to train the CNN judge.
def realistic(scene: shapes.Scene, rng: np.random.Generator, *, blur: float, noise: float = 6.0,
              colour_shift: float = 12.0, jpeg_quality: int | None = 85, chroma_subsampling: bool = False) -> tuple[np.ndarray, list[Detection]]:
    """A jittered, anti-aliased, blurred, noisy, JPEG-compressed render of `scene` and its truth."""
    marks = jittered(scene, rng, colour_shift=colour_shift)
    image = degrade(draw(marks, scene.resolution), rng, blur=blur, noise=noise, jpeg_quality=jpeg_quality,
                    chroma_subsampling=chroma_subsampling)
    return image, truth(marks)


def scene_sampler(data_config, split: str, *, kind: str = "truth", blur: float = 0.0):
    """A `sampler(prompts, seeds) -> images` for `t2ijax.eval.evaluate` that draws, for each Shapes prompt of
    `split`, its own scene (kind "truth": the dataset's render, blurred by `blur`) or a cheat of `CHEATS`.
    Prompts are matched to scenes by caption (scenes with one dense caption ask the same questions); each
    image's randomness comes from its seed."""
    resolution, seed = int(data_config.resolution), int(data_config.seed)
    size = int(data_config.num_test if split == "test" else data_config.num_val)
    by_caption = {}
    for i in range(size):
        example = shapes.make_example(seed, split, i, resolution)
        by_caption.setdefault(example.captions[data_config.caption], example.scene)

    def sampler(prompts, seeds):
        images = []
        for prompt, s in zip(prompts, seeds):
            scene, rng = by_caption[prompt], np.random.default_rng(int(s))
            image = shapes.render(scene)[0] if kind == "truth" else draw(cheat(scene, kind, rng), resolution)
            images.append(degrade(image, rng, blur=blur) if blur else image)
        return np.stack(images)

    return sampler


def oracle_floors(graphs, kinds=("swapped", "palette"), *, images_per_prompt: int = 4, seed: int = 0) -> dict:
    """The DPG-style score (DPGOptions.fixed()) that a perfect judge gives cheats of `kinds` on the scenes
    `graphs`: the structural floor of the benchmark (what drawing something plausible that ignores the
    prompt, or every object with the wrong shape, scores without any judge error)."""
    from t2ijax.eval import dpg
    from t2ijax.eval.judge import JudgeVQA

    options = dpg.DPGOptions.fixed()
    out = {}
    for kind in kinds:
        scores = []
        for k, graph in enumerate(graphs):
            scene = shapes.Scene.from_graph(graph)
            rng = np.random.default_rng([seed, k])
            pq = dpg.shapes_questions(graph, str(k))
            tiles = [truth(cheat(scene, kind, rng)) for _ in range(images_per_prompt)]
            scores.append(dpg.score_tiles(tiles, pq, JudgeVQA([q.query for q in pq.questions],
                                                              detector=lambda d: d), options))
        out[kind] = dpg.aggregate(scores, {}, options).score
    return out
