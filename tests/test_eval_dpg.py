"""DPG-Bench scoring: the official protocol on a hand-made CSV with a scripted VQA, and Shapes question graphs."""

import csv
import os

import numpy as np
import pytest

from t2ijax.data import shapes
from t2ijax.eval import dpg
from t2ijax.eval.judge import JudgeVQA

RES = 8
# item_id -> [(proposition_id, dependency, tuple, question)]
QUESTIONS = {
    "p1": [(1, "0", "entity - whole (cat)", "is there a cat?"),
           (2, "1", "attribute - color (cat, black)", "is the cat black?"),
           (3, "0", "entity - whole (hat)", "is there a hat?"),
           (4, "1,3", "relation - spatial (cat, hat, wear)", "is the cat wearing the hat?")],
    "p2": [(1, "0", "entity - whole (dog)", "is there a dog?"),
           (2, "1", "attribute - size (dog, big)", "is the dog big?"),
           (3, "1", "other - count (dog, ==2)", "are there two dogs?")],
    "p3": [(1, "0", "entity - whole (tree)", "is there a tree?"),
           (2, "1", "attribute - color (tree, green)", "is the tree green?"),
           (3, "2", "attribute - texture (tree, leafy)", "is the tree leafy?")],
}
# question -> answers on tiles (top-left, top-right, bottom-left, bottom-right)
ANSWERS = {
    "is there a cat?": ["yes", "yes", "no", "yes"],
    "is the cat black?": ["yes", "yes", "yes", "no"],
    "is there a hat?": ["yes", "no", "yes", "yes"],
    "is the cat wearing the hat?": ["yes", "yes", "yes", "yes"],
    "is there a dog?": ["yes", "no", "yes", "yes"],
    "is the dog big?": ["yes", "yes", "Yes", "no"],
    "are there two dogs?": ["yes", "yes", "no", "yes"],
    "is there a tree?": ["yes", "yes", "no", "yes"],
    "is the tree green?": ["yes", "no", "yes", "yes"],
    "is the tree leafy?": ["yes", "yes", "yes", "yes"],
}


def fake_vqa(tile, question):
    """Scripted VQA: the tile index is encoded in the tile's pixel value."""
    tile_index = int(np.asarray(tile)[0, 0, 0]) // 50 - 1
    return ANSWERS[question][tile_index]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpg")
    csv_path = root / "dpg_bench.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(dpg.CSV_COLUMNS)
        for item, rows in QUESTIONS.items():
            for pid, dep, tup, question in rows:
                cat = tup.split("(")[0].strip()
                w.writerow([item, f"prompt {item}", "k", pid, dep, cat.split("-")[0].strip(), cat, tup, question])
    image_dir = root / "images"
    os.makedirs(image_dir)
    tiles = [np.full((RES, RES, 3), 50 * (t + 1), np.uint8) for t in range(4)]
    for item in QUESTIONS:
        dpg.make_grid_2x2(tiles).save(image_dir / f"{item}.png")
    (image_dir / "dpg-bench_results.txt").write_text("results written into the image folder (quirk 5)\n")
    return str(csv_path), str(image_dir)


def test_official_protocol(bench):
    csv_path, image_dir = bench
    questions = dpg.read_dpg_csv(csv_path, skip_first_row=True)
    assert [q.proposition_id for q in questions["p1"].questions] == [2, 3, 4]  # quirk 2: first row dropped
    result = dpg.score_folder(image_dir, questions, fake_vqa, RES, dpg.DPGOptions.official())
    # p1 fails gating on its dropped parent (quirk 3) and is skipped with the non-image file (quirk 4/5).
    assert set(result.failed) == {"p1", "dpg-bench_results"} and "MissingParentError" in result.failed["p1"]
    # p2 tiles: 3/3, 0/3 (gated by "no" on the entity), 1/3 ("Yes" is not "yes"), 2/3 -> 0.5
    # p3 tiles: 3/3, 1/3 (leafy gated by green), 0/3, 3/3 -> 7/12
    expected = 100 * (0.5 + 7 / 12) / 2
    print(f"\nofficial DPG score {result.score:.6f} (hand-computed {expected:.6f}); L1 {result.l1}")
    assert result.score == pytest.approx(expected, abs=1e-9)
    # quirk 1: categories from the raw answers of the last (bottom-right) tile only
    assert result.l2 == pytest.approx({"attribute - color": 100.0, "attribute - size": 0.0,
                                       "attribute - texture": 100.0, "entity - whole": 100.0, "other - count": 100.0})
    assert result.l1 == pytest.approx({"attribute": 200 / 3, "entity": 100.0, "other": 100.0})


def test_fixed_protocol(bench):
    csv_path, image_dir = bench
    options = dpg.DPGOptions.fixed()
    questions = dpg.read_dpg_csv(csv_path, skip_first_row=options.skip_first_row)
    grids = {k: os.path.join(image_dir, f"{k}.png") for k in ("p1", "p2", "p3")}
    result = dpg.score_grids(grids, questions, fake_vqa, RES, options)
    # p1 tiles: 4/4, 2/4 (wearing gated by hat), 1/4 (black and wearing gated by cat), 3/4 -> 0.625
    expected = 100 * (0.625 + 0.5 + 7 / 12) / 3
    print(f"\nfixed DPG score {result.score:.6f} (hand-computed {expected:.6f})")
    assert result.score == pytest.approx(expected, abs=1e-9) and not result.failed
    # categories pool the raw answers of all tiles: entity-whole is 12 yes out of 16
    assert result.l2["entity - whole"] == pytest.approx(75.0)
    # a prompt without an image scores 0 instead of dropping out
    missing = dpg.score_grids({"p2": grids["p2"]}, questions, fake_vqa, RES, options)
    assert missing.score == pytest.approx(100 * 0.5 / 3) and set(missing.failed) == {"p1", "p3"}
    lenient = dpg.score_grids(grids, questions, fake_vqa, RES, dpg.DPGOptions.fixed(exact_yes=False))
    # accepting "Yes": p2 tile 3 becomes 2/3 -> p2 = 7/12
    assert lenient.score == pytest.approx(100 * (0.625 + 7 / 12 + 7 / 12) / 3)


def test_gating_order():
    qs = [dpg.Question(3, "c", "x-y", (2,)), dpg.Question(1, "a", "x-y"), dpg.Question(2, "b", "x-y", (1,))]
    raw = {1: 0.0, 2: 1.0, 3: 1.0}
    # the official single in-place pass misses the chain when a child comes before its parent
    assert dpg.gate(qs, raw, in_place_order=True) == {1: 0.0, 2: 0.0, 3: 1.0}
    assert dpg.gate(qs, raw, in_place_order=False) == {1: 0.0, 2: 0.0, 3: 0.0}


def test_bad_csv(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("item_id,text\nx,y\n")
    with pytest.raises(ValueError, match="missing DPG-Bench columns"):
        dpg.read_dpg_csv(str(path))


def test_shapes_question_graph_and_judge_vqa():
    ex = shapes.make_example(0, "test", 2, 32)
    pq = dpg.shapes_questions(ex.scene.to_graph(), item_id="s2", prompt=ex.captions["dense"])
    ids = {q.proposition_id for q in pq.questions}
    assert all(d == 0 or d in ids for q in pq.questions for d in q.dependencies)
    assert {q.category for q in pq.questions} >= {"entity-whole", "attribute-color", "attribute-size",
                                                  "other-count"}
    vqa = JudgeVQA([q.query for q in pq.questions])
    right = dpg.score_tiles([ex.image] * 4, pq, vqa, dpg.DPGOptions.official())
    other = shapes.make_example(0, "test", 5, 32)
    wrong = dpg.score_tiles([other.image] * 4, pq, vqa, dpg.DPGOptions.official())
    print(f"\nShapes DSG score: own render {100 * right.score:.1f}, other scene {100 * wrong.score:.1f}")
    assert right.score == 1.0 and wrong.score < 0.7
    grid = dpg.make_grid_2x2([ex.image, other.image, ex.image, other.image])
    tiles = [np.asarray(grid.crop(b)) for b in dpg.tile_boxes(32)]
    assert np.array_equal(tiles[1], other.image) and np.array_equal(tiles[2], ex.image)


def test_bundled_prompts():
    prompts = dpg.load_prompts()
    assert len(prompts) == 1065 and len({p["id"] for p in prompts}) == 1065
    assert all(p["prompt"].strip() for p in prompts)
