"""ERNIE-ViLG 2.0 "knowledge" for the input pipeline: key words, caption completion, object detections.

ERNIE-ViLG 2.0 (arXiv 2210.15257) trains with

  * key words: the tokens of the caption's nouns, adjectives, numerals, verbs and pronouns get emphasised
    cross-attention (the pipeline's "key_token_mask");
  * object regions: detected objects get a weighted denoising loss ("boxes", "masks", "object_token_mask");
  * caption completion: detected objects the caption does not mention are appended to it
    ("grey cat and brown dog" + "bowl" -> "grey cat and brown dog, bowl").

The key words and objects come from pluggable providers, none of which downloads anything at run time:

  key words  "annotations" (the Shapes dataset's annotated key spans), "heuristic" (`heuristic_key_spans`, a
             light English part-of-speech heuristic with no dependencies) or "spacy" (`spacy_key_spans`: spaCy
             and its English model, installed by the user beforehand);
  objects    the Shapes scene graph, a per-row "objects" field of an image folder's metadata (a precomputed
             detector run) or a detector callable named "package.module:function" (`load_detector`).

Every span is a character span [start, end, kind] on the text it was computed from.
"""

from __future__ import annotations

import functools
import importlib
import re
from typing import Callable, Sequence

import numpy as np

KEY_WORD_PROVIDERS = ("annotations", "heuristic", "spacy")
SPACY_MODEL = "en_core_web_sm"
SPACY_KEY_POS = frozenset({"NOUN", "PROPN", "VERB", "ADJ", "NUM", "PRON"})

# Closed-class English words that are not key words: articles, determiners, prepositions, conjunctions,
# auxiliary / copula / modal verbs, expletive "it" / "there", wh-words, negation and a few grammatical adverbs.
FUNCTION_WORDS = frozenset("""
a an the
this that these those each every some any no all both either neither such another other several
my your his its our their whose
of on in at to from with by for about above below over under into onto upon between among amongst through
throughout across behind beside besides near off out up down around along against after before during
within without inside outside toward towards beneath underneath via per like unlike than as atop amid
and or but nor so yet if because while although though whether unless until since whereas
be am is are was were been being has have had having do does did doing
can could will would shall should may might must
there it
which that who whom what where when how why
not very too also just then here
""".split())
NUMBER_WORDS = frozenset("""
zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen
seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million
billion dozen
""".split())
# A word: letters / digits joined by apostrophes or hyphens ("dog's", "t-shirt"), or a number with separators.
_WORD = re.compile(r"\d+(?:[.,]\d+)+|[^\W_]+(?:['\u2019\-][^\W_]+)*")
_DIGITS = re.compile(r"\d+(?:[.,]\d+)*")


def _is_function_word(word: str) -> bool:
    w = word.lower().replace("\u2019", "'")
    if w in FUNCTION_WORDS or w.endswith("n't"):  # "isn't", "don't", "can't": negated auxiliaries
        return True
    if "'" in w:  # "it's", "there's", "that'll": a clitic on a function word
        return w.split("'", 1)[0] in FUNCTION_WORDS
    return False


def heuristic_key_spans(text: str) -> list[list]:
    """Key words of English `text` by a light part-of-speech heuristic (no dependencies): every word that is not
    a closed-class function word (`FUNCTION_WORDS`: articles, determiners, prepositions, conjunctions,
    auxiliaries, "there", "it", ...) is a key word; punctuation never is. Returns [start, end, kind] character
    spans on `text`, kind "number" for number words and digits ("three", "12", "1.5"), else "word"."""
    out = []
    for m in _WORD.finditer(text):
        word = m.group()
        if _is_function_word(word):
            continue
        kind = "number" if word.lower() in NUMBER_WORDS or _DIGITS.fullmatch(word) else "word"
        out.append([m.start(), m.end(), kind])
    return out


class MissingDependencyError(ImportError):
    """An optional knowledge provider is not installed (t2ijax never installs or downloads one itself)."""


@functools.lru_cache(maxsize=4)
def spacy_pipeline(model: str = SPACY_MODEL):
    """The spaCy pipeline `model`, loaded once per process (cached); a clear error when it is not installed."""
    how = (f"key_words='spacy' needs spaCy and its English model {model!r}, installed beforehand (t2ijax never "
           f"downloads anything): `pip install spacy` and `python -m spacy download {model}`; or use "
           "key_words='heuristic', which needs nothing")
    try:
        import spacy
    except ImportError as err:
        raise MissingDependencyError(f"spaCy is not installed. {how}") from err
    try:
        return spacy.load(model)
    except OSError as err:
        raise MissingDependencyError(f"the spaCy model {model!r} is not installed ({err}). {how}") from err


def spacy_key_spans(text: str, model: str = SPACY_MODEL) -> list[list]:
    """Key words of `text` by spaCy's part-of-speech tagger: the tokens tagged NOUN, PROPN, VERB, ADJ, NUM or
    PRON, as [start, end, kind] character spans, kind the lower-cased universal POS tag ("noun", "num", ...).
    spaCy is imported lazily; the model must be installed beforehand (see `spacy_pipeline`)."""
    doc = spacy_pipeline(model)(text)
    return [[t.idx, t.idx + len(t.text), t.pos_.lower()] for t in doc if t.pos_ in SPACY_KEY_POS]


def key_spans(text: str, provider: str, annotated: Sequence | None = None) -> list[list]:
    """Key-word spans of `text` from `provider`: "annotations" (`annotated`, the dataset's own [start, end, kind]
    spans on `text`), "heuristic" (`heuristic_key_spans`) or "spacy" (`spacy_key_spans`)."""
    if provider == "annotations":
        if annotated is None:
            raise ValueError("key_words='annotations' needs annotated key spans, which only the Shapes dataset "
                             "has; use key_words='heuristic' or 'spacy'")
        return [list(s) for s in annotated]
    if provider == "heuristic":
        return heuristic_key_spans(text)
    if provider == "spacy":
        return spacy_key_spans(text)
    raise ValueError(f"unknown key-word provider {provider!r}; expected one of {KEY_WORD_PROVIDERS}")


def phrase_pattern(phrase: str) -> re.Pattern | None:
    """Case-insensitive, whole-word pattern of `phrase` (any whitespace run between its words); None if empty."""
    words = phrase.split()
    if not words:
        return None
    return re.compile(r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)", re.IGNORECASE)


def find_phrase(text: str, phrase: str) -> tuple[int, int] | None:
    """(start, end) of the first case-insensitive, whole-word occurrence of `phrase` in `text` (any run of
    whitespace matches a space of the phrase), or None: "cat" is found in "a Cat." but not in "catalogue"."""
    pattern = phrase_pattern(phrase)
    m = pattern.search(text) if pattern is not None else None
    return None if m is None else (m.start(), m.end())


def complete_caption(text: str, labels: Sequence[str], sep: str = ", ") -> tuple[str, list[list[int]]]:
    """ERNIE-ViLG 2.0 caption completion: append, in order, each label whose phrase does not occur in the text
    (case-insensitive whole-word match, `find_phrase`, against the text completed so far, so repeated labels are
    appended once). Returns (new text, [[start, end]] character spans of the appended labels in it).

    complete_caption("grey cat and brown dog", ["bowl", "dog"]) -> ("grey cat and brown dog, bowl", [[24, 28]]);
    an empty (or blank) caption becomes the labels joined by `sep`. Trailing whitespace of the caption is
    dropped before appending; the spans of the rest of it stay valid.
    """
    out, spans = text, []
    for label in labels:
        label = " ".join(str(label).split())
        if not label or find_phrase(out, label) is not None:
            continue
        if not spans:
            out = out.rstrip()
        if out:
            out += sep
        spans.append([len(out), len(out) + len(label)])
        out += label
    return out, spans


def word_spans(text: str, span: Sequence[int]) -> list[list[int]]:
    """[start, end] spans of the whitespace-separated words of text[span[0]:span[1]], on `text`."""
    return [[span[0] + m.start(), span[0] + m.end()] for m in re.finditer(r"\S+", text[span[0]:span[1]])]


def load_detector(spec: str) -> Callable:
    """The object detector named "package.module:function" (imported with importlib; the function may be a
    dotted attribute path). It maps a uint8 (H, W, 3) image to a list of {"label": str, "box": [x0, y0, x1, y1]}
    with the box normalised to [0, 1] by the image's width and height."""
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"data.detector = {spec!r}: expected 'package.module:function'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"data.detector = {spec!r}: cannot import module {module_name!r} ({err}); install the "
                          "package that provides the detector or fix the name") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ImportError(f"data.detector = {spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"data.detector = {spec!r} is not callable")
    return obj


def parse_objects(objects, where: str = "objects") -> list[tuple[str, np.ndarray]]:
    """Validate detections [{"label": str, "box": [x0, y0, x1, y1]}] (box normalised, x0 <= x1, y0 <= y1) ->
    [(label, float32 (4,) box clipped to [0, 1])]; a clear error names `where` otherwise."""
    if not isinstance(objects, (list, tuple)):
        raise ValueError(f"{where}: expected a list of {{'label', 'box'}} objects, got {type(objects).__name__}")
    out = []
    for k, obj in enumerate(objects):
        label = obj.get("label") if isinstance(obj, dict) else None
        box = obj.get("box") if isinstance(obj, dict) else None
        try:
            box = np.asarray(box, np.float32)
        except (TypeError, ValueError):
            box = None
        if not isinstance(label, str) or box is None or box.shape != (4,) or not np.all(np.isfinite(box)) \
                or box[0] > box[2] or box[1] > box[3]:
            raise ValueError(f"{where}[{k}] = {obj!r}: expected {{'label': str, 'box': [x0, y0, x1, y1]}} with "
                             "x0 <= x1, y0 <= y1, normalised to [0, 1]")
        out.append((label, np.clip(box, 0.0, 1.0)))
    return out


def rasterise_boxes(boxes: np.ndarray, resolution: int) -> np.ndarray:
    """(N, 4) normalised boxes -> (N, resolution, resolution) float32 masks: the pixels whose centre lies in the
    box (x0 <= (x + 0.5) / resolution < x1, the same for y); all-zero boxes give empty masks."""
    centres = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    inx = (centres[None, :] >= boxes[:, 0:1]) & (centres[None, :] < boxes[:, 2:3])
    iny = (centres[None, :] >= boxes[:, 1:2]) & (centres[None, :] < boxes[:, 3:4])
    return (iny[:, :, None] & inx[:, None, :]).astype(np.float32)
