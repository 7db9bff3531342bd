"""ECLIPSE training: the losses against hand computations, the paper's three priors through the train loop,
export -> load_eclipse_prior, and PyTorch's CosineAnnealingWarmRestarts schedule."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from t2ijax.config_utils import load_config
from t2ijax.data.feature_cache import FeatureCache
from t2ijax.methods import get_method
from t2ijax.methods.eclipse import contrastive_loss, predict_image_embeds, projection_loss
from t2ijax.train import loop
from t2ijax.train.optim import cosine_restarts_schedule
from t2ijax.weights import load_eclipse_prior
from eclipse_fixtures import write_feature_cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_contrastive_loss_by_hand():
    rng = np.random.default_rng(0)
    pred, text = rng.standard_normal((5, 7)), rng.standard_normal((5, 7))
    tau = 0.07
    p = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    t = text / np.linalg.norm(text, axis=1, keepdims=True)
    logits = p @ t.T / tau
    want = np.mean([np.log(np.exp(logits[i]).sum()) - logits[i, i] for i in range(5)])
    got, acc = contrastive_loss(jnp.asarray(pred), jnp.asarray(text), 1 / tau)
    assert abs(float(got) - want) < 1e-5
    # cheat: predictions that ARE the text embeddings are ranked first, and a scaled copy changes nothing (cosine)
    matched, acc_matched = contrastive_loss(jnp.asarray(3 * text), jnp.asarray(text), 1 / tau)
    assert float(acc_matched) == 1.0 and float(matched) < float(got)
    shuffled, _ = contrastive_loss(jnp.asarray(text[::-1]), jnp.asarray(text), 1 / tau)
    assert float(shuffled) > float(matched)


def test_projection_loss_reductions():
    a, b = np.ones((2, 4)), np.zeros((2, 4))
    assert float(projection_loss(a, b, "mean")) == 1.0
    assert float(projection_loss(a, b, "sum")) == 4.0
    with pytest.raises(ValueError, match="projection_reduction"):
        projection_loss(a, b, "max")


@pytest.mark.parametrize("t0,mult", [(7, 1), (5, 2)])
def test_cosine_restarts_matches_pytorch(t0, mult):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=t0, T_mult=mult, eta_min=0.1)
    want = []
    for _ in range(40):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    got = [float(cosine_restarts_schedule(1.0, t0, mult, 0.1)(i)) for i in range(40)]
    assert np.max(np.abs(np.asarray(want) - got)) < 1e-6


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_feature_cache(tmp_path_factory.mktemp("features") / "train.array_record")


def tiny_config(cache, prior, **overrides):
    items = [f"data.path={cache}", "progress=False", "tensorboard=False", "async_checkpointing=False"]
    items += [f"{k}={v}" for k, v in overrides.items()]
    return load_config(f"{REPO}/configs/eclipse_kandinsky22.py:variant=tiny,prior={prior}", items)


def test_the_papers_three_priors_as_configs(cache):
    for prior, weight, objective in (("eclipse", 0.2, "eclipse"), ("projection", 0.0, "eclipse"),
                                     ("diffusion", 0.0, "diffusion")):
        config = tiny_config(cache, prior)
        assert (config.model.contrastive_weight, config.model.objective) == (weight, objective)
        assert config.model.text_dropout == (0.1 if prior == "diffusion" else 0.0)
        assert config.optim.schedule == "cosine_restarts" and config.optim.lr == 5e-5
    paper = load_config(f"{REPO}/configs/eclipse_karlo.py")
    assert paper.batch_size == 1024 and paper.model.prior.embedding_dim == 768


@pytest.mark.parametrize("prior", ["eclipse", "diffusion"])  # "projection" is the eclipse code with lambda 0
def test_priors_train_export_and_predict(cache, prior, tmp_path):
    config = tiny_config(cache, prior)
    state = loop.train(config, str(tmp_path / "run"))
    method = get_method("eclipse", config)
    params = jax.device_get(state.params)
    frozen = method.frozen(config)
    written = method.export(params, str(tmp_path / "export"))
    module, loaded = load_eclipse_prior(written[0])
    assert module.time_embedding == (prior == "diffusion")
    batch = FeatureCache(cache).lookup(np.arange(4))
    args = (jnp.asarray(batch["text_embeds"]), jnp.asarray(batch["text_token_states"]),
            jnp.asarray(batch["attention_mask"]))
    pred = method.predict(params, frozen, *args, seeds=[0, 1, 2, 3], num_steps=5)
    assert pred.shape == (4, 16) and np.all(np.isfinite(np.asarray(pred)))
    again = method.predict(params, frozen, *args, seeds=[0, 1, 2, 3], num_steps=5)
    np.testing.assert_array_equal(np.asarray(pred), np.asarray(again))  # seeded
    if prior != "diffusion":  # the export is the released module: same prediction from the same noise
        from t2ijax.train.sampling import initial_noise
        noise = initial_noise(4, (16,), seeds=[0, 1, 2, 3])
        np.testing.assert_allclose(np.asarray(module.apply({"params": loaded}, noise, *args)), np.asarray(pred),
                                   atol=1e-6)
    else:  # diffusers' post_process_latents holds the normalisation: the export samples as the run does
        np.testing.assert_allclose(np.asarray(loaded["clip_mean"])[0], np.asarray(frozen["clip_mean"]), atol=1e-6)
        exported = predict_image_embeds(module, loaded, *args, seeds=[0, 1, 2, 3], num_steps=5)
        np.testing.assert_allclose(np.asarray(exported), np.asarray(pred), atol=1e-5)


def test_eclipse_learns_and_contrastive_term_is_used(cache, tmp_path):
    """On the synthetic cache (image = linear map of text + noise) ECLIPSE's prior improves; lambda enters."""
    config = tiny_config(cache, "eclipse", total_steps=120, log_every=40, checkpoint_every=120,
                         **{"optim.lr": 3e-3, "optim.restart_steps": 120})
    method = get_method("eclipse", config)
    batch = {k: jnp.asarray(v) for k, v in FeatureCache(cache).lookup(np.arange(16)).items()}
    params = method.init(jax.random.PRNGKey(0), config)
    params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "value"))
    loss, m = method.loss(params, {}, batch, jax.random.PRNGKey(1))
    np.testing.assert_allclose(float(loss), float(m["projection_loss"] + 0.2 * m["contrastive_loss"]), rtol=1e-6)
    state = loop.train(config, str(tmp_path / "run"))
    trained = jax.device_get(state.params)
    _, after = method.loss(trained, {}, batch, jax.random.PRNGKey(1))
    print(f"synthetic cache, 120 steps: projection loss {float(m['projection_loss']):.3f} -> "
          f"{float(after['projection_loss']):.3f}, cosine {float(m['cosine_to_image']):.3f} -> "
          f"{float(after['cosine_to_image']):.3f}")
    assert float(after["projection_loss"]) < 0.8 * float(m["projection_loss"])
    assert float(after["contrastive_loss"]) < 0.2 * float(m["contrastive_loss"])
    assert float(after["cosine_to_image"]) > float(m["cosine_to_image"]) + 0.1


def test_bad_config_is_refused(cache):
    with pytest.raises(ValueError, match="objective"):
        get_method("eclipse", tiny_config(cache, "eclipse", **{"model.objective": "gan"}))
    with pytest.raises(ValueError, match="contrastive_weight=0"):
        get_method("eclipse", tiny_config(cache, "diffusion", **{"model.contrastive_weight": 0.2}))
    with pytest.raises(ValueError, match="temperature"):
        get_method("eclipse", tiny_config(cache, "eclipse", **{"model.temperature": 0.0}))
