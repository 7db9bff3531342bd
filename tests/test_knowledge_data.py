"""ERNIE-ViLG 2.0 knowledge on the data side: key-word providers, caption completion, caption object dropout on
Shapes, objects (metadata or detector) and regions for image folders."""

import json
import os

import grain
import numpy as np
import pytest
from PIL import Image

from t2ijax.data import knowledge, shapes
from t2ijax.data.pipeline import crop_boxes, default_data_config, make_loader
from t2ijax.data.tfds_builders import prepare
from t2ijax.data.tokenizer import load_tokenizer, spans_to_token_mask, tokenize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DETECTOR_BOX = [0.25, 0.25, 0.75, 0.75]


def fake_detector(image):
    """A stand-in detector ("tests.test_knowledge_data:fake_detector"): one bowl in the middle of the image."""
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    return [{"label": "bowl", "box": list(DETECTOR_BOX)}]


# ---------------------------------------------------------------- key words


@pytest.mark.parametrize("text, words", [
    ("There is a grey cat and a brown dog on the mat.", [("grey", "word"), ("cat", "word"), ("brown", "word"),
                                                         ("dog", "word"), ("mat", "word")]),
    ("Three red circles are above 2 blue squares", [("Three", "number"), ("red", "word"), ("circles", "word"),
                                                    ("2", "number"), ("blue", "word"), ("squares", "word")]),
    ("It's a dog's life; they don't run, but she sings 1.5 songs.", [
        ("dog's", "word"), ("life", "word"), ("they", "word"), ("run", "word"), ("she", "word"),
        ("sings", "word"), ("1.5", "number"), ("songs", "word")]),
    ("a red circle, a blue square and a green triangle", [("red", "word"), ("circle", "word"), ("blue", "word"),
                                                          ("square", "word"), ("green", "word"),
                                                          ("triangle", "word")]),
    ("Of the, on it: has been  -- !", []),
])
def test_heuristic_key_spans(text, words):
    spans = knowledge.heuristic_key_spans(text)
    assert [(text[s:e], kind) for s, e, kind in spans] == words
    assert knowledge.key_spans(text, "heuristic") == spans


def test_key_span_providers():
    annotated = [[2, 5, "colour"]]
    assert knowledge.key_spans("a red circle", "annotations", annotated) == annotated
    with pytest.raises(ValueError, match="annotated key spans"):
        knowledge.key_spans("a red circle", "annotations")
    with pytest.raises(ValueError, match="unknown key-word provider"):
        knowledge.key_spans("a red circle", "nltk")


def test_spacy_provider_needs_an_installed_spacy():
    try:
        import spacy  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("spaCy is installed here; the missing-spaCy error cannot be observed")
    for call in (lambda: knowledge.spacy_key_spans("a grey cat"), lambda: knowledge.key_spans("a cat", "spacy")):
        with pytest.raises(ImportError, match=r"pip install spacy.*python -m spacy download en_core_web_sm") as err:
            call()
        assert isinstance(err.value, knowledge.MissingDependencyError)


# ---------------------------------------------------------------- caption completion


def test_complete_caption():
    text, spans = knowledge.complete_caption("grey cat and brown dog", ["bowl"])
    assert text == "grey cat and brown dog, bowl" and spans == [[24, 28]]  # the ERNIE-ViLG 2.0 figure
    text, spans = knowledge.complete_caption("A Grey Cat and a dog.", ["cat", "grey  cat", "bowl", "Bowl", "red ball",
                                                                      "bowl", "dog"])
    assert text == "A Grey Cat and a dog., bowl, red ball"  # present labels (any case) not appended, deduplicated
    assert [text[s:e] for s, e in spans] == ["bowl", "red ball"]
    text, spans = knowledge.complete_caption("an old catalogue", ["cat"])  # whole words only
    assert text == "an old catalogue, cat" and [text[s:e] for s, e in spans] == ["cat"]
    assert knowledge.complete_caption("a cat", ["cat"]) == ("a cat", [])
    assert knowledge.complete_caption("", ["bowl", "cup"]) == ("bowl, cup", [[0, 4], [6, 9]])
    assert knowledge.complete_caption("a cat ", ["dog"], sep="; ") == ("a cat; dog", [[7, 10]])
    assert knowledge.find_phrase("the catalogue of a cat", "cat") == (19, 22)
    assert knowledge.find_phrase("the catalogue", "cat") is None


# ---------------------------------------------------------------- Shapes


@pytest.fixture(scope="module")
def shapes_short(tmp_path_factory):
    cfg = default_data_config(data_dir=str(tmp_path_factory.mktemp("tfds")), num_train=32, num_val=8, num_test=8,
                              caption="short", max_length=24, seed=5, read_threads=0)
    prepare(cfg)
    return cfg


def _with(cfg, **overrides):
    cfg = cfg.copy_and_resolve_references()
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def _batches(cfg, n=2, batch_size=8, seed=0):
    loader = make_loader(cfg, split="train", batch_size=batch_size, seed=seed)
    return [next(loader) for _ in range(n)]


def _rows(batches):
    for batch in batches:
        for b in range(batch["index"].shape[0]):
            yield batch, b, shapes.make_example(5, "train", int(batch["index"][b]), 32)


def _decoded(batch, b):
    return load_tokenizer("shapes_word").decode(batch["input_ids"][b], skip_special_tokens=True)


def _labels(ex):
    return [f"{o.colour} {o.shape}" for o in ex.scene.objects]


def test_caption_object_dropout_and_completion(shapes_short):
    tok = load_tokenizer("shapes_word")
    dropped = _batches(_with(shapes_short, caption_object_dropout=0.5))
    missing = 0
    for batch, b, ex in _rows(dropped):
        text, n = _decoded(batch, b), len(ex.scene.objects)
        mentioned = [knowledge.find_phrase(text, label) is not None for label in _labels(ex)]
        assert any(mentioned)  # at least one object always stays
        missing += not all(mentioned)
        # left-out objects are still in the image: masks, boxes and validity untouched; no caption phrase
        np.testing.assert_array_equal(batch["masks"][b], ex.masks.astype(np.float32))
        np.testing.assert_array_equal(batch["boxes"][b], ex.record()["boxes"])
        assert batch["object_valid"][b].sum() == n
        rows = batch["object_token_mask"][b].sum(-1)
        assert [r == 2 for r in rows[:n]] == mentioned and not rows[n:].any()
        # the caption is the short caption of the kept objects, with exact key spans (colour + shape words)
        kept = shapes.Scene(32, tuple(o for o, m in zip(ex.scene.objects, mentioned) if m), ())
        built = shapes.short_caption(kept)
        enc = tokenize(tok, [built.text], 24, return_offsets=True)
        np.testing.assert_array_equal(batch["input_ids"][b], enc["input_ids"][0])
        np.testing.assert_array_equal(batch["key_token_mask"][b],
                                      spans_to_token_mask(enc["offsets"][0], built.spans(len(kept.objects))["key"]))
    assert missing > 0

    completed = _batches(_with(shapes_short, caption_object_dropout=0.5, complete_captions=True))
    appended = 0
    for (batch, b, ex), (plain, _, _) in zip(_rows(completed), _rows(dropped)):
        assert np.array_equal(batch["index"], plain["index"])  # same rows, same draws
        text, n = _decoded(batch, b), len(ex.scene.objects)
        assert all(knowledge.find_phrase(text, label) is not None for label in _labels(ex)), text
        appended += any(knowledge.find_phrase(_decoded(plain, b), label) is None for label in _labels(ex))
        # every object has its phrase (original or appended): 2 tokens, the colour and the shape
        rows = batch["object_token_mask"][b]
        assert (rows[:n].sum(-1) == 2).all() and not rows[n:].any()
        ids = batch["input_ids"][b]
        for i, o in enumerate(ex.scene.objects):
            assert tok.convert_ids_to_tokens(ids[rows[i] > 0].tolist()) == [o.colour, o.shape]
        # the key words are every colour and shape word, appended ones included
        marked = tok.convert_ids_to_tokens(ids[batch["key_token_mask"][b] > 0].tolist())
        assert sorted(marked) == sorted(w for label in _labels(ex) for w in label.split())
    assert appended > 0


def test_completion_alone_and_heuristic_key_words(shapes_short):
    plain = _batches(shapes_short, n=1)[0]
    # short captions name every object, so completion alone changes nothing
    completed = _batches(_with(shapes_short, complete_captions=True), n=1)[0]
    assert all(np.array_equal(plain[k], completed[k]) for k in plain)
    # the heuristic marks the same words as the annotations on Shapes short captions: colours and shapes
    heuristic = _batches(_with(shapes_short, key_words="heuristic"), n=1)[0]
    np.testing.assert_array_equal(heuristic["key_token_mask"], plain["key_token_mask"])
    dense = _batches(_with(shapes_short, caption="dense", max_length=80, key_words="heuristic"), n=1)[0]
    tok = load_tokenizer("shapes_word")
    for b in range(8):
        marked = set(tok.convert_ids_to_tokens(dense["input_ids"][b][dense["key_token_mask"][b] > 0].tolist()))
        assert marked and not marked & {"a", "an", "the", "is", "are", "on", "of", "and", "there", ",", "."}


def test_dropout_is_deterministic_and_keeps_the_flips(shapes_short):
    cfg = _with(shapes_short, caption_object_dropout=0.5)
    a, b = _batches(cfg, n=5), _batches(cfg, n=5)
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    other = _batches(cfg, n=5, seed=1)
    assert any(not np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, other))

    # flip-only batches are those of the flip draw the loader always made: random_map(seed + 1), first integer
    flip_only = _batches(_with(shapes_short, random_flip=True))
    draws = (grain.MapDataset.range(32).shuffle(seed=0).repeat(None)
             .random_map(lambda r, rng: (r, bool(rng.integers(2))), seed=1))
    tok = load_tokenizer("shapes_word")
    left, right = tok.convert_tokens_to_ids(["left", "right"])
    for k, (batch, b, ex) in enumerate(_rows(flip_only)):
        record, flip = draws[k]
        assert int(batch["record"][b]) == record
        image = ex.image[:, ::-1] if flip else ex.image
        np.testing.assert_allclose(batch["image"][b], image / 127.5 - 1.0, atol=1e-6)
        np.testing.assert_array_equal(batch["masks"][b], (ex.masks[:, :, ::-1] if flip else ex.masks))
        ids = tokenize(tok, [ex.captions["short"]], 24)["input_ids"][0]
        if flip:
            ids = np.where(ids == left, right, np.where(ids == right, left, ids))
        np.testing.assert_array_equal(batch["input_ids"][b], ids)
    # dropout draws after the flip: the same images are flipped
    both = _batches(_with(shapes_short, random_flip=True, caption_object_dropout=0.5, complete_captions=True))
    for x, y in zip(flip_only, both):
        for k in ("image", "masks", "boxes", "record", "object_valid"):
            np.testing.assert_array_equal(x[k], y[k])


def test_bad_knowledge_configs_are_rejected(shapes_short):
    with pytest.raises(ValueError, match="caption_object_dropout"):
        make_loader(_with(shapes_short, caption="dense", caption_object_dropout=0.3), split="train", batch_size=4,
                    seed=0)
    with pytest.raises(ValueError, match="caption_object_dropout"):
        make_loader(_with(shapes_short, caption_object_dropout=1.5), split="train", batch_size=4, seed=0)
    with pytest.raises(ValueError, match="key_words"):
        make_loader(_with(shapes_short, key_words="nltk"), split="train", batch_size=4, seed=0)
    with pytest.raises(ValueError, match="detector"):
        make_loader(_with(shapes_short, detector="x:y"), split="train", batch_size=4, seed=0)
    try:
        import spacy  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install spacy"):  # at loader creation, not in a Grain thread
            make_loader(_with(shapes_short, key_words="spacy"), split="train", batch_size=4, seed=0)


# ---------------------------------------------------------------- image folders

WORDS = ("a", "an", "and", "grey", "cat", "brown", "dog", "bowl", "empty", "room", "red", "ball", ",", ".")


def _word_tokenizer(folder):
    """A word-level tokenizer over `WORDS`, saved in `folder` (as a user's local tokenizer folder would be)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(("[PAD]", "[BOS]", "[EOS]", "[UNK]") + WORDS)}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizers.Lowercase(), pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]",
                                                       special_tokens=[("[BOS]", 1), ("[EOS]", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
                            unk_token="[UNK]").save_pretrained(folder)
    return str(folder)


CAT, DOG, BOWL, GONE = [0.05, 0.2, 0.4, 0.9], [0.5, 0.1, 0.9, 0.6], [0.4, 0.7, 0.6, 0.95], [0.0, 0.1, 0.1, 0.3]
ROWS = [  # (text, objects or None for no field); images are 40 high, 64 wide
    ("a grey cat and a brown dog", [{"label": "cat", "box": CAT}, {"label": "dog", "box": DOG},
                                    {"label": "bowl", "box": BOWL}]),
    ("an empty room", []),
    ("a red ball", None),  # no "objects": the detector's, if any
    ("a grey cat", [{"label": "dog", "box": GONE}, {"label": "Cat", "box": CAT}]),  # the dog is cropped away
]


@pytest.fixture(scope="module")
def folder_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("knowledge_folder")
    rng = np.random.default_rng(0)
    with open(root / "metadata.jsonl", "w") as f:
        for i, (text, objects) in enumerate(ROWS):
            Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)).save(root / f"{i}.png")
            row = {"file_name": f"{i}.png", "text": text}
            if objects is not None:
                row["objects"] = objects
            f.write(json.dumps(row) + "\n")
    return default_data_config(name="image_text_folder", folder=str(root), data_dir=str(root / "tfds"),
                               resolution=32, caption="short", max_length=16, read_threads=0,
                               tokenizer=_word_tokenizer(root / "tok"), key_words="heuristic")


def _folder_rows(cfg):
    loader = make_loader(cfg, split="train", batch_size=4, seed=0, num_epochs=1, shuffle=False)
    batch = next(loader)
    order = np.argsort(batch["index"])  # rows in metadata order (TFDS stores them in another)
    batch = {k: v[order] for k, v in batch.items()}
    assert batch["index"].tolist() == [0, 1, 2, 3]
    return loader, batch


def _expected_box(box):  # 64 x 40 -> shorter side 32: 51 x 32, crop 9 px on the left
    x0, y0, x1, y1 = box
    return np.clip([(x0 * 51 - 9) / 32, y0, (x1 * 51 - 9) / 32, y1], 0, 1).astype(np.float32)


def _expected_mask(box):
    c = (np.arange(32) + 0.5) / 32
    return ((c[:, None] >= box[1]) & (c[:, None] < box[3]) & (c[None, :] >= box[0]) & (c[None, :] < box[2]))


def _words(tok, batch, b, field=None, row=None):
    ids = batch["input_ids"][b]
    if field is not None:
        ids = ids[(batch[field][b] if row is None else batch[field][b, row]) > 0]
    return tok.convert_ids_to_tokens(ids.tolist())


def test_image_folder_objects_from_metadata(folder_config):
    tok = load_tokenizer(folder_config.tokenizer)
    loader, batch = _folder_rows(_with(folder_config, complete_captions=True))
    assert batch["boxes"].shape == (4, 4, 4) and batch["masks"].shape == (4, 4, 32, 32)
    assert batch["object_valid"].shape == (4, 4) and batch["object_token_mask"].shape == (4, 4, 16)
    assert batch["key_token_mask"].shape == (4, 16) and batch["masks"].dtype == np.float32
    np.testing.assert_array_equal(batch["object_valid"], [[1, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    expected = {0: [CAT, DOG, BOWL], 3: [CAT]}
    for b in range(4):
        boxes = [_expected_box(x) for x in expected.get(b, [])]
        for i in range(4):
            box = boxes[i] if i < len(boxes) else np.zeros(4, np.float32)
            np.testing.assert_allclose(batch["boxes"][b, i], box, atol=1e-6)
            np.testing.assert_array_equal(batch["masks"][b, i], _expected_mask(box) if i < len(boxes) else 0)
    np.testing.assert_allclose(crop_boxes(np.array([CAT]), 40, 64, 32)[0], _expected_box(CAT))
    # caption completion: the bowl is appended; the cropped-away dog is not; "Cat" is already there
    assert " ".join(_words(tok, batch, 0)[1:-1]).startswith("a grey cat and a brown dog , bowl")
    assert _words(tok, batch, 1)[1:4] == ["an", "empty", "room"] and _words(tok, batch, 3)[1:4] == ["a", "grey", "cat"]
    assert tok.convert_ids_to_tokens([batch["input_ids"][3][4]]) == ["[EOS]"]
    assert [_words(tok, batch, 0, "object_token_mask", i) for i in range(3)] == [["cat"], ["dog"], ["bowl"]]
    assert _words(tok, batch, 3, "object_token_mask", 0) == ["cat"] and not batch["object_token_mask"][3, 1:].any()
    assert _words(tok, batch, 0, "key_token_mask") == ["grey", "cat", "brown", "dog", "bowl"]
    assert _words(tok, batch, 1, "key_token_mask") == ["empty", "room"]
    assert loader.caption(int(batch["record"][0])) == "a grey cat and a brown dog"  # the stored one is unchanged

    # without completion: same regions, captions unchanged, the bowl has no phrase
    _, plain = _folder_rows(folder_config)
    for k in ("boxes", "masks", "object_valid", "image"):
        np.testing.assert_array_equal(plain[k], batch[k])
    assert _words(tok, plain, 0)[1:-1][:7] == ["a", "grey", "cat", "and", "a", "brown", "dog"]
    assert _words(tok, plain, 0)[8] == "[EOS]" and not plain["object_token_mask"][0, 2].any()
    # flips mirror the masks and boxes of the same rows
    flips = 0
    for seed in range(4):
        flipped = next(make_loader(_with(folder_config, random_flip=True), split="train", batch_size=4, seed=seed,
                                   num_epochs=1, shuffle=False))
        flipped = {k: v[np.argsort(flipped["index"])] for k, v in flipped.items()}
        for b in range(4):
            if np.array_equal(flipped["image"][b], plain["image"][b]):
                np.testing.assert_array_equal(flipped["masks"][b], plain["masks"][b])
                np.testing.assert_array_equal(flipped["boxes"][b], plain["boxes"][b])
            else:
                flips += 1
                np.testing.assert_array_equal(flipped["masks"][b], plain["masks"][b][:, :, ::-1])
                valid = plain["object_valid"][b] > 0
                np.testing.assert_allclose(flipped["boxes"][b][valid][:, [0, 2]],
                                           1 - plain["boxes"][b][valid][:, [2, 0]])
    assert flips > 0


def test_image_folder_detector(folder_config, monkeypatch):
    monkeypatch.syspath_prepend(REPO)  # "tests" importable as a namespace package however pytest was started
    detect = knowledge.load_detector("tests.test_knowledge_data:fake_detector")
    assert detect(np.zeros((4, 4, 3), np.uint8)) == [{"label": "bowl", "box": DETECTOR_BOX}]
    tok = load_tokenizer(folder_config.tokenizer)
    cfg = _with(folder_config, complete_captions=True, detector="tests.test_knowledge_data:fake_detector")
    _, batch = _folder_rows(cfg)
    # rows with an "objects" field keep theirs (even an empty one); row 2 has none: the detector's bowl
    np.testing.assert_array_equal(batch["object_valid"][:, 0], [1, 0, 1, 1])
    np.testing.assert_allclose(batch["boxes"][2, 0], _expected_box(DETECTOR_BOX), atol=1e-6)
    assert _words(tok, batch, 2)[1:6] == ["a", "red", "ball", ",", "bowl"]
    assert _words(tok, batch, 2, "object_token_mask", 0) == ["bowl"]


def test_bad_detectors_and_folder_configs(folder_config):
    with pytest.raises(ImportError, match="cannot import module 'no_such_package_t2ijax.detect'"):
        knowledge.load_detector("no_such_package_t2ijax.detect:run")
    with pytest.raises(ImportError, match="has no attribute 'no_such_function'"):
        knowledge.load_detector("t2ijax.data.knowledge:no_such_function")
    with pytest.raises(ValueError, match="package.module:function"):
        knowledge.load_detector("t2ijax.data.knowledge")
    with pytest.raises(ImportError, match="cannot import module"):  # at loader creation
        make_loader(_with(folder_config, detector="no_such_package_t2ijax:run"), split="train", batch_size=4, seed=0)
    with pytest.raises(ValueError, match="no key-word annotations"):
        make_loader(_with(folder_config, key_words="annotations", complete_captions=True), split="train",
                    batch_size=4, seed=0)
    with pytest.raises(ValueError, match="caption_object_dropout"):
        make_loader(_with(folder_config, caption_object_dropout=0.2), split="train", batch_size=4, seed=0)
    with pytest.raises(ValueError, match="'objects'"):
        knowledge.parse_objects([{"label": "cat", "box": [0.5, 0, 0.2, 1]}], "'objects'")


def test_folder_objects_are_checked_at_ingestion(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "0.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "0.png", "text": "x",
                                                         "objects": [{"label": "cat", "box": [0, 0, 1]}]}) + "\n")
    cfg = default_data_config(name="image_text_folder", folder=str(tmp_path), data_dir=str(tmp_path / "tfds"))
    with pytest.raises(ValueError, match=r"metadata.jsonl:1: 'objects'"):
        prepare(cfg)
