"""T2I-CompBench-style per-category accuracy on Shapes, answered by the programmatic judge.

T2I-CompBench (Huang et al., 2023) scores attribute binding (colour, shape),
spatial relations and numeracy with per-category detectors / VQA. On Shapes the
judge plays that role. Categories map to the Shapes question graph
(`t2ijax.eval.dpg.shapes_questions`):

  entity   entity-whole questions      ("Is there a circle?")
  binding  attribute-color questions   ("Is the circle red?": the colour-shape binding of one object)
  size     attribute-size questions    ("Is the red circle large?")
  spatial  relation-spatial questions
  count    other-count questions

Two numbers per category: `question` accuracy (fraction of (image, question)
pairs answered yes, raw answers, no gating) and `image` accuracy (fraction of
images in which every question of the category is answered yes; images with no
question of the category do not count).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from t2ijax.eval import judge as judge_lib
from t2ijax.eval.dpg import shapes_questions

CATEGORIES = {
    "entity": "entity-whole",
    "binding": "attribute-color",
    "size": "attribute-size",
    "spatial": "relation-spatial",
    "count": "other-count",
}


def compbench_scores(scene_graphs, images_per_scene, detector=judge_lib.detect) -> dict:
    """Per-category accuracy (in %) for generated images of Shapes scenes.

    scene_graphs: list of scene-graph dicts (the prompts' ground truth).
    images_per_scene: list (same length) of lists of images (uint8 or [-1, 1] float, (H, W, 3)), or of what
        `detector` takes (e.g. detections already made: pass detector=lambda d: d).
    detector: image -> list of `judge.Detection` (the programmatic judge by default).
    """
    if len(scene_graphs) != len(images_per_scene):
        raise ValueError(f"{len(scene_graphs)} scene graphs but {len(images_per_scene)} image lists")
    per_question = defaultdict(list)
    per_image = defaultdict(list)
    for graph, images in zip(scene_graphs, images_per_scene):
        questions = shapes_questions(graph).questions
        for image in images:
            detections = detector(image)
            answers = [judge_lib.answer(q.query, detections) for q in questions]
            for name, category in CATEGORIES.items():
                hits = [a for q, a in zip(questions, answers) if q.category == category]
                if hits:
                    per_question[name].extend(hits)
                    per_image[name].append(all(hits))
    return {
        name: {
            "question": 100.0 * float(np.mean(per_question[name])) if per_question[name] else float("nan"),
            "image": 100.0 * float(np.mean(per_image[name])) if per_image[name] else float("nan"),
            "num_questions": len(per_question[name]),
        }
        for name in CATEGORIES
    }
