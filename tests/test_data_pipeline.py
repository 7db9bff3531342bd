"""TFDS ArrayRecord builders and Grain loaders (Shapes and image_text_folder)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from t2ijax.data import shapes
from t2ijax.data.pipeline import default_data_config, make_loader
from t2ijax.data.tfds_builders import ingest_report, prepare
from t2ijax.data.tokenizer import load_tokenizer, tokenize


@pytest.fixture(scope="module")
def shapes_config(tmp_path_factory):
    cfg = default_data_config(data_dir=str(tmp_path_factory.mktemp("tfds")), num_train=48, num_val=16,
                              num_test=16, max_length=96, seed=3)
    builder = prepare(cfg)
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 48, "validation": 16, "test": 16}
    assert any(f.endswith(".array_record-00000-of-00001") for f in os.listdir(builder.data_dir))
    return cfg


def _equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_shapes_batches(shapes_config):
    loader = make_loader(shapes_config, split="train", batch_size=8, seed=0)
    batch = next(loader)
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (8, 96)
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == np.int32
    assert batch["masks"].shape == (8, 4, 32, 32) and batch["boxes"].shape == (8, 4, 4)
    assert batch["object_token_mask"].shape == (8, 4, 96) and batch["key_token_mask"].shape == (8, 96)
    assert not any(v.dtype.kind in "OSU" for v in batch.values())
    for b in range(8):
        record = int(batch["record"][b])
        ex = shapes.make_example(3, "train", int(batch["index"][b]), 32)
        assert loader.caption(record) == ex.captions["dense"]
        assert loader.caption(record, "narrative") == ex.captions["narrative"]
        np.testing.assert_allclose(batch["image"][b], ex.image / 127.5 - 1.0, atol=1e-6)
        assert loader.scene_graph(record)["objects"] == ex.scene.to_graph()["objects"]
        n = len(ex.scene.objects)
        assert batch["object_valid"][b].sum() == n and batch["object_token_mask"][b, :n].sum(-1).min() == 3
        # the masks select the object colours in the image
        for i, o in enumerate(ex.scene.objects):
            pixels = ex.image[batch["masks"][b, i] > 0]
            assert np.all(pixels == shapes.PALETTE[o.colour])


def test_resume_determinism_and_epochs(shapes_config):
    a = make_loader(shapes_config, split="train", batch_size=8, seed=1)
    first = [next(a) for _ in range(3)]
    state = a.get_state()
    rest = [next(a) for _ in range(4)]
    b = make_loader(shapes_config, split="train", batch_size=8, seed=1)
    b.set_state(json.loads(json.dumps(state)))  # state survives a JSON round trip
    assert all(_equal(x, y) for x, y in zip(rest, [next(b) for _ in range(4)]))
    c = make_loader(shapes_config, split="train", batch_size=8, seed=1)
    assert all(_equal(x, next(c)) for x in first)
    d = make_loader(shapes_config, split="train", batch_size=8, seed=2)
    assert not np.array_equal(next(d)["record"], first[0]["record"])
    # one epoch covers each row once; the next epoch is reshuffled
    epoch = np.concatenate([x["record"] for x in first + rest[:3]])
    assert sorted(epoch) == list(range(48))
    assert not np.array_equal(np.concatenate([x["record"] for x in rest[3:4]]), first[0]["record"])
    finite = make_loader(shapes_config, split="validation", batch_size=4, seed=0, num_epochs=1, shuffle=False)
    assert [r for x in finite for r in x["record"]] == list(range(16))


def test_sharding_is_disjoint(shapes_config):
    seen = []
    for shard in range(3):
        loader = make_loader(shapes_config, split="train", batch_size=4, seed=0, shard_index=shard,
                             shard_count=3, num_epochs=1)
        assert loader.num_rows == 16
        seen.append({int(r) for x in loader for r in x["record"]})
    assert all(len(s) == 16 for s in seen) and not (seen[0] & seen[1] or seen[1] & seen[2] or seen[0] & seen[2])
    with pytest.raises(ValueError, match="shard_index"):
        make_loader(shapes_config, split="train", batch_size=4, seed=0, shard_index=3, shard_count=3)


def test_random_flip_keeps_regions_aligned(shapes_config):
    cfg = shapes_config.copy_and_resolve_references()
    cfg.random_flip = True
    cfg.caption = "dense"
    batch = next(make_loader(cfg, split="train", batch_size=16, seed=0))
    flipped = 0
    for b in range(16):
        ex = shapes.make_example(3, "train", int(batch["index"][b]), 32)
        is_flipped = not np.allclose(batch["image"][b], ex.image / 127.5 - 1.0, atol=1e-6)
        flipped += is_flipped
        for i, o in enumerate(ex.scene.objects):
            m = batch["masks"][b, i] > 0
            np.testing.assert_allclose(batch["image"][b][m], np.broadcast_to(
                np.asarray(shapes.PALETTE[o.colour]) / 127.5 - 1.0, (int(m.sum()), 3)), atol=1e-6)
            x0, y0, x1, y1 = batch["boxes"][b, i] * 32
            ys, xs = np.nonzero(m)
            assert xs.min() >= x0 - 1e-4 and xs.max() < x1 + 1e-4 and ys.min() >= y0 - 1e-4
    assert 0 < flipped < 16
    # flipped examples have "left" and "right" swapped in their token ids, so relations stay true
    tok = load_tokenizer("shapes_word")
    left, right = tok.convert_tokens_to_ids(["left", "right"])
    swapped = 0
    for b in range(16):
        ex = shapes.make_example(3, "train", int(batch["index"][b]), 32)
        expected = tokenize(tok, [ex.captions["dense"]], 96)["input_ids"][0]
        if not np.allclose(batch["image"][b], ex.image / 127.5 - 1.0, atol=1e-6):
            swapped += int(np.isin(expected, [left, right]).any())
            expected = np.where(expected == left, right, np.where(expected == right, left, expected))
        assert np.array_equal(batch["input_ids"][b], expected)
    assert swapped > 0


def test_several_caption_kinds_and_tokenizations(shapes_config, tmp_path):
    """A batch may carry several caption kinds, each with its own tokenizer and length (SUR: a short and a
    narrative caption per example; ELLA: a CLIP and an LLM tokenization)."""
    other = tmp_path / "other_tok"
    load_tokenizer("shapes_word").save_pretrained(other)  # a second tokenizer, from a folder
    cfg = shapes_config.copy_and_resolve_references()
    cfg.extra_captions = {"short": "short::24", "narrative": f"narrative:{other}:100"}
    loader = make_loader(cfg, split="train", batch_size=4, seed=0)
    batch = next(loader)
    assert batch["short_input_ids"].shape == (4, 24) and batch["narrative_input_ids"].shape == (4, 100)
    assert batch["short_attention_mask"].dtype == np.int32
    tok = load_tokenizer("shapes_word")
    for b in range(4):
        ex = shapes.make_example(3, "train", int(batch["index"][b]), 32)
        np.testing.assert_array_equal(batch["short_input_ids"][b], tokenize(tok, [ex.captions["short"]], 24)["input_ids"][0])
        np.testing.assert_array_equal(batch["narrative_input_ids"][b],
                                      tokenize(tok, [ex.captions["narrative"]], 100)["input_ids"][0])
        np.testing.assert_array_equal(batch["input_ids"][b], tokenize(tok, [ex.captions["dense"]], 96)["input_ids"][0])
    for bad in ({"x": "long"}, {"x": "short:tok:1"}, {"image": "short"}):
        cfg.extra_captions = bad
        with pytest.raises(ValueError, match="extra_captions"):
            make_loader(cfg, split="train", batch_size=4, seed=0)


def test_bad_config_is_rejected(shapes_config):
    with pytest.raises(ValueError, match="caption"):
        make_loader(default_data_config(caption="long"), split="train", batch_size=2, seed=0)
    with pytest.raises(ValueError, match="split"):
        make_loader(shapes_config, split="dev", batch_size=2, seed=0)
    with pytest.raises(KeyError, match="unknown data config field"):
        default_data_config(resolutoin=32)


def _write_folder(root, n, corrupt=()):
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(os.path.join(root, "metadata.jsonl"), "w") as f:
        for i in range(n):
            name = f"img_{i}.png" if i % 2 else f"img_{i}.jpg"
            path = os.path.join(root, name)
            if i in corrupt:
                with open(path, "wb") as g:
                    g.write(b"\x89PNG\r\n\x1a\n this is not an image")
            else:
                Image.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)).save(path)
            f.write(json.dumps({"file_name": name, "text": f"simple caption {i}",
                                "prompt": f"(masterpiece: 1.2), complex prompt {i}", "score": i}) + "\n")


def test_image_text_folder_skips_corrupt_images(tmp_path):
    folder = tmp_path / "surd"
    _write_folder(str(folder / "train"), 9, corrupt={4})
    _write_folder(str(folder / "test"), 3)
    cfg = default_data_config(name="image_text_folder", folder=str(folder), data_dir=str(tmp_path / "tfds"),
                              resolution=32, caption="dense", max_length=16, tokenizer="shapes_word")
    builder = prepare(cfg)
    report = ingest_report(builder)
    print("\ningest report:", {k: v["num_skipped"] for k, v in report.items()})
    assert report["train"]["num_skipped"] == 1 and report["train"]["skipped"][0]["file_name"] == "img_4.jpg"
    assert report["test"]["num_skipped"] == 0
    assert builder.info.splits["train"].num_examples == 8
    loader = make_loader(cfg, split="train", batch_size=4, seed=0, num_epochs=1)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["image"].shape == (4, 32, 32, 3)
    assert sorted(int(i) for b in batches for i in b["index"]) == [0, 1, 2, 3, 5, 6, 7, 8]
    record = int(batches[0]["record"][0])
    index = int(batches[0]["index"][0])
    assert loader.caption(record) == f"(masterpiece: 1.2), complex prompt {index}"  # dense -> "prompt"
    assert loader.caption(record, "short") == f"simple caption {index}"  # short -> "text"
    # the image is resized on the shorter side and centre-cropped
    original = np.asarray(Image.open(folder / "train" / f"img_{index}.{'png' if index % 2 else 'jpg'}").convert("RGB"))
    from t2ijax.data.preprocess import preprocess_image
    np.testing.assert_allclose(batches[0]["image"][0], preprocess_image(original, 32), atol=1e-6)
