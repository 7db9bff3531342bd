"""DPG-Bench scoring (ELLA paper §4; TencentQQGYLab/ELLA dpg_bench/compute_dpg_bench.py @3c228f1).

Each prompt has yes/no questions in the Davidsonian-scene-graph form: a
proposition id, an L2 category ("entity-whole", "attribute-color",
"relation-spatial", "other-count", ...; L1 is the text before the first "-")
and the parent propositions it depends on (0 = none). For every prompt, 4
images are tiled into a 2x2 grid; every tile is asked every question, an
answer scores 1 only if it is exactly "yes", and a question whose parent scored
0 scores 0 (gating, in place, in question order). The DPG score is
100 x mean over prompts of (mean over tiles of mean over questions).

Two quirks of the official script are behind switches (`DPGOptions`):

  quirk 1  `last_tile_categories`: the L1/L2 category scores are computed from
           the raw (pre-gating) answers of the LAST tile only, pooled over
           questions (the script overwrites its per-tile copy). Fixed: pooled
           over all tiles.
  quirk 2  `skip_first_row`: the CSV reader drops data row 0, i.e. the first
           question of the first prompt. If another question of that prompt
           depends on it, gating fails with a KeyError and the whole prompt is
           skipped (quirk 3), like every image that raises (quirk 4).

`DPGOptions.official()` reproduces the published protocol (both quirks on,
exact "yes" match, failing images skipped instead of scored 0);
`DPGOptions.fixed()` turns both quirks off, scores missing or unreadable
images 0 and gates transitively whatever the question order. Both keep the
exact "yes" match (the official VQA contract; `exact_yes=False` relaxes it).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections import defaultdict
from typing import Callable, Mapping

import numpy as np

CSV_COLUMNS = ("item_id", "text", "keywords", "proposition_id", "dependency", "category_broad",
               "category_detailed", "tuple", "question_natural_language")
PIC_NUM = 4


@dataclasses.dataclass(frozen=True)
class Question:
    proposition_id: int
    text: str
    category: str  # L2 category, e.g. "attribute-color"
    dependencies: tuple[int, ...] = (0,)
    tuple: str = ""
    query: dict | None = None  # structured form for the programmatic judge (Shapes)

    @property
    def l1(self) -> str:
        return self.category.split("-")[0].strip()


@dataclasses.dataclass
class PromptQuestions:
    item_id: str
    prompt: str
    questions: list[Question]


@dataclasses.dataclass(frozen=True)
class DPGOptions:
    last_tile_categories: bool = True  # quirk 1
    skip_first_row: bool = True  # quirk 2
    exact_yes: bool = True  # official: answer == "yes"; otherwise strip/lower-case/drop a final "."
    skip_failed_images: bool = True  # official: skipped; otherwise the prompt scores 0
    ordered_gating: bool = True  # official: one in-place pass in question order; otherwise fully transitive
    pic_num: int = PIC_NUM

    @staticmethod
    def official(**kw) -> "DPGOptions":
        return DPGOptions(**kw)

    @staticmethod
    def fixed(**kw) -> "DPGOptions":
        return DPGOptions(**{"last_tile_categories": False, "skip_first_row": False,
                             "skip_failed_images": False, "ordered_gating": False, **kw})


def category_of_tuple(tuple_text: str) -> str:
    """The official L2 category: the tuple text before its first "(", stripped."""
    return tuple_text.split("(")[0].strip()


def read_dpg_csv(path: str, *, skip_first_row: bool = True) -> dict[str, PromptQuestions]:
    """Read the official `dpg_bench.csv` question graph (columns: `CSV_COLUMNS`).

    Reproduces the official reader: rows are grouped by consecutive `item_id`
    (a later group with the same id replaces the earlier one), the category
    comes from the `tuple` column, and with `skip_first_row` data row 0 is dropped.
    """
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(CSV_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing DPG-Bench columns {sorted(missing)}")
        rows = list(reader)
    out: dict[str, PromptQuestions] = {}
    previous = None
    for i, row in enumerate(rows):
        if skip_first_row and i == 0:
            continue
        item_id = row["item_id"]
        try:
            deps = tuple(int(d.strip()) for d in row["dependency"].split(","))
            pid = int(row["proposition_id"])
        except ValueError:
            raise ValueError(f"{path}: data row {i}: bad proposition_id/dependency "
                             f"{row['proposition_id']!r}/{row['dependency']!r}") from None
        q = Question(pid, row["question_natural_language"], category_of_tuple(row["tuple"]), deps, row["tuple"])
        if item_id == previous:
            questions = out[item_id].questions
            # A repeated proposition id replaces the earlier question in place (the official reader uses a dict).
            same = [k for k, x in enumerate(questions) if x.proposition_id == pid]
            if same:
                questions[same[0]] = q
            else:
                questions.append(q)
        else:
            out[item_id] = PromptQuestions(item_id, row["text"], [q])
        previous = item_id
    return out


def tile_boxes(resolution: int, pic_num: int = PIC_NUM) -> list[tuple[int, int, int, int]]:
    """The official crop boxes (left, top, right, bottom): TL, TR, BL, BR, first `pic_num`."""
    r = resolution
    return [(0, 0, r, r), (r, 0, 2 * r, r), (0, r, r, 2 * r), (r, r, 2 * r, 2 * r)][:pic_num]


def make_grid_2x2(images):
    """Tile 4 images (uint8 (H, W, 3) arrays or PIL images, equal size) into one 2x2 PIL image."""
    from PIL import Image

    if len(images) != 4:
        raise ValueError(f"a DPG-Bench grid needs 4 images, got {len(images)}")
    tiles = [img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img, np.uint8)) for img in images]
    w, h = tiles[0].size
    grid = Image.new("RGB", (2 * w, 2 * h))
    for tile, (left, top, _, _) in zip(tiles, tile_boxes(w)):
        grid.paste(tile.convert("RGB"), (left, top))
    return grid


class MissingParentError(KeyError):
    pass


def _is_yes(answer: str, exact: bool) -> float:
    if exact:
        return float(answer == "yes")
    return float(answer.strip().lower().rstrip(".") == "yes")


def gate(questions: list[Question], raw: dict[int, float], *, in_place_order: bool = True) -> dict[int, float]:
    """Zero every question with a parent scored 0.

    `in_place_order` reproduces the official loop (question order, updating in
    place: transitive only when parents come first; a missing parent raises
    `MissingParentError`). Otherwise gating is fully transitive.
    """
    scores = dict(raw)
    if in_place_order:
        for q in questions:
            for parent in q.dependencies:
                if parent == 0:
                    continue
                if parent not in scores:
                    raise MissingParentError(f"question {q.proposition_id} depends on missing question {parent}")
                if scores[parent] == 0:
                    scores[q.proposition_id] = 0.0
                    break
        return scores
    by_id = {q.proposition_id: q for q in questions}
    done: dict[int, float] = {}

    def resolve(pid, stack=()):
        if pid in done:
            return done[pid]
        if pid in stack:
            raise ValueError(f"dependency cycle through question {pid}")
        value = raw[pid]
        for parent in by_id[pid].dependencies:
            if parent == 0:
                continue
            if parent not in by_id:
                raise MissingParentError(f"question {pid} depends on missing question {parent}")
            if resolve(parent, stack + (pid,)) == 0:
                value = 0.0
        done[pid] = value
        return value

    for q in questions:
        resolve(q.proposition_id)
    return done


@dataclasses.dataclass
class PromptScore:
    item_id: str
    score: float  # mean over tiles of mean over questions (gated), in [0, 1]
    tile_scores: list[float]
    category_answers: list[tuple[str, float]]  # (L2 category, raw answer) pairs used for category scores
    answers: list[dict[int, str]]  # per tile: proposition id -> answer


def score_tiles(tiles, pq: PromptQuestions, vqa: Callable, options: DPGOptions) -> PromptScore:
    """Ask every question of a prompt on each of its images (tiles) and score them."""
    if not pq.questions:
        raise ValueError(f"prompt {pq.item_id!r} has no questions")
    tile_scores, category_answers, answers = [], [], []
    for tile in tiles:
        tile_answers = {q.proposition_id: vqa(tile, q.text) for q in pq.questions}
        raw = {pid: _is_yes(a, options.exact_yes) for pid, a in tile_answers.items()}
        gated = gate(pq.questions, raw, in_place_order=options.ordered_gating)
        tile_scores.append(sum(gated.values()) / len(gated))
        answers.append(tile_answers)
        tile_categories = [(q.category, raw[q.proposition_id]) for q in pq.questions]
        category_answers = tile_categories if options.last_tile_categories else category_answers + tile_categories
    return PromptScore(pq.item_id, sum(tile_scores) / len(tile_scores), tile_scores, category_answers, answers)


def score_prompt(grid, pq: PromptQuestions, vqa: Callable, resolution: int, options: DPGOptions) -> PromptScore:
    """Split one grid image (PIL) into the official tiles and score them."""
    return score_tiles([grid.crop(box) for box in tile_boxes(resolution, options.pic_num)], pq, vqa, options)


@dataclasses.dataclass
class DPGResult:
    score: float  # 100 x mean over prompts
    l1: dict[str, float]
    l2: dict[str, float]
    prompts: list[PromptScore]
    failed: dict[str, str]  # item id / file name -> error (skipped or scored 0, per options)
    options: DPGOptions

    def to_dict(self) -> dict:
        return {
            "dpg_score": self.score, "l1": self.l1, "l2": self.l2,
            "per_prompt": {p.item_id: 100.0 * p.score for p in self.prompts},
            "num_prompts": len(self.prompts), "failed": self.failed,
            "options": dataclasses.asdict(self.options),
        }


def aggregate(prompt_scores: list[PromptScore], failed: dict, options: DPGOptions) -> DPGResult:
    l2 = defaultdict(list)
    for p in prompt_scores:
        for category, value in p.category_answers:
            l2[category].append(value)
    l1 = defaultdict(list)
    for category, values in l2.items():
        l1[category.split("-")[0].strip()].extend(values)
    score = 100.0 * float(np.mean([p.score for p in prompt_scores])) if prompt_scores else float("nan")
    return DPGResult(score, {k: 100.0 * float(np.mean(v)) for k, v in sorted(l1.items())},
                     {k: 100.0 * float(np.mean(v)) for k, v in sorted(l2.items())},
                     prompt_scores, failed, options)


def score_grids(grids: Mapping[str, object], questions: Mapping[str, PromptQuestions], vqa: Callable,
                resolution: int, options: DPGOptions = DPGOptions()) -> DPGResult:
    """Score 2x2 grid images keyed by item id (PIL images, arrays or file paths).

    With `options.skip_failed_images` (official), a grid that raises (unknown
    id, unreadable file, missing gating parent) is left out of the mean; otherwise
    it scores 0, and every prompt of `questions` without a grid scores 0 too.
    """
    from PIL import Image

    scores, failed = [], {}
    keys = list(grids) if options.skip_failed_images else list(questions)
    for key in keys:
        try:
            if key not in grids:
                raise KeyError(f"no image for prompt {key!r}")
            if key not in questions:
                raise KeyError(f"no questions for image {key!r}")
            grid = grids[key]
            if isinstance(grid, (str, os.PathLike)):
                with Image.open(grid) as img:
                    grid = img.convert("RGB")
            elif not isinstance(grid, Image.Image):
                grid = Image.fromarray(np.asarray(grid, np.uint8))
            scores.append(score_prompt(grid, questions[key], vqa, resolution, options))
        except Exception as err:  # official quirk 4: any failing image is reported, not fatal
            failed[key] = f"{type(err).__name__}: {err}"
            if not options.skip_failed_images:
                scores.append(PromptScore(key, 0.0, [0.0] * options.pic_num, [], []))
    return aggregate(scores, failed, options)


def score_folder(image_dir: str, questions: Mapping[str, PromptQuestions], vqa: Callable, resolution: int,
                 options: DPGOptions = DPGOptions()) -> DPGResult:
    """Score a folder of `<item id>.<ext>` grids as the official script does (key = name up to the first ".")."""
    grids = {}
    for name in sorted(os.listdir(image_dir)):
        key = name.split(".")[0]
        if key in grids:
            raise ValueError(f"two images in {image_dir} map to prompt {key!r}")
        grids[key] = os.path.join(image_dir, name)
    return score_grids(grids, questions, vqa, resolution, options)


# --- Davidsonian scene graphs for Shapes scenes ----------------------------------------------


def shapes_questions(scene_graph: dict, item_id: str = "", prompt: str = "") -> PromptQuestions:
    """DSG questions (with dependencies and structured `query` for the judges) for a Shapes scene graph.

    entity-whole     "Is there a circle?"           one per distinct shape; no parent
    attribute-color  "Is the circle red?"           one per object: its colour-shape binding, asked once;
                                                    parent: its shape's entity
    attribute-size   "Is the red circle large?"     parent: its binding
    relation-spatial "Is the red circle to the left of the blue square?"   parents: both bindings
    other-count      "Are there exactly two circles?" per shape present (parent: its entity), and
                     "Are there exactly three objects?" (no parent)

    A scene has distinct (colour, shape) pairs, so each binding names one object. A scene of n objects with d
    distinct shapes asks 2d + 3n questions (d entities, n bindings, n sizes, n - 1 relations, d + 1 counts).
    """
    from t2ijax.eval.judge import question_text

    questions: list[Question] = []

    def add(category, query, deps=(0,)):
        pid = len(questions) + 1
        questions.append(Question(pid, question_text(query), category, tuple(deps) or (0,), "", query))
        return pid

    objects = scene_graph["objects"]
    entity = {}
    for o in objects:
        if o["shape"] not in entity:
            entity[o["shape"]] = add("entity-whole", {"type": "exists", "ref": {"shape": o["shape"]}})
    binding = {}
    for o in objects:
        binding[o["id"]] = add("attribute-color", {"type": "colour", "ref": {"shape": o["shape"]}, "value": o["colour"]},
                               (entity[o["shape"]],))
        add("attribute-size", {"type": "size", "ref": {"colour": o["colour"], "shape": o["shape"]}, "value": o["size"]},
            (binding[o["id"]],))
    by_id = {o["id"]: o for o in objects}
    for rel in scene_graph["relations"]:
        a, b = by_id[rel["subject"]], by_id[rel["object"]]
        add("relation-spatial", {"type": "relation", "ref": {"colour": a["colour"], "shape": a["shape"]},
                                 "relation": rel["relation"], "ref2": {"colour": b["colour"], "shape": b["shape"]}},
            (binding[a["id"]], binding[b["id"]]))
    for shape, count in scene_graph["counts"].items():
        if count:
            add("other-count", {"type": "count", "ref": {"shape": shape}, "value": count}, (entity[shape],))
    add("other-count", {"type": "count", "ref": {}, "value": len(objects)})
    return PromptQuestions(item_id, prompt, questions)


def load_prompts(path: str | None = None) -> list[dict]:
    """The 1,065 DPG-Bench prompts [{"id", "prompt"}] (bundled copy, Apache-2.0; see assets/README.md)."""
    import json

    if path is None:
        path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "assets", "dpg_bench_prompts.jsonl")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
