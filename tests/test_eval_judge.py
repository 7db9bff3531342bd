"""The programmatic Shapes judge: exact on the dataset's own renders, fails mismatched scenes."""

import numpy as np
import pytest

from t2ijax.data import shapes
from t2ijax.eval import judge
from t2ijax.eval.dpg import shapes_questions

NUM_SCENES = 200


@pytest.fixture(scope="module")
def scenes():
    return [shapes.make_example(11, "test", i, 32 if i % 2 else 64) for i in range(NUM_SCENES + 1)]


def test_detects_every_object(scenes):
    for ex in scenes[:50]:
        found = judge.detect(ex.image)
        want = sorted((o.colour, o.shape, o.size) for o in ex.scene.objects)
        assert sorted((d.colour, d.shape, d.size) for d in found) == want
    # float [-1, 1] images are accepted too
    ex = scenes[0]
    assert len(judge.detect(ex.image / 127.5 - 1.0)) == len(ex.scene.objects)


def test_own_renders_answered_correctly(scenes):
    total = correct = 0
    for ex in scenes[:NUM_SCENES]:
        questions = [q.query for q in shapes_questions(ex.scene.to_graph()).questions]
        answers = judge.judge(ex.image, questions)
        total += len(answers)
        correct += sum(answers)
    accuracy = correct / total
    print(f"\njudge accuracy on {NUM_SCENES} own renders: {100 * accuracy:.2f}% of {total} questions")
    assert accuracy >= 0.99


def test_mismatched_scene_fails_mismatched_questions(scenes):
    agree = total = false_q = said_no = 0
    for a, b in zip(scenes[:NUM_SCENES], scenes[1:NUM_SCENES + 1]):
        if a.scene.resolution != b.scene.resolution:
            b = shapes.make_example(11, "test", b.index, a.scene.resolution)
        questions = [q.query for q in shapes_questions(a.scene.to_graph()).questions]
        truth = [judge.answer(q, judge.detections_from_scene(b.scene.to_graph())) for q in questions]
        answers = judge.judge(b.image, questions)
        total += len(questions)
        agree += sum(t == x for t, x in zip(truth, answers))
        false_q += truth.count(False)
        said_no += sum(1 for t, x in zip(truth, answers) if not t and not x)
    print(f"\njudge on mismatched renders: agrees with the truth on {100 * agree / total:.2f}% of {total}; "
          f"answers 'no' to {said_no}/{false_q} mismatched questions")
    assert false_q > total // 3
    assert said_no / false_q >= 0.99 and agree / total >= 0.99


def test_questions_and_noise_robustness(scenes):
    ex = scenes[3]
    noisy = np.clip(ex.image.astype(np.int16) + np.random.default_rng(0).integers(-25, 26, ex.image.shape), 0, 255)
    assert len(judge.detect(noisy.astype(np.uint8))) == len(ex.scene.objects)
    blank = np.full((32, 32, 3), 255, np.uint8)
    assert judge.detect(blank) == []
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


def test_blur_and_noise_tolerance(scenes):
    from scipy import ndimage

    total = correct = 0
    for ex in scenes[:60]:
        img = ndimage.gaussian_filter(ex.image.astype(np.float32), sigma=(0.5, 0.5, 0))
        img = np.clip(img + np.random.default_rng(ex.index).normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        answers = judge.judge(img, [q.query for q in shapes_questions(ex.scene.to_graph()).questions])
        total += len(answers)
        correct += sum(answers)
    print(f"\njudge accuracy on blurred (sigma 0.5) + noisy (sd 8) renders: {100 * correct / total:.2f}%")
    assert correct / total >= 0.98
