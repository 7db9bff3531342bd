"""The programmatic Shapes judge against the truth of what was drawn: own renders, realistic renders
(jitter, anti-aliasing, blur, noise, JPEG), shapeless cheats, and the shared relation rule."""

from collections import defaultdict

import numpy as np
import pytest

from t2ijax.data import shapes
from t2ijax.eval import dpg, judge
from t2ijax.eval import shapes_stress as st
from t2ijax.eval.dpg import shapes_questions

NUM_SCENES = 200


@pytest.fixture(scope="module")
def scenes():
    return [shapes.make_example(11, "test", i, 32 if i % 2 else 64) for i in range(NUM_SCENES + 1)]


def _queries(scene):
    return [q.query for q in shapes_questions(scene.to_graph()).questions]


def test_detects_every_object(scenes):
    for ex in scenes[:50]:
        found = judge.detect(ex.image)
        want = sorted((o.colour, o.shape, o.size) for o in ex.scene.objects)
        assert sorted((d.colour, d.shape, d.size) for d in found) == want
        for d in found:  # the fitted box centre is the object's box centre
            true = min(ex.scene.objects, key=lambda o: np.hypot(*np.subtract(o.centre, d.centre)))
            assert np.hypot(*np.subtract(true.centre, d.centre)) < 0.5
    ex = scenes[0]  # float [-1, 1] images are accepted too
    assert len(judge.detect(ex.image / 127.5 - 1.0)) == len(ex.scene.objects)


def test_own_renders_answered_correctly(scenes):
    total = correct = 0
    for ex in scenes[:NUM_SCENES]:
        answers = judge.judge(ex.image, _queries(ex.scene))
        total += len(answers)
        correct += sum(answers)
    print(f"\njudge accuracy on {NUM_SCENES} own renders: {100 * correct / total:.2f}% of {total} questions")
    assert correct == total


def test_mismatched_scene_fails_mismatched_questions(scenes):
    agree = total = false_q = said_no = 0
    for a, b in zip(scenes[:NUM_SCENES], scenes[1:NUM_SCENES + 1]):
        if a.scene.resolution != b.scene.resolution:
            b = shapes.make_example(11, "test", b.index, a.scene.resolution)
        questions = _queries(a.scene)
        truth = [judge.answer(q, judge.detections_from_scene(b.scene.to_graph())) for q in questions]
        answers = judge.judge(b.image, questions)
        total += len(questions)
        agree += sum(t == x for t, x in zip(truth, answers))
        false_q += truth.count(False)
        said_no += sum(1 for t, x in zip(truth, answers) if not t and not x)
    print(f"\njudge on mismatched renders: agrees with the truth on {100 * agree / total:.2f}% of {total}; "
          f"answers 'no' to {said_no}/{false_q} mismatched questions")
    assert false_q > total // 3
    assert said_no == false_q and agree == total


@pytest.mark.parametrize("resolution", [32, 64])
def test_realistic_renders_per_category(resolution):
    """Jitter, anti-aliasing, colour shift, noise and JPEG at three blur levels, validation scenes."""
    rng = np.random.default_rng(resolution)
    for blur, floor in ((0.0, 0.98), (0.8, 0.97), (1.2, 0.9)):
        right = defaultdict(list)
        for i in range(25):
            scene = shapes.sample_scene(0, "validation", i, resolution)
            image, drawn = st.realistic(scene, rng, blur=blur)
            questions = shapes_questions(scene.to_graph()).questions
            found = judge.detect(image)
            for q in questions:
                right[q.category].append(judge.answer(q.query, found) == judge.answer(q.query, drawn))
        accuracy = {c: float(np.mean(v)) for c, v in right.items()}
        print(f"\n{resolution} px blur {blur}: " + ", ".join(f"{c} {100 * a:.1f}%" for c, a in accuracy.items()))
        assert min(accuracy.values()) >= floor, (blur, accuracy)


@pytest.mark.parametrize("resolution", [32, 64])
def test_shapeless_marks_are_not_objects(resolution):
    rng = np.random.default_rng(0)
    accepted = defaultdict(int)
    for i in range(20):
        scene = shapes.sample_scene(0, "validation", i, resolution)
        for kind in ("bars", "ellipses", "blobs"):
            image = st.degrade(st.draw(st.cheat(scene, kind, rng), resolution), rng, blur=0.5, noise=4.0)
            accepted[kind] += len(judge.detect(image))
            for c in judge.analyse(image):
                assert c.rejected or kind == "blobs", (kind, c)
    # Lobed blobs fit a circle as well as generated circles do: the judge takes most for circles (docs/judge.md).
    print(f"\n{resolution} px: components accepted as objects: {dict(accepted)}")
    assert accepted["bars"] == accepted["ellipses"] == 0
    # Two objects of one colour merged into one patch are not one shape.
    side = shapes.side_length("large", resolution)
    merged = [st.Mark("square", "red", (4, 4, 4 + side, 4 + side), "large"),
              st.Mark("square", "red", (4 + side // 2, 4, 4 + side // 2 + side, 4 + side), "large")]
    assert judge.detect(st.draw(merged, resolution)) == []
    assert judge.detect(np.full((resolution, resolution, 3), 255, np.uint8)) == []


def _one_object(inside, resolution, rng, colour="green", blur=0.8):
    """An image of one object (`inside(box, py, px)` in a jittered box around the centre, 8x supersampled),
    blurred, noised and JPEG-compressed like a generated image."""
    side = shapes.side_length("large", resolution) * rng.uniform(0.8, 1.0)
    cx, cy = resolution / 2 + rng.uniform(-2, 2), resolution / 2 + rng.uniform(-2, 2)
    py, px = shapes.sample_points(resolution, resolution, supersample=8)
    ink = shapes.pixel_fraction(inside((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), py, px), 8)
    white, rgb = np.asarray(shapes.BACKGROUND_RGB, np.float32), np.asarray(shapes.PALETTE[colour], np.float32)
    image = white + ink[..., None] * (rgb - white)
    return st.degrade(np.clip(np.round(image), 0, 255).astype(np.uint8), rng, blur=blur, noise=4.0, jpeg_quality=85)


def _stretched(inside, aspect):
    """`inside` drawn in its box made `aspect` times wider than tall, about the same centre and area."""
    def stretched(box, py, px):
        x0, y0, x1, y1 = box
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        w, h = half * np.sqrt(aspect), half / np.sqrt(aspect)
        return inside((cx - w, cy - h, cx + w, cy + h), py, px)
    return stretched


@pytest.mark.parametrize("resolution", [32, 64])
def test_definitions_blunt_triangles_rounded_squares_and_the_stretch_line(resolution):
    """The definitions of docs/judge.md on the shapes generated images have: blunt triangles are triangles,
    squares a little taller or wider than square are squares, superellipses are circles below n = 3 and
    squares above, and a patch drawn more than 1.5 times longer than wide is no object, however blurred."""
    rng = np.random.default_rng(resolution)

    def verdicts(inside, count=6, blur=0.8):
        out = []
        for _ in range(count):
            found = judge.analyse(_one_object(inside, resolution, rng, blur=blur))
            accepted = [c.detection.shape for c in found if not c.rejected]
            out.append(accepted[0] if len(accepted) == 1 else "rejected" if found and not accepted else "several")
        return out

    def blunt(box, py, px):
        return shapes.rounded_triangle_inside(box, 0.2 * (box[2] - box[0]), py, px)

    assert verdicts(blunt) == ["triangle"] * 6
    assert verdicts(_stretched(lambda b, py, px: shapes.superellipse_inside(b, np.inf, py, px), 1.35)) == ["square"] * 6
    assert verdicts(_stretched(lambda b, py, px: shapes.superellipse_inside(b, 2.0, py, px), 1.3)) == ["circle"] * 6
    assert verdicts(lambda b, py, px: shapes.superellipse_inside(b, 2.5, py, px)) == ["circle"] * 6
    assert verdicts(lambda b, py, px: shapes.superellipse_inside(b, 4.0, py, px)) == ["square"] * 6
    for blur in (0.0, 1.2):  # blur makes a patch rounder; what was drawn decides
        assert verdicts(_stretched(lambda b, py, px: shapes.superellipse_inside(b, 2.0, py, px), 1.8),
                        blur=blur) == ["rejected"] * 6


def test_touching_objects_of_one_colour_are_split():
    touching = [st.Mark("square", "blue", (4, 8, 16, 20), "large"), st.Mark("circle", "blue", (16, 8, 28, 20), "large")]
    found = judge.detect(st.draw(touching, 32))
    assert sorted(d.shape for d in found) == ["circle", "square"]


def test_relations_use_the_captions_rule():
    # The caption states the dominant-axis relation; the judge answers with the same function.
    ex = next(e for e in (shapes.make_example(0, "validation", i, 32) for i in range(200))
              if len(e.scene.objects) >= 2)
    for a, rel, b in ex.scene.relations:
        assert shapes.spatial_relation(ex.scene.objects[a].centre, ex.scene.objects[b].centre) == rel
    far_right_slightly_below = ((20.0, 12.0), (4.0, 10.0))
    assert shapes.spatial_relation(*far_right_slightly_below) == "right of"
    assert not shapes.relation_holds(*far_right_slightly_below, "below", tolerance=judge.RELATION_TIE)
    near_diagonal = ((14.0, 13.0), (4.0, 4.0))  # dx 10, dy 9: "right of", but within the tie tolerance
    assert shapes.relation_holds(*near_diagonal, "right of") and not shapes.relation_holds(*near_diagonal, "below")
    assert shapes.relation_holds(*near_diagonal, "below", tolerance=judge.RELATION_TIE)
    assert not shapes.relation_holds(*near_diagonal, "above", tolerance=judge.RELATION_TIE)
    det = [judge.Detection("red", "circle", "small", (0, 0, 1, 1), (14.0, 13.0), 1.0, 1.0),
           judge.Detection("blue", "square", "small", (0, 0, 1, 1), (4.0, 4.0), 1.0, 1.0)]
    q = {"type": "relation", "ref": {"colour": "red"}, "relation": "below", "ref2": {"colour": "blue"}}
    assert judge.answer(q, det) and not judge.answer({**q, "relation": "left of"}, det)


def test_question_graph_counts_each_binding_once():
    for i in range(30):
        graph = shapes.sample_scene(0, "test", i, 32).to_graph()
        questions = shapes_questions(graph).questions
        n, d = len(graph["objects"]), len({o["shape"] for o in graph["objects"]})
        assert len(questions) == 2 * d + 3 * n
        bindings = [q.query for q in questions if q.category == "attribute-color"]
        assert sorted((b["value"], b["ref"]["shape"]) for b in bindings) == sorted(
            (o["colour"], o["shape"]) for o in graph["objects"])
        assert not any(q.query["type"] == "shape" for q in questions)


def test_cheats_score_what_an_oracle_gives():
    options = dpg.DPGOptions.fixed()
    rng = np.random.default_rng(1)
    for kind, expect_zero in (("bars", True), ("ellipses", True), ("blank", True), ("swapped", False),
                              ("palette", False)):
        oracle, judged = [], []
        for i in range(12):
            scene = shapes.sample_scene(0, "test", i, 32)
            pq = shapes_questions(scene.to_graph(), str(i))
            marks = [st.cheat(scene, kind, rng) for _ in range(4)]
            queries = [q.query for q in pq.questions]
            oracle.append(dpg.score_tiles([st.truth(m) for m in marks], pq,
                                          judge.JudgeVQA(queries, detector=lambda x: x), options).score)
            judged.append(dpg.score_tiles([st.draw(m, 32) for m in marks], pq, judge.JudgeVQA(queries), options).score)
        print(f"\n{kind}: oracle {100 * np.mean(oracle):.1f}, judge {100 * np.mean(judged):.1f}")
        assert np.allclose(judged, oracle)
        assert (np.max(oracle) == 0.0) == expect_zero


def test_questions_and_vqa():
    blank = np.full((32, 32, 3), 255, np.uint8)
    q = {"type": "count", "ref": {}, "value": 0}
    assert judge.judge(blank, [q]) == [True]
    assert judge.question_text({"type": "relation", "ref": {"colour": "red", "shape": "circle"}, "relation": "left of",
                                "ref2": {"shape": "square"}}) == "Is the red circle to the left of the square?"
    with pytest.raises(ValueError, match="unknown question type"):
        judge.answer({"type": "texture", "ref": {}}, [])
    vqa = judge.JudgeVQA([q])
    assert vqa(blank, judge.question_text(q)) == "yes"
    with pytest.raises(KeyError, match="structured form"):
        vqa(blank, "Is there a dog?")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        judge.detect(np.zeros((32, 32)))


def test_done_when_through_evaluate(tmp_path):
    """Issue #10's bars through the public `evaluate` on the demo config's data (first 24 prompts per split;
    all 100 are in docs/judge.md)."""
    from t2ijax.config_utils import load_config
    from t2ijax.eval.evaluate import evaluate

    data = load_config("configs/demo_shapes.py").data
    for split in ("test", "validation"):
        def score(kind="truth", blur=0.0):
            r = evaluate(st.scene_sampler(data, split, kind=kind, blur=blur), benchmark="shapes", data_config=data,
                         split=split, num_prompts=24, out_dir=str(tmp_path / f"{split}_{kind}_{blur}"), grid_images=1)
            return r["dpg_score"], r["dpg_l2"]["entity-whole"]
        truth, blurred, bars, ellipses, blank = (score(), score(blur=0.8), score("bars"), score("ellipses"),
                                                 score("blank"))
        print(f"\n{split}: truth {truth[0]:.1f}, blur 0.8 {blurred[0]:.1f}, bars {bars}, ellipses {ellipses}, "
              f"blank {blank[0]:.1f}")
        assert truth[0] >= 95 and blurred[0] >= 90
        for overall, entity in (bars, ellipses):
            assert overall <= 12 and entity <= 5
        assert blank[0] <= 1


def test_judge_choice_and_rejudge(tmp_path):
    from t2ijax.config_utils import load_config
    from t2ijax.eval.evaluate import evaluate, rejudge

    data = load_config("configs/demo_shapes.py").data

    def never(prompts, seeds):
        raise AssertionError("sampled before the judge was checked")

    with pytest.raises(ValueError, match="unknown Shapes judge 'nope'"):
        evaluate(never, benchmark="shapes", data_config=data, num_prompts=2, out_dir=str(tmp_path / "x"), judge="nope")
    out = str(tmp_path / "eval")
    first = evaluate(st.scene_sampler(data, "validation", kind="swapped"), benchmark="shapes", data_config=data,
                     split="validation", num_prompts=6, out_dir=out, grid_images=1)
    assert first["judge"] == "programmatic" and first["oracle_floors"]["swapped"] > 0
    again = rejudge(out)
    assert again["dpg_score"] == pytest.approx(first["dpg_score"])
    assert [v["score"] for v in again["per_prompt"].values()] == [v["score"] for v in first["per_prompt"].values()]
    by_cnn = rejudge(out, judge="cnn")
    print(f"\nswapped shapes, 6 validation prompts: programmatic {first['dpg_score']:.1f}, cnn {by_cnn['dpg_score']:.1f}")
    assert by_cnn["judge"] == "cnn" and abs(by_cnn["dpg_score"] - first["dpg_score"]) < 10
