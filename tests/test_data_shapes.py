"""Shapes scenes, captions, spans and the shapes_word tokenizer."""

import numpy as np
import pytest

from t2ijax.data import shapes
from t2ijax.data.tokenizer import load_tokenizer, shapes_word_tokenizer, spans_to_token_mask, tokenize

RES = (32, 64)


@pytest.fixture(scope="module")
def examples():
    return {(split, r): [shapes.make_example(7, split, i, r) for i in range(60)] for split in shapes.SPLITS for r in RES}


def test_deterministic_and_seed_dependent():
    a = shapes.make_example(3, "train", 5, 32)
    b = shapes.make_example(3, "train", 5, 32)
    c = shapes.make_example(4, "train", 5, 32)
    assert a.captions == b.captions and np.array_equal(a.image, b.image)
    assert a.captions != c.captions or not np.array_equal(a.image, c.image)


def test_scene_invariants(examples):
    for (split, r), exs in examples.items():
        for ex in exs:
            scene = ex.scene
            assert 1 <= len(scene.objects) <= shapes.MAX_OBJECTS
            assert ex.image.shape == (r, r, 3) and ex.image.dtype == np.uint8
            # no overlap: masks are disjoint and every object is visible with its exact colour
            n = len(scene.objects)
            assert ex.masks[:n].sum(0).max() == 1 and ex.masks[n:].sum() == 0
            for o, m in zip(scene.objects, ex.masks):
                assert m.sum() > 0 and np.all(ex.image[m.astype(bool)] == shapes.PALETTE[o.colour])
            background = ex.masks.sum(0) == 0
            assert np.all(ex.image[background] == shapes.BACKGROUND_RGB)
            # unique (colour, shape) per scene; relations agree with the geometry
            assert len({(o.colour, o.shape) for o in scene.objects}) == n
            for a, rel, b in scene.relations:  # the dominant-axis rule, checked independently of spatial_relation
                (ax, ay), (bx, by) = scene.objects[a].centre, scene.objects[b].centre
                horizontal = abs(ax - bx) >= abs(ay - by)
                assert rel == (("left of" if ax < bx else "right of") if horizontal else
                               ("above" if ay < by else "below"))
            assert sum(scene.counts().values()) == n


def test_held_out_pairs_only_in_test(examples):
    held = set(shapes.HELD_OUT_PAIRS)
    for (split, r), exs in examples.items():
        pairs = [{(o.colour, o.shape) for o in ex.scene.objects} for ex in exs]
        if split == "test":
            assert all(p & held for p in pairs)
        else:
            assert not any(p & held for p in pairs)


def test_captions_and_spans(examples):
    for ex in examples[("train", 32)] + examples[("test", 64)]:
        dense, short = ex.captions["dense"], ex.captions["short"]
        for o in ex.scene.objects:
            assert f"{o.size} {o.colour} {o.shape}" in dense
            assert f"{o.colour} {o.shape}" in short
            assert o.colour not in ex.captions["narrative"].split()  # narrative names colours indirectly
        for kind, text in ex.captions.items():
            spans = ex.spans[kind]
            for s, e, k in spans["key"]:
                word = text[s:e]
                vocab = {"colour": shapes.COLOURS, "size": shapes.SIZES, "count": shapes.NUMBER_WORDS}.get(k)
                if vocab is not None and kind != "narrative":
                    assert word.lower() in vocab, (kind, k, word)
                if k == "shape" and kind != "narrative":
                    assert word.rstrip("s") in shapes.SHAPES
            for (s, e), o in zip(spans["objects"], ex.scene.objects):
                phrase = text[s:e]
                if kind == "dense":
                    assert phrase == f"{o.size} {o.colour} {o.shape}"
                elif kind == "short":
                    assert phrase == f"{o.colour} {o.shape}"
                else:
                    assert any(p in phrase for p in shapes.NARRATIVE_COLOUR[o.colour])
        graph = ex.scene.to_graph()
        assert shapes.Scene.from_graph(graph) == ex.scene


def test_shapes_word_tokenizer(examples, tmp_path):
    tok = load_tokenizer("shapes_word")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    texts = [t for exs in examples.values() for ex in exs for t in ex.captions.values()]
    ids = tok(texts)["input_ids"]
    assert all(tok.unk_token_id not in row for row in ids)
    assert all(row[0] == tok.bos_token_id and row[-1] == tok.eos_token_id for row in ids)
    print(f"\nshapes_word: vocab {tok.vocab_size}, longest caption {max(map(len, ids))} tokens")
    enc = tokenize(tok, texts[:3], 96, return_offsets=True)
    assert enc["input_ids"].shape == (3, 96) and enc["input_ids"].dtype == np.int32
    assert np.all(enc["attention_mask"].sum(1) == [len(r) for r in ids[:3]])
    # key-word token mask covers exactly the key words
    ex = examples[("train", 32)][0]
    enc = tokenize(tok, [ex.captions["dense"]], 96, return_offsets=True)
    mask = spans_to_token_mask(enc["offsets"][0], ex.spans["dense"]["key"])
    marked = tok.convert_ids_to_tokens(enc["input_ids"][0][mask > 0].tolist())
    keywords = {w.lower() for w in shapes.COLOURS + shapes.SIZES + shapes.NUMBER_WORDS + shapes.SHAPES}
    keywords |= {s + "s" for s in shapes.SHAPES} | {"to", "the", "left", "right", "of", "above", "below"}
    assert marked and set(marked) <= keywords
    # save / reload through the generic path
    shapes_word_tokenizer().save_pretrained(tmp_path / "tok")
    again = load_tokenizer(str(tmp_path / "tok"))
    assert again(texts[:5])["input_ids"] == ids[:5]
    with pytest.raises(FileNotFoundError, match="neither"):
        load_tokenizer(str(tmp_path / "missing"))


def test_text_encoder_matches_tokenizer_call(examples):
    from t2ijax.data.tokenizer import CaptionTokenizer

    tok = load_tokenizer("shapes_word")
    texts = [ex.captions[k] for ex in examples[("train", 32)][:20] for k in ("dense", "narrative")] + ["", "left"]
    for max_length in (24, 128):  # truncating and padding
        encode = CaptionTokenizer(tok, max_length)
        reference = tokenize(tok, texts, max_length, return_offsets=True)
        for i, text in enumerate(texts):
            got = encode(text, return_offsets=True)
            for key in ("input_ids", "attention_mask", "offsets"):
                assert np.array_equal(got[key], reference[key][i]), (key, text)
