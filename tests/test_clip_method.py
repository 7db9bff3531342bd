"""The CLIP method (t2ijax/methods/clip.py): the InfoNCE loss, a tiny run through the one train loop, the export
(load_clip round trip, transformers parity), the CLIP feature cache and retrieval accuracy."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2ijax.config_utils import load_config
from t2ijax.eval.retrieval import gallery_retrieval, retrieval_accuracy
from t2ijax.methods.clip import clip_loss, normalise_pixels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def numpy_info_nce(img, txt, scale):
    img = img / np.linalg.norm(img, axis=-1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=-1, keepdims=True)
    logits = scale * img @ txt.T

    def ce(rows):  # cross-entropy of each row against its diagonal entry
        rows = rows - rows.max(1, keepdims=True)
        return np.mean(np.log(np.exp(rows).sum(1)) - np.diag(rows))

    return 0.5 * (ce(logits) + ce(logits.T))


def test_loss_matches_numpy_info_nce():
    rng = np.random.default_rng(0)
    img, txt = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))
    for log_scale, scale in ((math.log(10.0), 10.0), (math.log(300.0), 100.0)):  # the second is clamped at 100
        loss, metrics = clip_loss(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32), log_scale)
        ref = numpy_info_nce(img, txt, scale)
        print(f"scale {scale}: loss {float(loss):.6f}, numpy {ref:.6f}")
        np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
        np.testing.assert_allclose(float(metrics["logit_scale"]), scale, rtol=1e-5)
    # above the clamp the log scale gets no gradient
    grad = jax.grad(lambda s: clip_loss(jnp.asarray(img), jnp.asarray(txt), s)[0])(jnp.float32(math.log(300.0)))
    assert float(grad) == 0.0


def test_matched_pairs_beat_shuffled_ones():
    rng = np.random.default_rng(1)
    img = rng.standard_normal((16, 8)).astype(np.float32)
    txt = img + 0.05 * rng.standard_normal(img.shape).astype(np.float32)
    matched, m = clip_loss(img, txt, math.log(20.0))
    shuffled, s = clip_loss(img, txt[rng.permutation(16)], math.log(20.0))
    assert float(m["acc_i2t"]) == 1.0 and float(m["acc_t2i"]) == 1.0
    assert float(matched) < float(shuffled)
    assert float(s["acc_i2t"]) < 0.5


SHARDED_LOSS = """
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from t2ijax.methods.clip import clip_loss
rng = np.random.default_rng(0)
img, txt = rng.standard_normal((8, 6)).astype(np.float32), rng.standard_normal((8, 6)).astype(np.float32)
loss = jax.jit(clip_loss)
one = loss(img, txt, np.float32(2.0))
mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "fsdp"))
put = lambda x: jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))
four = loss(put(img), put(txt), np.float32(2.0))
assert len(put(img).sharding.device_set) == 4
for k, (a, b) in {"loss": (one[0], four[0]), **{k: (one[1][k], four[1][k]) for k in one[1]}}.items():
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6, err_msg=k)
print("sharded loss", float(four[0]), "one device", float(one[0]))
"""


def test_loss_is_global_when_the_batch_is_sharded():
    """With the batch split over a data x fsdp mesh of 4 simulated devices, the loss and its accuracies are the
    one-device values: every image meets every caption of the global batch."""
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SHARDED_LOSS], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout.strip())


def test_retrieval_accuracy_on_constructed_embeddings():
    eye = np.eye(10)
    r = retrieval_accuracy(eye, eye)
    assert r["i2t_top1"] == r["t2i_top1"] == r["i2t_top5"] == r["t2i_top5"] == 1.0 and r["n"] == 10
    perm = np.array([1, 0, 2, 3, 4, 5, 6, 7, 9, 8])  # 6 fixed points: text i is image perm[i]
    r = retrieval_accuracy(eye, eye[perm])
    assert r["i2t_top1"] == r["t2i_top1"] == 0.6
    # graded similarities: image i's partner text is its 3rd most similar (and text i's image likewise)
    n = 8
    img = np.zeros((n, n))
    for i in range(n):
        img[i, i], img[i, (i + 1) % n], img[i, (i + 2) % n] = 0.8, 1.0, 0.9
    r = retrieval_accuracy(img, np.eye(n), ks=(1, 2, 3))
    assert (r["i2t_top1"], r["i2t_top2"], r["i2t_top3"]) == (0.0, 0.0, 1.0)
    assert (r["t2i_top1"], r["t2i_top2"], r["t2i_top3"]) == (0.0, 0.0, 1.0)
    # groups: two pairs with the same caption are interchangeable
    txt = np.eye(4)[[0, 0, 2, 3]]  # texts 0 and 1 identical
    exact = retrieval_accuracy(np.eye(4), txt)
    grouped = retrieval_accuracy(np.eye(4), txt, groups=["a", "a", "c", "d"])
    assert exact["i2t_top1"] == 0.75 and grouped["i2t_top1"] == 1.0 and grouped["t2i_top1"] == 1.0
    g = gallery_retrieval(np.eye(20), np.eye(20), 8)
    assert g["num_galleries"] == 2 and g["num_pairs"] == 16 and g["gallery_size"] == 8 and g["i2t_top1"] == 1.0


# ------------------------------------------------------------------------------------------- the tiny run

def tiny_config(data_dir, **overrides):
    args = ["total_steps=5", "log_every=1", "checkpoint_every=5", "progress=False", "tensorboard=False",
            f"data.data_dir={data_dir}", "data.num_train=32", "data.num_val=12", "data.num_test=12"]
    return load_config(os.path.join(REPO, "configs", "clip_shapes.py:tiny"),
                       args + [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from t2ijax.train import loop

    workdir = str(tmp_path_factory.mktemp("clip_run"))
    config = tiny_config(str(tmp_path_factory.mktemp("tfds")))
    state = loop.train(config, workdir)
    return config, workdir, state


@pytest.fixture(scope="module")
def export(run, tmp_path_factory):
    from t2ijax.train.sampling import load_for_inference

    config, workdir, _ = run
    method, params, _, _ = load_for_inference(config, workdir)
    out = str(tmp_path_factory.mktemp("export"))
    written = method.export(params, out)
    return method, jax.device_get(params), out, written


def test_tiny_run_through_the_loop(run):
    config, workdir, state = run
    assert int(state.step) == 5
    assert set(state.params) == {"text_model", "vision_model", "text_projection", "visual_projection",
                                 "logit_scale"}
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    steps = [r for r in rows if "loss" in r]
    print("clip tiny losses", [round(r["loss"], 4) for r in steps])
    assert len(steps) == 5 and all(np.isfinite(r["loss"]) for r in steps)
    assert all(0 <= r["acc_i2t"] <= 1 and 0 <= r["acc_t2i"] <= 1 and r["logit_scale"] > 1 for r in steps)
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "5"))


def test_export_round_trip_and_transformers_parity(run, export):
    import torch
    import transformers as T

    from t2ijax.data.tokenizer import load_tokenizer, tokenize
    from t2ijax.eval.clip_score import clip_embedders, clip_pixels
    from t2ijax.weights import load_clip

    config, _, _ = run
    method, params, out, written = export
    folder = os.path.join(out, "clip")
    assert written == [folder]
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= set(os.listdir(folder))
    module, again = load_clip(folder)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), again, params)
    assert module.text_config == method.model.text_config and module.vision_config == method.model.vision_config

    tokenizer = load_tokenizer(folder, config.data.max_length)
    assert tokenizer.eos_token_id == module.text_config.eos_token_id != 2
    captions = ["a large red circle to the left of a small blue square .", "a small green triangle ."]
    tok = tokenize(tokenizer, captions, config.data.max_length)
    # the export's tokenizer gives the ids training saw: the data tokenizer's ids through the method's map
    data_tok = tokenize(method.data_tokenizer, captions, config.data.max_length)
    np.testing.assert_array_equal(method.id_map[data_tok["input_ids"]], tok["input_ids"])
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    images = np.round((images + 1) * 127.5) / 127.5 - 1  # on the uint8 grid, as the loader's images are
    v = {"params": again}
    ours_text = np.asarray(module.apply(v, tok["input_ids"], tok["attention_mask"], method="get_text_features"))
    ours_image = np.asarray(module.apply(v, normalise_pixels(jnp.asarray(images)), method="get_image_features"))
    ours_states = np.asarray(module.apply(v, tok["input_ids"], tok["attention_mask"], method="encode")[0])

    # clip_score's path (clip_pixels on [-1, 1] images, the export's tokenizer) is the training input
    np.testing.assert_allclose(clip_pixels(images, 32), np.asarray(normalise_pixels(jnp.asarray(images))), atol=1e-5)
    image_embed, text_embed = clip_embedders(folder, max_length=config.data.max_length)
    np.testing.assert_allclose(image_embed(images), ours_image, atol=1e-4)
    np.testing.assert_allclose(text_embed(captions), ours_text, atol=1e-5)

    hf = T.CLIPModel.from_pretrained(folder).eval()
    ids = torch.from_numpy(tok["input_ids"].astype(np.int64))
    mask = torch.from_numpy(tok["attention_mask"].astype(np.int64))
    with torch.no_grad():
        ref_text = hf.get_text_features(input_ids=ids, attention_mask=mask)
        ref_image = hf.get_image_features(pixel_values=torch.from_numpy(clip_pixels(images, 32)).permute(0, 3, 1, 2))
        ref_states = hf.text_model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    ref_text = getattr(ref_text, "pooler_output", ref_text).numpy()
    ref_image = getattr(ref_image, "pooler_output", ref_image).numpy()
    valid = tok["attention_mask"].astype(bool)
    for name, ours, ref in (("text", ours_text, ref_text), ("image", ours_image, ref_image),
                            ("text states", ours_states[valid], ref_states[valid])):
        err = float(np.abs(ours - ref).max())
        print(f"export vs transformers CLIPModel {name}: max|diff| {err:.2e} (max|ref| {np.abs(ref).max():.2e})")
        assert err <= 1e-4 * np.abs(ref).max()
    np.testing.assert_allclose(float(hf.logit_scale.detach()), float(again["logit_scale"]), rtol=1e-6)


def test_clip_feature_cache(run, export, tmp_path):
    from t2ijax.data.clip_features import FIELDS, build_clip_feature_cache, zero_image_embed
    from t2ijax.data.feature_cache import CachedFeatureLoader, FeatureCache
    from t2ijax.data.pipeline import load_split
    from t2ijax.eval.clip_score import clip_pixels
    from t2ijax.weights import load_clip

    config, _, _ = run
    _, _, out, _ = export
    path = str(tmp_path / "clip_val.arrayrecord")
    meta = build_clip_feature_cache(out, config.data, "validation", path, batch_size=5)  # 12 rows: a padded batch
    module, params = load_clip(os.path.join(out, "clip"))
    L, D, E = config.data.max_length, module.text_config.hidden_size, module.projection_dim
    cache = FeatureCache(path)
    assert len(cache) == 12 and list(cache.example_ids) == list(range(12))
    assert meta["fields"] == {"attention_mask": {"shape": [L], "dtype": "uint8"},
                              "image_embeds": {"shape": [E], "dtype": "float32"},
                              "input_ids": {"shape": [L], "dtype": "int32"},
                              "text_embeds": {"shape": [E], "dtype": "float32"},
                              "text_token_states": {"shape": [L, D], "dtype": "float32"}}
    got = cache.lookup(np.arange(12))
    assert set(got) == set(FIELDS)
    source = load_split(config.data, "validation")
    images = np.stack([source[i]["image"] for i in range(12)])
    v = {"params": params}
    want_image = np.asarray(module.apply(v, clip_pixels(images, 32), method="get_image_features"))
    np.testing.assert_allclose(got["image_embeds"], want_image, rtol=1e-5, atol=1e-5)
    states, text = module.apply(v, got["input_ids"], got["attention_mask"].astype(np.int32), method="encode")
    np.testing.assert_allclose(got["text_embeds"], np.asarray(text), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["text_token_states"], np.asarray(states), rtol=1e-5, atol=1e-5)
    zero = zero_image_embed(module, params, 32)
    assert zero.shape == (E,)
    np.testing.assert_allclose(meta["zero_image_embed"], zero, rtol=1e-6)
    batch = next(CachedFeatureLoader(path, batch_size=4, seed=0))  # what ECLIPSE's training reads
    assert batch["text_token_states"].shape == (4, L, D) and batch["example_id"].shape == (4,)


def test_retrieval_of_the_export(run, export):
    from t2ijax.eval.retrieval import evaluate_retrieval, format_report

    config, _, _ = run
    result = evaluate_retrieval(export[2], config.data, "val", gallery_size=5)
    print(format_report(result))
    assert result["exact"]["num_galleries"] == 2 and result["exact"]["num_pairs"] == 10
    for name in ("exact", "caption_match"):
        assert all(0.0 <= result[name][k] <= 1.0 for k in ("i2t_top1", "i2t_top5", "t2i_top1", "t2i_top5"))
        assert result[name]["i2t_top5"] == 1.0  # a gallery of 5: everything is in the top 5


def test_config_errors(tmp_path):
    from t2ijax.methods import get_method

    config = tiny_config(str(tmp_path))
    with config.unlocked():
        config.model.vision["image_size"] = 64
    with pytest.raises(ValueError, match="data.resolution"):
        get_method("clip", config)
    config = tiny_config(str(tmp_path))
    with config.unlocked():
        config.model.text["depth"] = 3
    with pytest.raises(ValueError, match="CLIPTextConfig lacks"):
        get_method("clip", config)
    config = tiny_config(str(tmp_path))
    with config.unlocked():
        config.model.caption_mix = {"dense": 1.0, "narrative": 1.0}
    with pytest.raises(ValueError, match="caption_mix names 'narrative'"):
        get_method("clip", config)
