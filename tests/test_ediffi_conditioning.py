"""eDiff-I's multi-encoder conditioning: the module's context layout, independent dropout, the unconditional
branch, subsets at sampling, config validation, and the tiny config through the train loop (feature cache and
a T5 extra caption included) with sampling from it, with and without a CLIP image embedding."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2ijax.config_utils import load_module

CONFIG_FILE = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "ediffi_base64.py")
PROMPTS = ["a red circle", "two blue squares above a green triangle"]


def tiny_config(tmp_dir):
    c = load_module(CONFIG_FILE).get_config("tiny")
    c.data.data_dir = os.path.join(str(tmp_dir), "datasets")
    return c


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, conditioner, params, frozen) of the tiny config (no U-Net init: the conditioner alone)."""
    from t2ijax.methods import get_method

    config = tiny_config(tmp_path_factory.mktemp("ediffi_unit"))
    cond = get_method("experts", config).conditioner
    with pytest.warns(UserWarning, match="RANDOM"):
        frozen = cond.frozen(config)
    return config, cond, cond.init(jax.random.PRNGKey(0)), frozen


def text_batch(cond, prompts, image=None):
    """A training batch of `prompts` as the data pipeline gives it (the tiny config: the main tokenization)."""
    from t2ijax.data.tokenizer import tokenize

    tok = tokenize(cond.t5_tokenizer, prompts, cond.t5_max_length)
    batch = {"image": np.zeros((len(prompts), 32, 32, 3), np.float32), "input_ids": tok["input_ids"],
             "attention_mask": tok["attention_mask"]}
    if image is not None:
        batch["clip_image_embeds"] = image
    return batch


# ------------------------------------------------------------------------------------------- the module

def test_context_layout_null_token_and_logical_axes():
    from t2ijax.models.multi_encoder import MultiEncoderConditioning, context_layout

    b, lt, lc, dt, dc, dp, di, width = 3, 5, 4, 7, 6, 6, 3, 8
    r = np.random.default_rng(0)
    t5, clip = r.normal(size=(b, lt, dt)), r.normal(size=(b, lc, dc))
    pooled, image = r.normal(size=(b, dp)), r.normal(size=(b, di))
    module = MultiEncoderConditioning(width)
    keep = jnp.ones((b,), bool)
    boxed = jax.jit(module.init)(jax.random.PRNGKey(0), t5, clip, pooled, image, keep, keep, keep)["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)  # logical axes on every parameter
    params = nn.meta.unbox(boxed)
    assert set(params) == {"t5_proj", "clip_text_proj", "clip_image_proj", "null_token"}

    keep_t5, keep_clip, keep_image = jnp.array([1, 0, 1], bool), jnp.array([1, 1, 0], bool), jnp.array([0, 1, 1], bool)
    context, class_vector = jax.jit(module.apply)({"params": params}, t5, clip, pooled, image, keep_t5, keep_clip,
                                                  keep_image)
    assert context.shape == (b, lc + lt + 2, width) and class_vector.shape == (b, dp + di)

    def proj(name, x, k):  # the paper zeroes a dropped embedding BEFORE its projection
        x = np.where(np.reshape(k, (b,) + (1,) * (x.ndim - 1)), x, 0.0)
        return x @ np.asarray(params[name]["kernel"]) + np.asarray(params[name]["bias"])

    at = context_layout(lc, lt)
    np.testing.assert_allclose(context[:, at["clip_text"]], proj("clip_text_proj", clip, keep_clip), atol=1e-5)
    np.testing.assert_allclose(context[:, at["t5"]], proj("t5_proj", t5, keep_t5), atol=1e-5)
    np.testing.assert_allclose(context[:, at["clip_image"]][:, 0], proj("clip_image_proj", image, keep_image),
                               atol=1e-5)
    np.testing.assert_array_equal(context[:, at["null"]][:, 0], np.broadcast_to(params["null_token"], (b, width)))
    want = np.concatenate([pooled * np.asarray(keep_clip)[:, None], image * np.asarray(keep_image)[:, None]], -1)
    np.testing.assert_allclose(class_vector, want, atol=1e-6)

    normed = MultiEncoderConditioning(width, layer_norm=True)
    p = jax.jit(normed.init)(jax.random.PRNGKey(0), t5, clip, pooled, image, keep, keep, keep)["params"]
    assert {"t5_norm", "clip_text_norm", "clip_image_norm"} <= set(p)
    ctx, _ = jax.jit(normed.apply)({"params": nn.meta.unbox(p)}, t5, clip, pooled, image, keep, keep, keep)
    np.testing.assert_allclose(np.asarray(ctx[:, :-1]).mean(-1), 0.0, atol=1e-5)  # every projected token normalised
    with pytest.raises(ValueError, match="keep_t5"):
        module.apply({"params": params}, t5, clip, pooled, image, keep[:2], keep, keep)


# ------------------------------------------------------------------------------------------- dropout

def test_dropout_rates_and_independence(tiny):
    _, cond, _, _ = tiny
    assert cond.dropout == {"t5": 0.25, "clip_text": 0.2, "clip_image": 0.9}
    n = 40_000
    keep = jax.device_get(cond.drop_flags(jax.random.PRNGKey(1), n))
    dropped = {k: ~np.asarray(v) for k, v in keep.items()}
    for name, rate in cond.dropout.items():
        assert abs(dropped[name].mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / n), (name, dropped[name].mean())
    names = list(dropped)
    for i, a in enumerate(names):
        for bname in names[i + 1:]:
            r = np.corrcoef(dropped[a], dropped[bname])[0, 1]
            assert abs(r) < 0.025, (a, bname, r)  # independent draws: no correlation
            joint = (dropped[a] & dropped[bname]).mean()
            assert abs(joint - cond.dropout[a] * cond.dropout[bname]) < 0.005, (a, bname, joint)
    all_dropped = (dropped["t5"] & dropped["clip_text"] & dropped["clip_image"]).mean()
    print(f"drop rates {[round(float(d.mean()), 4) for d in dropped.values()]}, all three {all_dropped:.4f} "
          f"(independent: {0.25 * 0.2 * 0.9:.4f})")
    assert abs(all_dropped - 0.25 * 0.2 * 0.9) < 0.005


def test_train_cond_zeroes_exactly_the_dropped_embeddings(tiny):
    _, cond, params, frozen = tiny
    b = 512
    r = np.random.default_rng(1)
    batch = {"image": np.zeros((b, 32, 32, 3), np.float32),  # cached features, as wrap_loader adds them
             "t5_states": r.normal(size=(b, cond.t5_max_length, cond.t5_dim)).astype(np.float32),
             "clip_states": r.normal(size=(b, cond.clip_max_length, cond.clip_dim)).astype(np.float32),
             "clip_pooled": r.normal(size=(b, cond.pooled_dim)).astype(np.float32) + 3.0,
             "clip_image_embeds": r.normal(size=(b, cond.image_dim)).astype(np.float32) + 3.0}
    key = jax.random.PRNGKey(5)
    out = jax.jit(cond.train_cond)(params, frozen, batch, key)
    keep = jax.device_get(cond.drop_flags(key, b))  # train_cond draws exactly these flags from its key
    classes, context = np.asarray(out["class_labels"]), np.asarray(out["context"])
    np.testing.assert_array_equal(np.all(classes[:, :cond.pooled_dim] == 0, -1), ~keep["clip_text"])
    np.testing.assert_array_equal(np.all(classes[:, cond.pooled_dim:] == 0, -1), ~keep["clip_image"])
    p = params["conditioning"]
    for name, proj in (("t5", "t5_proj"), ("clip_text", "clip_text_proj"), ("clip_image", "clip_image_proj")):
        segment = context[:, cond.layout[name]]
        is_bias = np.all(np.abs(segment - np.asarray(p[proj]["bias"].value)) < 1e-6, axis=(1, 2))
        np.testing.assert_array_equal(is_bias, ~keep[name])  # zeroed before projection: only the bias is left
    null = context[:, cond.layout["null"]][:, 0]
    np.testing.assert_array_equal(null, np.broadcast_to(p["null_token"].value, null.shape))

    no_image = {k: v for k, v in batch.items() if k != "clip_image_embeds"}  # no image: always dropped
    out = jax.jit(cond.train_cond)(params, frozen, no_image, key)
    assert np.all(np.asarray(out["class_labels"])[:, cond.pooled_dim:] == 0)


def test_all_dropped_is_the_unconditional_branch(tiny, monkeypatch):
    _, cond, params, frozen = tiny
    image = np.random.default_rng(2).normal(size=(len(PROMPTS), cond.image_dim)).astype(np.float32)
    c, u = cond.prompt_cond(params, frozen, PROMPTS, image_embeds=image)
    batch = text_batch(cond, PROMPTS, image)  # the on-the-fly path: the frozen encoders on the batch's tokens
    key = jax.random.PRNGKey(0)
    monkeypatch.setattr(cond, "dropout", {"t5": 1.0, "clip_text": 1.0, "clip_image": 1.0})
    dropped = jax.jit(cond.train_cond)(params, frozen, batch, key)
    for k in ("context", "class_labels"):
        np.testing.assert_allclose(dropped[k], u[k], atol=1e-6)
    monkeypatch.setattr(cond, "dropout", {"t5": 0.0, "clip_text": 0.0, "clip_image": 0.0})
    kept = jax.jit(cond.train_cond)(params, frozen, batch, key)
    for k in ("context", "class_labels"):
        np.testing.assert_allclose(kept[k], c[k], atol=1e-5)  # training and sampling see the same conditioning
    assert not np.allclose(c["context"], u["context"])


def test_any_subset_at_sampling(tiny):
    _, cond, params, frozen = tiny
    n, at, dp = len(PROMPTS), cond.layout, cond.pooled_dim
    image = np.random.default_rng(3).normal(size=(cond.image_dim,)).astype(np.float32) + 1.0

    def same(a, b, part):
        return np.allclose(a["context"][:, at[part]], b["context"][:, at[part]], atol=1e-6)

    full, uncond = cond.prompt_cond(params, frozen, PROMPTS, image_embeds=image)
    assert all(not same(full, uncond, part) for part in ("t5", "clip_text", "clip_image"))
    assert same(full, uncond, "null")
    np.testing.assert_allclose(full["class_labels"][:, dp:], np.broadcast_to(image, (n, cond.image_dim)))
    # style from an image embedding alone
    style, uncond2 = cond.prompt_cond(params, frozen, [""] * n, image_embeds=image, use=("clip_image",))
    assert same(style, uncond, "t5") and same(style, uncond, "clip_text") and not same(style, uncond, "clip_image")
    assert np.all(np.asarray(style["class_labels"][:, :dp]) == 0)
    np.testing.assert_allclose(style["class_labels"][:, dp:], full["class_labels"][:, dp:])
    for k in uncond:
        np.testing.assert_allclose(uncond2[k], uncond[k], atol=1e-6)  # uncond: all dropped, whatever the prompt
    # T5 alone, and text without an image (the image is used only when given)
    t5_only, _ = cond.prompt_cond(params, frozen, PROMPTS, image_embeds=image, use="t5")
    assert not same(t5_only, uncond, "t5")
    assert same(t5_only, uncond, "clip_text") and same(t5_only, uncond, "clip_image")
    assert np.all(np.asarray(t5_only["class_labels"]) == 0)
    text, _ = cond.prompt_cond(params, frozen, PROMPTS)
    assert same(text, full, "t5") and same(text, full, "clip_text") and same(text, uncond, "clip_image")
    with pytest.raises(ValueError, match="clip_img"):
        cond.prompt_cond(params, frozen, PROMPTS, use=("t5", "clip_img"))
    with pytest.raises(ValueError, match="image_embeds has shape"):
        cond.prompt_cond(params, frozen, PROMPTS, image_embeds=np.zeros((3, cond.image_dim)))


# ------------------------------------------------------------------------------------------- validation

def test_config_validation(tmp_path):
    from t2ijax.methods.experts import ExpertsMethod

    def build(edit):
        c = tiny_config(tmp_path)
        edit(c)
        return ExpertsMethod(c).conditioner

    with pytest.raises(ValueError, match="class_embed_type='projection'"):
        build(lambda c: c.model.unet.update(class_embed_type=None, projection_class_embeddings_input_dim=None))
    with pytest.raises(ValueError, match="projection_class_embeddings_input_dim=24"):
        build(lambda c: c.model.unet.update(projection_class_embeddings_input_dim=16))
    with pytest.raises(ValueError, match="cross_attention_dim=8"):
        build(lambda c: c.model.multi_encoder.update(width=8))
    with pytest.raises(ValueError, match=r"extra_captions\['t5'\] = 'short:shapes_word:24'"):
        build(lambda c: c.model.multi_encoder.update(t5_max_length=24))
    with pytest.raises(ValueError, match="t5_dropout"):
        build(lambda c: c.model.multi_encoder.update(t5_dropout=1.5))
    with pytest.raises(ValueError, match="t5_tokenizer"):
        build(lambda c: c.model.multi_encoder.update(t5_path=str(tmp_path)))
    cond = build(lambda c: (c.model.multi_encoder.update(t5_max_length=24),
                            c.data.update(extra_captions={"t5": "short:shapes_word:24"})))
    assert (cond.t5_prefix, cond.clip_prefix, cond.context_length) == ("t5_", "", 20 + 24 + 2)


@pytest.mark.parametrize("clip_kind", ["CLIPTextModelWithProjection", "CLIPModel"])
def test_hugging_face_folders_and_their_tokenizers(clip_kind, tmp_path):
    """Frozen encoders from Hugging Face folders (tiny random, saved by transformers) with the tokenizers saved in
    them: T5 states, CLIP states and the projected pooled CLIP text match transformers' outputs."""
    import torch
    import transformers as T

    from t2ijax.data.tokenizer import shapes_word_tokenizer, tokenize
    from t2ijax.methods.experts import ExpertsMethod

    tokenizer = shapes_word_tokenizer(20)
    vocab = len(tokenizer)
    torch.manual_seed(0)
    t5_ref = T.T5EncoderModel(T.T5Config(vocab_size=vocab, d_model=16, d_kv=8, d_ff=24, num_layers=1, num_heads=2,
                                         feed_forward_proj="gated-gelu", dropout_rate=0.0)).eval()
    text_cfg = dict(vocab_size=vocab, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                    max_position_embeddings=20, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if clip_kind == "CLIPModel":
        clip_ref = T.CLIPModel(T.CLIPConfig(text_config=text_cfg, projection_dim=16, vision_config=dict(
            hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=8,
            patch_size=4))).eval()
    else:
        clip_ref = T.CLIPTextModelWithProjection(T.CLIPTextConfig(**text_cfg, projection_dim=16)).eval()
    folders = {}
    for name, model in (("t5", t5_ref), ("clip", clip_ref)):
        folders[name] = str(tmp_path / name)
        model.save_pretrained(folders[name], safe_serialization=True)
        tokenizer.save_pretrained(folders[name])  # the encoder's own tokenizer files

    c = tiny_config(tmp_path)
    c.model.multi_encoder.update(t5_path=folders["t5"], clip_path=folders["clip"])
    with pytest.raises(ValueError, match="extra_captions"):  # their tokenizers are not the data's "shapes_word"
        ExpertsMethod(c)
    c.data.extra_captions = {"t5": f"short:{folders['t5']}:20", "clip": f"short:{folders['clip']}:20"}
    cond = ExpertsMethod(c).conditioner
    assert cond.clip_projected and cond.pooled_dim == 16 and (cond.t5_prefix, cond.clip_prefix) == ("t5_", "clip_")
    frozen = cond.frozen(c)
    tok = tokenize(cond.clip_tokenizer, PROMPTS, 20)
    ids, mask = tok["input_ids"], tok["attention_mask"]
    t5, clip, pooled = jax.jit(cond.encode)(frozen, ids, mask, ids, mask)
    with torch.no_grad():
        tids, tmask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
        t5_want = t5_ref(input_ids=tids, attention_mask=tmask).last_hidden_state.numpy()
        text_model = clip_ref.text_model
        clip_want = text_model(input_ids=tids, attention_mask=tmask).last_hidden_state.numpy()
        eos = mask.sum(1) - 1  # the end-of-text token of each prompt
        pooled_want = clip_ref.text_projection(torch.tensor(clip_want[np.arange(len(ids)), eos])).numpy()
    valid = mask.astype(bool)
    for ours, want, what in ((t5, t5_want, "T5"), (clip, clip_want, "CLIP states"), (pooled, pooled_want, "pooled")):
        ours = np.asarray(ours)[valid] if what != "pooled" else np.asarray(ours)
        want = want[valid] if what != "pooled" else want
        err = float(np.abs(ours - want).max())
        print(f"{clip_kind} {what}: max|ours - transformers| = {err:.2e}")
        assert err <= 1e-4 * float(np.abs(want).max()), what
    cond_, uncond = cond.prompt_cond(cond.init(jax.random.PRNGKey(0)), frozen, PROMPTS)
    assert cond_["context"].shape == (2, 20 + 20 + 2, 16)


# ------------------------------------------------------------------------------------------- end to end

def test_train_loop_feature_cache_and_sampling(tmp_path):
    from t2ijax.methods import get_method
    from t2ijax.train.loop import make_loader, train

    config = tiny_config(tmp_path)
    # T5 on its own tokenization (an extra caption of the data pipeline), features precomputed offline
    config.model.multi_encoder.t5_max_length = 24
    config.data.extra_captions = {"t5": "short:shapes_word:24"}
    config.model.multi_encoder.feature_cache = str(tmp_path / "cache" / "text.array_record")
    config.model.multi_encoder.feature_cache_dtype = "float32"
    method = get_method("experts", config)
    cond = method.conditioner
    with pytest.warns(UserWarning, match="RANDOM"):
        assert method.prepare(config) == config.model.multi_encoder.feature_cache  # what `t2ijax prepare` runs
        frozen = method.frozen(config)

    state = train(config, str(tmp_path / "run"))
    assert int(state.step) == 2
    assert set(state.params) == {"unet", "conditioning"}
    assert jax.tree.leaves(state.params["unet"])[0].shape[0] == 3  # Config D: 3 stacked experts
    losses = [line for line in open(tmp_path / "run" / "metrics.jsonl") if '"loss"' in line]
    assert len(losses) == 2 and all("nan" not in line.lower() for line in losses)

    # the cached features give the on-the-fly conditioning
    batch = next(method.wrap_loader(make_loader(config, split="train", batch_size=4, seed=0), "train"))
    assert batch["t5_states"].shape == (4, 24, cond.t5_dim) and "t5_input_ids" in batch
    key = jax.random.PRNGKey(3)
    train_cond = jax.jit(cond.train_cond)
    cached = train_cond(state.params, frozen, batch, key)
    direct = train_cond(state.params, frozen, {k: v for k, v in batch.items()
                                                    if k not in ("t5_states", "clip_states", "clip_pooled")}, key)
    for k in cached:
        np.testing.assert_allclose(cached[k], direct[k], atol=1e-5)

    seeds = [0, 1]
    text = method.sample(state.params, frozen, PROMPTS, seeds=seeds, num_steps=1)
    image = np.random.default_rng(4).normal(size=(2, cond.image_dim)).astype(np.float32)
    styled = method.sample(state.params, frozen, PROMPTS, seeds=seeds, num_steps=1, image_embeds=image)
    image_only = method.sample(state.params, frozen, [""] * 2, seeds=seeds, num_steps=1, image_embeds=image,
                               use=("clip_image",))
    for images in (text, styled, image_only):
        assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8 and images.std() > 0
    assert not np.array_equal(text, styled) and not np.array_equal(styled, image_only)
