"""SUR-adapter training method (t2ijax/methods/sur.py): loss terms, quirk switches, LLM cache, sampling, export."""

import json
import os
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from t2ijax.config_utils import load_config
from t2ijax.methods.sur import SURMethod
from t2ijax.methods.sur_losses import apply_llm_projection, kd_loss, sur_distillation_losses
from t2ijax.models.sur_adapter import trainable_mask

SIMPLE = ["there is a red circle and next to it a small blue square", "a green triangle sits alone"]
COMPLEX = ["a big red circle left of a small blue square", "a green triangle"]


def _config(*overrides, variant="tiny"):
    """The tiny config with command-line style overrides ("--config.a.b=v")."""
    return load_config(f"configs/sur_shapes.py:{variant}", [o.removeprefix("--config.") for o in overrides])


@pytest.fixture(scope="module")
def sur():
    """(method, frozen, params, batch) of the tiny Shapes config, standard KD and both terms on."""
    config = _config("--config.model.loss_weights.llm=0.5", "--config.model.loss_weights.prompt=0.25")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random frozen modules
        method = SURMethod(config)
        frozen = method.frozen(config)
    params = method.init(jax.random.PRNGKey(0), config)
    from t2ijax.data.tokenizer import tokenize

    ids, mask = method.tokens(SIMPLE)
    cids, cmask = method.tokens(COMPLEX)
    llm = tokenize(method.llm_tokenizer, SIMPLE, method.llm_length)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 3)), jnp.float32), "input_ids": ids,
             "attention_mask": mask, "complex_input_ids": cids, "complex_attention_mask": cmask,
             "llm_input_ids": jnp.asarray(llm["input_ids"]), "llm_attention_mask": jnp.asarray(llm["attention_mask"])}
    return method, frozen, params, batch


def test_loss_terms_are_the_released_definitions_on_the_right_tensors(sur):
    method, frozen, params, batch = sur
    rng = jax.random.PRNGKey(3)
    keys = jax.random.split(rng, 5)
    simple = method.encode_clip(frozen["text_encoder"], batch["input_ids"], batch["attention_mask"])
    out = method.adapter.apply({"params": params}, simple, deterministic=False, return_all=True,
                               rngs={"dropout": keys[4]})
    complex_states = method.encode_clip(frozen["text_encoder"], batch["complex_input_ids"],
                                        batch["complex_attention_mask"])
    v = method.llm_vectors(frozen["llm"], batch["llm_input_ids"], batch["llm_attention_mask"])
    target = apply_llm_projection(method.projection(), v)
    loss, metrics = jax.jit(method.loss)(params, frozen, batch, rng)
    want = sur_distillation_losses(out.encoder_out, out.out, target, complex_states, reproduce_release=False)
    np.testing.assert_allclose(metrics["llm_kd"], want["llm"], rtol=1e-5)
    np.testing.assert_allclose(metrics["prompt_kd"], want["prompt"], rtol=1e-5)
    np.testing.assert_allclose(loss, metrics["mse"] + 0.5 * want["llm"] + 0.25 * want["prompt"], rtol=1e-5)
    # standard KD: the adapter's encoder output is the student (first argument), the LLM vector the fixed teacher;
    # the release's order (the LLM vector in the student slot) gives another value
    np.testing.assert_allclose(metrics["llm_kd"], kd_loss(out.encoder_out, target[:, None]), rtol=1e-5)
    release = float(kd_loss(target[:, None], out.encoder_out, detach_target=False))
    assert release != pytest.approx(float(metrics["llm_kd"]), rel=1e-3)


def test_denoising_gradient_switch_q3(sur):
    method, frozen, params, batch = sur
    w = (method.w_llm, method.w_prompt)
    method.w_llm = method.w_prompt = 0.0  # the denoising loss alone
    try:
        norms = {}
        for flag in (True, False):
            method.denoise_gradient = flag
            grads = jax.jit(jax.grad(lambda p: method.loss(p, frozen, batch, jax.random.PRNGKey(1))[0]))(params)
            norms[flag] = float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(grads)))
    finally:
        method.denoise_gradient = True
        method.w_llm, method.w_prompt = w
    assert norms[True] > 0 and norms[False] == 0.0  # the release's re-wrap detaches the adapted states


def test_llm_vectors_read_a_block_before_the_final_norm_and_skip_padding(sur):
    method, frozen, params, batch = sur
    ids, mask = batch["llm_input_ids"], batch["llm_attention_mask"]
    hidden = method._llm.module.apply({"params": frozen["llm"]}, ids, mask, output_hidden_states=True,
                                      last_layer_pre_norm=True)
    normed = method._llm.module.apply({"params": frozen["llm"]}, ids, mask)
    assert not np.allclose(hidden[-1], normed, atol=1e-3)  # the last block's raw output, not the normed one
    m = np.asarray(mask, np.float32)[..., None]
    for layer, index in ((-1, -1), (0, 1)):
        method.llm_layer = layer
        got = method.llm_vectors(frozen["llm"], ids, mask)
        np.testing.assert_allclose(got, (np.asarray(hidden[index]) * m).sum(1) / m.sum(1), rtol=1e-5, atol=1e-6)
    method.llm_layer = -1
    got = method.llm_vectors(frozen["llm"], ids, mask)
    n = int(mask[1].sum())
    alone = method.llm_vectors(frozen["llm"], ids[1:, :n], mask[1:, :n])  # the prompt without padding
    np.testing.assert_allclose(got[1:], alone, rtol=1e-5, atol=1e-6)


def test_dead_parameters_never_change(sur):
    method, _, params, _ = sur
    config = _config("--config.optim.schedule=constant", "--config.optim.warmup_steps=0")
    tx, _ = method.make_optimizer(config.optim, 10)
    params = jax.tree.map(lambda x: x + 0.5, nn.meta.unbox(params))  # non-zero: weight decay would move them
    state = tx.init(params)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    live = trainable_mask(params)
    moved = jax.tree.map(lambda u, l: (bool(jnp.any(u != 0)), l), updates, live)
    flat = jax.tree.leaves(moved, is_leaf=lambda x: isinstance(x, tuple))
    assert any(not l for _, l in flat), "the tiny adapter should carry dead parameters (dead_params=True)"
    assert all(m == l for m, l in flat)  # every live leaf moves, no dead leaf does


def test_sampling_adapts_both_branches_and_the_release_adapts_them_jointly(sur):
    import dataclasses

    method, frozen, params, _ = sur
    leaves, tree = jax.tree.flatten(nn.meta.unbox(params))  # fc starts at zero: give the encoder a say
    keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
    params = tree.unflatten([x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    ids, mask = method.tokens(SIMPLE)
    cond = method.encode_clip(frozen["text_encoder"], ids, mask)
    uncond = jnp.broadcast_to(frozen["empty_states"][None], cond.shape)
    apply = lambda a, x: a.apply({"params": params}, x)
    c, u = method.adapt(params, cond, uncond)
    np.testing.assert_allclose(c, apply(method.adapter, cond), atol=1e-6)
    np.testing.assert_allclose(u, apply(method.adapter, uncond), atol=1e-6)
    adapter = method.adapter
    try:
        method.adapter = dataclasses.replace(adapter, attend_across_batch=True)
        c2, u2 = method.adapt(params, cond, uncond)
        both = apply(method.adapter, jnp.concatenate([uncond, cond]))
        np.testing.assert_allclose(c2, both[2:], atol=1e-6)
        np.testing.assert_allclose(u2, both[:2], atol=1e-6)
        assert not np.allclose(c2, apply(method.adapter, cond), atol=1e-4)  # Q1: the halves see each other
        method.adapt_uncond = False
        np.testing.assert_array_equal(method.adapt(params, cond, uncond)[1], uncond)
    finally:
        method.adapter, method.adapt_uncond = adapter, True
    images = method.sample(params, frozen, SIMPLE[:1], seeds=[0])
    assert images.shape == (1, 32, 32, 3) and images.dtype == np.uint8


def test_export_loads_back_as_init_from_for_training_and_sampling(sur, tmp_path):
    from t2ijax.train.sampling import load_for_inference
    from t2ijax.weights import load_llm_projection

    method, _, params, _ = sur
    params = jax.tree.map(lambda x: x + 0.01 * jnp.arange(x.size, dtype=x.dtype).reshape(x.shape) / x.size,
                          nn.meta.unbox(params))
    (path,) = method.export(params, str(tmp_path))
    proj = load_llm_projection(path)
    np.testing.assert_array_equal(proj["kernel"], method.projection()["kernel"])
    config = _config(f"--config.init_from={path}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, loaded, frozen, _ = load_for_inference(config, random_init=True)
    assert "llm" not in frozen and "llm_projection" not in frozen  # inference never loads the LLM
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="eta"):
        other = SURMethod(_config("--config.model.sur.eta=0.2"))
        other.load_init(path, None, None)


def test_an_adapter_trained_with_an_llm_folder_samples_and_exports_where_that_folder_is_not(sur, tmp_path):
    """Inference never needs the LLM: a config naming an LLM folder that this machine lacks still samples and
    exports (the adapter; LLMResize, whose width comes from the LLM, with a warning); training says what is missing."""
    from t2ijax.train.sampling import load_for_inference
    from t2ijax.weights import load_llm_projection

    method, _, params, _ = sur
    (path,) = method.export(nn.meta.unbox(params), str(tmp_path / "export"))
    elsewhere = ("--config.model.llm_path=/elsewhere/llama-13b", "--config.model.llm={}")
    config = _config(f"--config.init_from={path}", *elsewhere)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inference, loaded, frozen, _ = load_for_inference(config, random_init=True)
    assert inference.sample(loaded, frozen, ["a red circle"], seeds=[0]).shape == (1, 32, 32, 3)
    with pytest.warns(UserWarning, match=r"LLMResize not exported .*llm_projection\(0, <LLM width>, 16\)"):
        (again,) = inference.export(loaded, str(tmp_path / "again"))
    with pytest.raises(FileNotFoundError, match="no LLM projection"):  # the adapter alone
        load_llm_projection(again)
    with pytest.raises(FileNotFoundError, match="/elsewhere/llama-13b"):
        SURMethod(_config(*elsewhere)).frozen(config)


def _set(path, value):
    def edit(config):
        *parents, leaf = path.split(".")
        node = config
        for p in parents:
            node = node[p]
        with node.unlocked():
            node[leaf] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set("data.extra_captions", {"llm": "narrative:shapes_word:100"}), "extra_captions.complex"),
    (_set("data.extra_captions", {"complex": "dense", "llm": "dense:shapes_word:100"}), "must read the simple"),
    (_set("data.extra_captions", {"complex": "dense"}), "needs the simple prompt in the LLM's tokenization"),
    (_set("data.extra_captions", {"complex": "dense:shapes_word:20"}), "CLIP tokenizer and data.max_length"),
    (_set("model.kd", "both"), "model.kd must be one of"),
    (_set("model.denoise_gradient", "maybe"), "use true or false"),
    (_set("model.loss_weights", {"llm": 1.0, "image": 1.0}), "unknown terms"),
    (_set("model.sur", {"width": 8}), "must equal the CLIP width"),
    (_set("model.llm_layer", 5), "the LLM has 2 blocks"),
])
def test_bad_configs_are_refused_with_a_message(edit, message):
    config = _config()
    edit(config)
    with pytest.raises(ValueError, match=message):
        SURMethod(config)


def test_llm_cache_equals_the_llm_on_the_fly_and_surd_layout(tmp_path):
    """`prepare` caches the pooled LLM vector of every train row; the wrapped loader's vectors equal the LLM run on
    the batch. And SURD's folder layout: `text` is the simple prompt, `prompt` the complex one."""
    from t2ijax.data.pipeline import make_loader
    from t2ijax.data.tokenizer import load_tokenizer, tokenize

    cache = str(tmp_path / "llm.array_record")
    config = _config(f"--config.data.data_dir={tmp_path / 'tfds'}", f"--config.model.llm_feature_cache={cache}",
                     "--config.data.num_train=12")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method = SURMethod(config)
        assert method.prepare(config) == cache
        llm_params = method._llm.params(np.random.default_rng(method.frozen_seed))
    loader = method.wrap_loader(make_loader(config.data, split="train", batch_size=4, seed=0), "train")
    batch = next(loader)
    want = method.llm_vectors(llm_params, jnp.asarray(batch["llm_input_ids"]), jnp.asarray(batch["llm_attention_mask"]))
    np.testing.assert_allclose(batch["llm_vector"], want, rtol=1e-5, atol=1e-6)
    assert method.llm_size == want.shape[1]
    small = _config(f"--config.data.data_dir={tmp_path / 'tfds2'}", f"--config.model.llm_feature_cache={cache}",
                    "--config.data.num_train=8")
    with pytest.raises(ValueError, match="12 records but the train split has 8 rows"):
        method.wrap_loader(make_loader(small.data, split="train", batch_size=4, seed=0), "train")

    folder = tmp_path / "surd"
    for split in ("train", "test"):
        os.makedirs(folder / split)
        with open(folder / split / "metadata.jsonl", "w") as f:
            for i in range(2):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / split / f"{i}.png")
                f.write(json.dumps({"file_name": f"{i}.png", "text": SIMPLE[i], "prompt": COMPLEX[i]}) + "\n")
    data = load_config("configs/sur_shapes.py:tiny").data
    data.update(name="image_text_folder", folder=str(folder), data_dir=str(tmp_path / "tfds3"), resolution=8)
    batch = next(make_loader(data, split="train", batch_size=2, seed=0, shuffle=False))
    tok = load_tokenizer("shapes_word", data.max_length)
    order = [int(i) for i in batch["index"]]
    simple = tokenize(tok, [SIMPLE[i] for i in order], data.max_length)
    complex_ = tokenize(tok, [COMPLEX[i] for i in order], data.max_length)
    np.testing.assert_array_equal(batch["input_ids"], simple["input_ids"])
    np.testing.assert_array_equal(batch["complex_input_ids"], complex_["input_ids"])


def test_sd15_configs_follow_run_sh_and_the_tiny_one_builds_in_latent_space():
    """configs/sur_sd15.py: the released recipe's numbers; its tiny variant (VAE latents, accumulation, LLM on the
    fly) builds its frozen modules."""
    config = load_config("configs/sur_sd15.py:tiny")
    assert config.optim.grad_accum_steps == 2 and load_config("configs/sur_sd15.py").optim.grad_accum_steps == 4
    base = load_config("configs/sur_sd15.py:sd15=/sd,llm=/llama")
    assert (base.model.llm_layer, base.model.loss_weights.llm, base.model.loss_weights.prompt, base.optim.lr,
            base.optim.grad_clip_norm, base.total_steps, base.data.max_length) == (39, 1e-5, 1e-5, 1e-5, 1.0, 20_000, 77)
    assert (base.model.unet_path, base.model.text_encoder_path) == ("/sd/unet", "/sd/text_encoder")
    assert load_config("configs/sur_sd15.py:release=1").model.reproduce_release
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method = SURMethod(config)
        frozen = method.frozen(config)
    assert method.vae is not None and method.sample_size == 8 and {"vae", "llm", "llm_projection"} <= set(frozen)
    assert method.denoise_gradient and method.kd == "standard"
    config.model.reproduce_release = True
    release = SURMethod(config)
    assert not release.denoise_gradient and release.kd == "release"
    assert release.adapter.attend_across_batch and release.adapter.dropout_at_inference
