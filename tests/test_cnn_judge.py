"""The CNN Shapes judge: committed weights, accuracy against the truth, the benchmark's shape definitions
(superellipse circle / square line at n = 3, rounded and wobbly shapes are shapes, stretched patches are not),
rejection, its loader and its training."""

import dataclasses
import json
import math

import jax
import numpy as np
import pytest

from t2ijax.config_utils import load_config
from t2ijax.data import shapes
from t2ijax.eval import cnn_judge, judge
from t2ijax.eval import shapes_stress as st
from t2ijax.eval import cnn_judge_data as data
from t2ijax.eval.cnn_judge_data import make_loader
from t2ijax.eval.dpg import shapes_questions

NUM_SCENES = 24  # per resolution


@pytest.fixture(scope="module")
def model():
    return cnn_judge.load()


def test_committed_weights_load(model):
    assert model.metadata["colours"] == list(shapes.COLOURS) and model.metadata["shapes"] == list(shapes.SHAPES)
    assert 100_000 <= sum(np.size(x) for x in jax.tree.leaves(model.params)) <= 300_000


def test_loading_is_strict(tmp_path):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(cnn_judge.DEFAULT_WEIGHTS)
    del tensors["head/kernel"]
    save_file(tensors, str(tmp_path / "judge.safetensors"))
    (tmp_path / "judge.json").write_text(open(cnn_judge.DEFAULT_WEIGHTS.replace(".safetensors", ".json")).read())
    with pytest.raises(ValueError, match="missing head/kernel"):
        cnn_judge.load(str(tmp_path / "judge.safetensors"))


@pytest.mark.parametrize("resolution", [32, 64])
def test_validation_renders_answered_like_the_truth(model, resolution):
    rng = np.random.default_rng(resolution)
    scenes = [shapes.sample_scene(0, "validation", i, resolution) for i in range(NUM_SCENES)]
    renders = [st.realistic(s, rng, blur=(0.0, 0.5, 0.8)[i % 3]) for i, s in enumerate(scenes)]
    found = model.detect_batch(np.stack([image for image, _ in renders]))
    right = asked = 0
    for scene, (_, truth), detections in zip(scenes, renders, found):
        for q in shapes_questions(scene.to_graph()).questions:
            right += judge.answer(q.query, detections) == judge.answer(q.query, truth)
            asked += 1
    print(f"\nCNN judge at {resolution} px: {100 * right / asked:.1f}% of {asked} answers match the truth")
    assert right / asked >= 0.95


def test_boxes_and_centres_are_the_objects(model):
    scene = shapes.sample_scene(0, "validation", 3, 64)
    image, truth = st.realistic(scene, np.random.default_rng(0), blur=0.5)
    found = model.detect(image)
    assert sorted((d.colour, d.shape, d.size) for d in found) == sorted((t.colour, t.shape, t.size) for t in truth)
    for d in found:
        t = next(t for t in truth if t.colour == d.colour and t.shape == d.shape)
        assert math.dist(d.centre, t.centre) < 1.5 and 0.0 <= d.fit <= 1.0
        assert d.centre == pytest.approx(((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2))


@pytest.mark.parametrize("kind", ["bars", "ellipses"])
def test_shapeless_marks_rejected(model, kind):
    rng = np.random.default_rng(1)
    images, drawn = [], 0
    for i in range(NUM_SCENES):
        resolution = 32 if i % 2 else 64
        marks = st.cheat(shapes.sample_scene(0, "validation", i, resolution), kind, rng)
        drawn += len(marks)
        image = st.degrade(st.draw(marks, resolution), rng, blur=0.5, noise=6.0, jpeg_quality=85)
        images.append(image)
    accepted = sum(len(model.detect(image)) for image in images)
    print(f"\n{kind}: {accepted} of {drawn} accepted as objects")
    assert accepted <= 0.05 * drawn


def _single_objects(make_mark, count=16, blur=0.5):
    """Images of one mark each (`make_mark(box, colour, rng)`, box = the first object's box of a validation
    scene), degraded as generated images (blur, noise, JPEG), half at 32 px and half at 64 px."""
    rng = np.random.default_rng(5)
    images = []
    for i in range(count):
        resolution = 32 if i % 2 else 64
        obj = shapes.sample_scene(0, "validation", i, resolution).objects[0]
        mark = make_mark(tuple(float(v) for v in obj.box), obj.colour, rng)
        draw = st.draw if isinstance(mark, st.Mark) else data.draw
        images.append(st.degrade(draw([mark], resolution), rng, blur=blur, noise=6.0, jpeg_quality=85))
    return images


def _verdicts(model, images) -> list[str]:
    """One word per image: the accepted shape of its one object, "rejected", "none" or "several"."""
    out = []
    for found in model.analyse_batch(np.stack(images[::2])) + model.analyse_batch(np.stack(images[1::2])):
        accepted = [i.detection.shape for i in found if not i.rejected]
        out.append(accepted[0] if len(accepted) == 1 else "several" if accepted else
                   "rejected" if found else "none")
    return out


def test_superellipse_and_rounded_triangle_geometry():
    py, px = shapes.sample_points(40, 40, supersample=2)
    box = (4.3, 6.1, 30.2, 32.0)
    assert (shapes.superellipse_inside(box, math.inf, py, px) != shapes.shape_inside("square", box, py, px)).mean() < 0.01
    np.testing.assert_array_equal(shapes.superellipse_inside(box, 2.0, py, px), shapes.shape_inside("circle", box, py, px))
    areas = [shapes.superellipse_inside(box, n, py, px).mean() for n in (2.0, 2.6, 3.0, 3.6, 8.0, math.inf)]
    assert areas == sorted(areas)
    triangle = shapes.shape_inside("triangle", box, py, px)
    np.testing.assert_array_equal(shapes.rounded_triangle_inside(box, 0.0, py, px), triangle)
    rounded = shapes.rounded_triangle_inside(box, 0.2 * 25.9, py, px)
    assert not np.any(rounded & ~triangle) and 0.75 < rounded.sum() / triangle.sum() < 0.92


@pytest.mark.parametrize("exponent,expected", [(2.2, "circle"), (6.0, "square")])
def test_superellipses_on_either_side_of_three(model, exponent, expected):
    def make(box, colour, rng):
        return data.Mark("circle", colour, box, exponent=exponent)
    verdicts = _verdicts(model, _single_objects(make))
    print(f"\nsuperellipse n={exponent}: {verdicts}")
    assert verdicts.count(expected) >= 15


def test_rounded_wobbly_shapes_keep_their_label(model):
    kinds = ("circle", "square", "triangle")

    def make(box, colour, rng):
        kind = kinds[int(rng.integers(3))]
        exponent = {"circle": 2.3, "square": 5.0}.get(kind, 2.0)
        mark = data.Mark(kind, colour, box, outline="triangle" if kind == "triangle" else "superellipse",
                         exponent=exponent, rounding=0.12, wobble=0.05, unevenness=15.0,
                         seed=int(rng.integers(2**31)))
        make.kinds.append(kind)
        return mark
    make.kinds = []
    verdicts = _verdicts(model, _single_objects(make, count=24))
    expected = make.kinds[::2] + make.kinds[1::2]  # `_verdicts` order: the 64 px images first
    print(f"\nrounded wobbly shapes: {list(zip(expected, verdicts))}")
    assert sum(v == k for v, k in zip(verdicts, expected)) >= 22


def test_lobed_blobs_are_shapes(model):
    def make(box, colour, rng):
        return st.Mark("blob", colour, box, seed=int(rng.integers(2**31)))
    verdicts = _verdicts(model, _single_objects(make))
    print(f"\nlobed blobs: {verdicts}")
    assert sum(v in shapes.SHAPES for v in verdicts) >= 15


def test_two_to_one_rectangles_rejected(model):
    def make(box, colour, rng):
        x0, y0, x1, y1 = box
        cy, thin = (y0 + y1) / 2, (x1 - x0) / 2
        if rng.integers(2):
            return data.Mark("none", colour, (x0, cy - thin / 2, x1, cy + thin / 2), exponent=math.inf)
        cx = (x0 + x1) / 2
        return data.Mark("none", colour, (cx - thin / 2, y0, cx + thin / 2, y1), exponent=math.inf)
    verdicts = _verdicts(model, _single_objects(make))
    print(f"\n2:1 rectangles: {verdicts}")
    assert sum(v in shapes.SHAPES for v in verdicts) <= 1


@pytest.mark.parametrize("resolution", [32, 64])
def test_blank_image_has_no_objects(model, resolution):
    blank = np.full((resolution, resolution, 3), 255, np.uint8)
    assert model.detect(blank) == [] and model.detect(np.ones((resolution, resolution, 3), np.float32)) == []


def test_float_images_and_bad_shapes(model):
    image = shapes.render(shapes.sample_scene(0, "validation", 5, 32))[0]
    from_uint8, from_float = model.detect(image), model.detect(image / 127.5 - 1.0)
    assert [(d.colour, d.shape, d.size) for d in from_float] == [(d.colour, d.shape, d.size) for d in from_uint8]
    np.testing.assert_allclose([d.box for d in from_float], [d.box for d in from_uint8], atol=1e-3)
    with pytest.raises(ValueError, match="multiple of 32"):
        model.detect(np.zeros((48, 48, 3), np.uint8))


def test_vqa_answers_the_structured_questions(model):
    scene = shapes.sample_scene(0, "validation", 2, 32)
    questions = [q.query for q in shapes_questions(scene.to_graph()).questions]
    vqa = judge.JudgeVQA(questions, detector=model.detect)
    image = shapes.render(scene)[0]
    assert [vqa(image, judge.question_text(q)) for q in questions] == ["yes"] * len(questions)


def test_loader_resumes_exactly():
    config = load_config("configs/shapes_judge.py:tiny")
    loader = make_loader(config.data, split="train", batch_size=2, seed=3, shard_index=1, shard_count=2)
    next(loader)
    state = loader.get_state()
    expected = next(loader)
    resumed = make_loader(config.data, split="train", batch_size=2, seed=3, shard_index=1, shard_count=2)
    resumed.set_state(state)
    got = next(resumed)
    assert sorted(got) == sorted(expected) == ["box", "colour", "example_id", "image", "shape", "size"]
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    assert got["image"].shape == (2, 32, 32, 3) and got["example_id"].tolist() == [6, 7]


def test_tiny_config_trains_through_the_loop(tmp_path):
    from t2ijax.train.loop import train

    config = load_config("configs/shapes_judge.py:tiny", ["total_steps=2", "tensorboard=False", "progress=False"])
    state = train(config, str(tmp_path))
    assert int(state.step) == 2
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(row["loss"]) for row in logged if "loss" in row) and any("loss" in r for r in logged)
