"""Feature cache: written once, read back bit-identical to direct encoder calls."""

import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as T

from t2ijax.data.feature_cache import FeatureCache, build_feature_cache, captions_sha256, masked_mean
from t2ijax.weights import load_text_encoder, load_tokenizer

WORDS = "a red cube on top of blue sphere cat dog sitting under the table photo of green".split()
CAPTIONS = ["a red cube on top of a blue sphere", "a cat", "a photo of a dog sitting under the table",
            "green", "a blue cat on a red table", "", "a dog"]  # 7 captions: the last batch of 3 is padded
MAX_LENGTH = 10
BATCH = 3


def make_tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    T.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                              unk_token="<unk>").save_pretrained(folder)


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5_with_tokenizer")
    torch.manual_seed(0)
    cfg = T.T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4,
                     feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
                     relative_attention_max_distance=16)
    T.T5EncoderModel(cfg).save_pretrained(folder, safe_serialization=True)
    make_tokenizer(folder)
    return str(folder)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip_text_with_tokenizer")
    torch.manual_seed(1)
    cfg = T.CLIPTextConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                           num_attention_heads=2, max_position_embeddings=MAX_LENGTH, eos_token_id=1,
                           projection_dim=8)
    T.CLIPTextModelWithProjection(cfg).save_pretrained(folder, safe_serialization=True)
    make_tokenizer(folder)
    return str(folder)


def direct_features(folder, captions, dtype):
    """The encoder called directly, batch by batch (same padded batch shape as the cache)."""
    tokenizer = load_tokenizer(folder)
    module, params = load_text_encoder(folder)
    apply = jax.jit(lambda p, ids, mask: module.apply({"params": p}, ids, mask, method="encode"))
    padded = captions + [""] * (-len(captions) % BATCH)
    out = []
    for i in range(0, len(padded), BATCH):
        enc = tokenizer(padded[i:i + BATCH], padding="max_length", truncation=True, max_length=MAX_LENGTH,
                        return_tensors="np")
        ids, mask = np.asarray(enc["input_ids"], np.int32), np.asarray(enc["attention_mask"], np.int32)
        hidden, pooled = apply(params, jnp.asarray(ids), jnp.asarray(mask))
        hidden = np.asarray(hidden)
        if pooled is None:
            pooled = masked_mean(hidden, mask)
        for j in range(BATCH):
            out.append((hidden[j].astype(dtype), mask[j].astype(np.uint8), np.asarray(pooled[j]).astype(dtype)))
    return out[:len(captions)]


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_t5_cache_round_trip_is_identical(t5_folder, tmp_path, dtype):
    out = tmp_path / "t5.array_record"
    meta = build_feature_cache(t5_folder, iter(CAPTIONS), out, batch_size=BATCH, max_length=MAX_LENGTH, dtype=dtype)
    assert meta["count"] == len(CAPTIONS)
    with open(f"{out}.json") as f:
        on_disk = json.load(f)
    assert on_disk["captions_sha256"] == captions_sha256(CAPTIONS)
    assert on_disk["max_length"] == MAX_LENGTH and on_disk["dtype"] == dtype
    assert on_disk["encoder_path"].endswith(t5_folder.rstrip("/").split("/")[-1])

    cache = FeatureCache(out)
    assert len(cache) == len(CAPTIONS)
    expected = direct_features(t5_folder, CAPTIONS, np.dtype(dtype))
    for i, (hidden, mask, pooled) in enumerate(expected):
        rec = cache[i]
        assert rec["caption"] == CAPTIONS[i]
        assert rec["hidden_states"].dtype == np.dtype(dtype) and rec["hidden_states"].shape == (MAX_LENGTH, 16)
        assert np.array_equal(rec["hidden_states"], hidden)
        assert np.array_equal(rec["attention_mask"], mask)
        assert np.array_equal(rec["pooled"], pooled)
    # random access, negative indices, bounds, pickling for Grain workers
    assert np.array_equal(cache.read(-1)["hidden_states"], expected[-1][0])
    with pytest.raises(IndexError):
        cache[len(CAPTIONS)]
    clone = pickle.loads(pickle.dumps(cache))
    assert np.array_equal(clone[2]["pooled"], expected[2][2])
    cache.close()


def test_clip_cache_stores_projected_pooled_features(clip_folder, tmp_path):
    out = tmp_path / "clip.array_record"
    build_feature_cache(clip_folder, CAPTIONS[:4], out, batch_size=BATCH, max_length=MAX_LENGTH, dtype="float32")
    with FeatureCache(out) as cache:
        expected = direct_features(clip_folder, CAPTIONS[:4], np.float32)
        for i, (hidden, mask, pooled) in enumerate(expected):
            assert pooled.shape == (8,)  # projection_dim: CLIP's own projected EOT features, not a mean
            assert np.array_equal(cache[i]["hidden_states"], hidden)
            assert np.array_equal(cache[i]["pooled"], pooled)


def test_grain_reads_the_cache(t5_folder, tmp_path):
    import grain

    out = tmp_path / "g.array_record"
    build_feature_cache(t5_folder, CAPTIONS, out, batch_size=BATCH, max_length=MAX_LENGTH, dtype="float32")
    dataset = grain.MapDataset.source(FeatureCache(out)).map(lambda r: r["pooled"])
    assert len(dataset) == len(CAPTIONS)
    ref = FeatureCache(out)
    assert np.array_equal(dataset[4], ref[4]["pooled"])


def test_bad_options_fail_before_compute(t5_folder, tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of"):
        build_feature_cache(t5_folder, CAPTIONS, tmp_path / "x", batch_size=2, max_length=8, dtype="bfloat16")
    with pytest.raises(FileNotFoundError, match="not found"):
        FeatureCache(tmp_path / "missing.array_record")


def _embeddings_cache(path, ids):
    from t2ijax.data.feature_cache import write_arrays

    rng = np.random.default_rng(0)
    records = [(i, {"text_embed": rng.normal(size=8).astype(np.float16),
                    "image_embed": np.full((8,), i, np.float32),
                    "tokens": rng.normal(size=(3, 4)).astype(np.float32)}) for i in ids]
    write_arrays(records, path, metadata={"what": "clip embeddings"})
    return dict(records)


def test_named_arrays_keyed_by_example_id(tmp_path):
    from t2ijax.data.feature_cache import write_arrays

    ids = [17, 3, 250, 9, 41]
    written = _embeddings_cache(tmp_path / "emb.array_record", ids)
    cache = FeatureCache(tmp_path / "emb.array_record")
    assert len(cache) == 5 and list(cache.example_ids) == ids
    assert cache.metadata["fields"]["tokens"] == {"shape": [3, 4], "dtype": "float32"}
    assert cache.metadata["what"] == "clip embeddings"
    batch = cache.lookup([250, 3])
    assert batch["image_embed"].shape == (2, 8) and batch["image_embed"][:, 0].tolist() == [250, 3]
    np.testing.assert_array_equal(batch["text_embed"][1], written[3]["text_embed"])
    assert batch["text_embed"].dtype == np.float16
    with pytest.raises(KeyError, match="example id 4 is not in feature cache"):
        cache.lookup([4])
    with pytest.raises(ValueError, match="has fields"):
        write_arrays([(0, {"a": np.zeros(2)}), (1, {"a": np.zeros(3)})], tmp_path / "bad.array_record")
    with pytest.raises(ValueError, match="not unique"):
        write_arrays([(0, {"a": np.zeros(2)}), (0, {"a": np.zeros(2)})], tmp_path / "dup.array_record")


def test_cached_feature_loader_trains_from_the_cache_alone(tmp_path):
    from t2ijax.data.feature_cache import CachedFeatureLoader

    ids = list(range(100, 110))
    _embeddings_cache(tmp_path / "emb.array_record", ids)
    path = str(tmp_path / "emb.array_record")
    loader = CachedFeatureLoader(path, batch_size=4, seed=3)
    batches = [next(loader) for _ in range(5)]  # 20 examples: two epochs
    seen = np.concatenate([b["example_id"] for b in batches])
    assert sorted(seen[:10]) == ids and sorted(seen[10:20]) == ids and list(seen[:10]) != list(seen[10:20])
    assert set(batches[0]) == {"text_embed", "image_embed", "tokens", "example_id"}  # no image decoded
    np.testing.assert_array_equal(batches[1]["image_embed"][:, 0], batches[1]["example_id"])
    # the loop builds it from config.data.name = "feature_cache"
    import ml_collections

    from t2ijax.train.loop import make_loader
    config = ml_collections.ConfigDict({"data": {"name": "feature_cache", "path": path}})
    via_loop = make_loader(config, split="train", batch_size=4, seed=3)
    np.testing.assert_array_equal(next(via_loop)["example_id"], batches[0]["example_id"])
    # exact resume
    resumed = CachedFeatureLoader(path, batch_size=4, seed=3)
    resumed.set_state({"next_batch": 2})
    np.testing.assert_array_equal(next(resumed)["example_id"], batches[2]["example_id"])
    # two shards read disjoint halves of each global batch
    a = CachedFeatureLoader(path, batch_size=2, seed=3, shard_index=0, shard_count=2)
    b = CachedFeatureLoader(path, batch_size=2, seed=3, shard_index=1, shard_count=2)
    joint = np.concatenate([next(a)["example_id"], next(b)["example_id"]])
    np.testing.assert_array_equal(joint, batches[0]["example_id"])


def test_text_feature_cache_records_are_example_ids(t5_folder, tmp_path):
    out = tmp_path / "t5.array_record"
    build_feature_cache(t5_folder, iter(CAPTIONS), out, batch_size=BATCH, max_length=MAX_LENGTH, dtype="float32")
    cache = FeatureCache(out)
    assert list(cache.example_ids) == list(range(len(CAPTIONS)))  # record i is the train split's row i
    batch = cache.lookup([2, 0])
    assert "caption" not in batch and batch["hidden_states"].shape == (2, MAX_LENGTH, 16)
    np.testing.assert_array_equal(batch["hidden_states"][0], cache[2]["hidden_states"])
    np.testing.assert_array_equal(batch["attention_mask"][1], cache[0]["attention_mask"])
