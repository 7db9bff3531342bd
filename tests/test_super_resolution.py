"""Super-resolution stage and cascade: degradations, noise-conditioning augmentation through the U-Net's class
embedding, a 2-expert SR train run through the one train loop, SR sampling, and base -> SR cascade sampling."""

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2ijax import diffusion
from t2ijax.config_utils import import_sibling, load_config
from t2ijax.data.degradations import KERNELS, Degradation, gaussian_blur, resize_down
from t2ijax.methods import get_method
from t2ijax.methods.cascade import Cascade, Stage, load_cascade_from_config, stage_seed
from t2ijax.methods.super_resolution import NoiseAugmentation, SuperResolutionMethod
from t2ijax.models.experts import expert_params
from t2ijax.train import loop
from t2ijax.train.sampling import regenerated_matches

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
common = import_sibling(os.path.join(REPO, "configs", "common.py"), "common")
cascade_shapes = import_sibling(os.path.join(REPO, "configs", "cascade_shapes.py"), "cascade_shapes")


def images(key, b=4, r=64):
    return jax.random.uniform(jax.random.PRNGKey(key), (b, r, r, 3), minval=-1.0, maxval=1.0)


# ------------------------------------------------------------------------------------------- degradations

def test_degradation_shapes_range_and_keys():
    deg = Degradation.from_config({"noise_prob": 0.5}, high=64, low=32)
    x = images(0)
    low = deg.degrade(jax.random.PRNGKey(1), x)
    call = jax.jit(deg.__call__)
    up = call(jax.random.PRNGKey(1), x)
    assert low.shape == (4, 32, 32, 3) and up.shape == (4, 64, 64, 3)
    for a in (low, up):
        assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    np.testing.assert_allclose(np.asarray(up), np.asarray(deg.upsample(low)), atol=1e-5)  # jit == eager
    np.testing.assert_array_equal(np.asarray(up), np.asarray(call(jax.random.PRNGKey(1), x)))  # same key, same
    other = call(jax.random.PRNGKey(2), x)
    assert float(jnp.abs(other - up).max()) > 1e-3  # another key, other blur / kernel / noise draws
    # factor 4 as eDiff-I's 64 -> 256
    assert Degradation.from_config({}, high=64, low=16).degrade(jax.random.PRNGKey(0), x).shape == (4, 16, 16, 3)


def test_degradation_known_cases():
    # a constant image stays constant under every kernel, blur and both upsamplers
    c = jnp.full((2, 64, 64, 3), 0.3)
    for kernel in KERNELS:
        np.testing.assert_allclose(np.asarray(resize_down(c, 32, kernel)), 0.3, atol=1e-6)
    for up in ("bilinear", "nearest"):
        deg = Degradation.from_config({"kernels": KERNELS, "blur_prob": 1.0, "upsample": up}, high=64, low=32)
        np.testing.assert_allclose(np.asarray(jax.jit(deg.__call__)(jax.random.PRNGKey(0), c)), 0.3, atol=1e-6)
    # a block image (nearest-upsampled low-res): area downsampling recovers the low-res exactly, nearest up the image
    low = images(3, b=2, r=32)
    block = jnp.repeat(jnp.repeat(low, 2, axis=1), 2, axis=2)
    plain = Degradation.from_config({"kernels": ["area"], "blur_prob": 0.0, "upsample": "nearest"}, high=64, low=32)
    np.testing.assert_allclose(np.asarray(plain.degrade(jax.random.PRNGKey(0), block)), np.asarray(low), atol=1e-6)
    np.testing.assert_allclose(np.asarray(plain(jax.random.PRNGKey(0), block)), np.asarray(block), atol=1e-6)
    # blur: sigma 0 is the identity, a blurred step edge is smooth and monotone
    x = images(4, b=2)
    np.testing.assert_allclose(np.asarray(gaussian_blur(x, jnp.zeros(2), 3)), np.asarray(x), atol=1e-6)
    step = jnp.broadcast_to(jnp.where(jnp.arange(16) < 8, -1.0, 1.0)[None, None, :, None], (1, 16, 16, 1))
    row = np.asarray(gaussian_blur(step, jnp.ones(1), 3))[0, 0, :, 0]
    assert np.all(np.diff(row) >= -1e-6) and -1 < row[7] < 0 < row[8] < 1
    # pixel noise: std within the configured range
    noisy = Degradation.from_config({"kernels": ["area"], "blur_prob": 0.0, "noise_prob": 1.0,
                                     "noise_std": [0.1, 0.1]}, high=64, low=32)
    d = noisy.degrade(jax.random.PRNGKey(5), jnp.zeros((2, 64, 64, 3)))
    assert abs(float(jnp.std(d)) - 0.1) < 0.01


def test_degradation_config_errors():
    with pytest.raises(ValueError, match="divide"):
        Degradation.from_config({}, high=64, low=24)
    with pytest.raises(ValueError, match="kernels"):
        Degradation.from_config({"kernels": ["lanczos"]}, high=64, low=32)
    with pytest.raises(ValueError, match="unknown degradations"):
        Degradation.from_config({"sigma": 1}, high=64, low=32)
    with pytest.raises(ValueError, match="upsample"):
        Degradation.from_config({"upsample": "cubic"}, high=64, low=32)


# ------------------------------------------------------------------------------------------- noise augmentation

def test_noise_augmentation_edm_and_ddpm():
    aug = NoiseAugmentation.from_config({}, formulation="edm", sigma_data=0.5, num_train_timesteps=1000)
    levels = np.asarray(aug.sample_levels(jax.random.PRNGKey(0), 4000))
    zero = levels == 0
    assert 0.07 < zero.mean() < 0.13  # zero_prob 0.1
    assert levels[~zero].min() >= 0.002 * 0.999 and levels[~zero].max() <= 1.0 * 1.001
    assert abs(np.median(np.log(levels[~zero])) - 0.5 * (np.log(0.002) + np.log(1.0))) < 0.2  # log-uniform
    labels = np.asarray(aug.labels(jnp.asarray([0.0, 0.002, 0.5])))
    np.testing.assert_allclose(labels, 0.25 * np.log([0.002, 0.002, 0.5]), rtol=1e-6)  # EDM's c_noise, floored
    x, n = images(0, b=2), images(1, b=2)
    np.testing.assert_allclose(np.asarray(aug.apply(x, jnp.zeros(2), n)), np.asarray(x) / 0.5, atol=1e-6)
    s = 0.3
    np.testing.assert_allclose(np.asarray(aug.apply(x, jnp.full(2, s), n)),
                               (np.asarray(x) + s * np.asarray(n)) / np.sqrt(0.25 + s * s), atol=1e-5)

    schedule = diffusion.DiscreteSchedule(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    ddpm = NoiseAugmentation.from_config({"max": 100}, formulation="ddpm", sigma_data=0.5, num_train_timesteps=1000)
    t = np.asarray(ddpm.sample_levels(jax.random.PRNGKey(1), 1000))
    assert t.min() >= 0 and t.max() <= 100 and np.all(t == np.round(t))
    np.testing.assert_array_equal(np.asarray(ddpm.labels(jnp.asarray(t[:5]))), t[:5])  # the timestep itself
    t2 = jnp.asarray([10.0, 90.0])
    np.testing.assert_allclose(np.asarray(ddpm.apply(x, t2, n, schedule)),
                               np.asarray(diffusion.add_noise(schedule, x, n, t2.astype(jnp.int32))), atol=1e-6)
    with pytest.raises(ValueError, match="timesteps"):
        NoiseAugmentation.from_config({"max": 1000}, formulation="ddpm", sigma_data=0.5, num_train_timesteps=1000)
    with pytest.raises(ValueError, match="distribution"):
        NoiseAugmentation.from_config({"distribution": "beta"}, formulation="edm", sigma_data=0.5,
                                      num_train_timesteps=1000)


# ------------------------------------------------------------------------------------------- the method

def sr_config(*args, experts=1, **overrides):
    config = load_config(os.path.join(REPO, "configs", f"sr_shapes.py:tiny,experts={experts}"),
                         ["total_steps=2", "log_every=1", "checkpoint_every=2", "progress=False", *args])
    with config.unlocked():  # synthetic 64 px data with ids inside the Shapes word vocabulary
        config.data = common.synthetic_data(resolution=64, max_length=16, vocab_size=16, tokenizer="shapes_word")
        for k, v in overrides.items():
            config[k] = v
    return config


def test_aug_level_reaches_class_embedding(trained):
    config, _, state = trained
    method = get_method("super_resolution", config)
    assert isinstance(method, SuperResolutionMethod) and method.extra_in_channels == 3
    unet = expert_params(state.params["unet"], 0)
    # the class embedding exists and is fed by the sinusoid of the label (diffusers' "timestep" class embedding)
    assert "class_embedding" in unet
    denoise = jax.jit(method.denoiser)
    x = images(1, b=2)
    cond = {"context": jax.random.normal(jax.random.PRNGKey(2), (2, 16, 16)), "low_res": images(3, b=2)}
    t = jnp.full((2,), 0.1)
    out = {}
    for sigma in (0.0, 0.5):
        labels = method.noise_aug.labels(jnp.full((2,), sigma))
        out[sigma] = np.asarray(denoise(unet, x, t, {**cond, "class_labels": labels}))
    print("max |out(aug 0) - out(aug 0.5)|", np.abs(out[0.0] - out[0.5]).max())
    assert np.abs(out[0.0] - out[0.5]).max() > 1e-5  # the aug level changes the denoiser's output
    with pytest.raises(ValueError, match="class_labels"):
        denoise(unet, x, t, cond)
    # the low-res image changes it too
    other = np.asarray(denoise(unet, x, t, {**cond, "low_res": images(4, b=2),
                                            "class_labels": method.noise_aug.labels(jnp.zeros(2))}))
    assert np.abs(other - out[0.0]).max() > 1e-5


def test_sr_config_errors():
    config = sr_config()
    with config.unlocked():
        config.model.unet.class_embed_type = None
    with pytest.raises(ValueError, match="class_embed_type"):
        get_method("super_resolution", config)
    config = sr_config()
    with config.unlocked():
        config.model.unet.in_channels = 3
    with pytest.raises(ValueError, match="in_channels must be 6"):
        get_method("super_resolution", config)
    config = sr_config()
    with config.unlocked():
        config.model.low_res.resolution = 24
    with pytest.raises(ValueError, match="divide"):
        get_method("super_resolution", config)
    config = sr_config()
    with config.unlocked():  # a DDPM SR stage: aug levels are timesteps
        config.model.formulation = "ddpm"
        config.model.low_res.noise_aug = dict(distribution="uniform", min=0, max=200)
        config.sample.sampler = "ddim"
        config.sample.noise_aug_level = 50.0
    method = get_method("super_resolution", config)
    assert method.noise_aug.formulation == "ddpm" and method.aug_level == 50
    # the paper-scale config is well-formed (building it needs its tokenizer folder) and its tiny variant builds
    paper = load_config(os.path.join(REPO, "configs", "ediffi_sr256.py"))
    assert paper.data.resolution == 256 and paper.model.low_res.resolution == 64 and paper.batch_size == 2048
    assert paper.model.unet.block_out_channels == [128, 256, 512, 1024] and paper.model.unet.layers_per_block == 2
    assert tuple(map(tuple, paper.model.experts.nodes)) == ((1, 0), (1, 1)) and paper.optim.lr == 1e-4
    tiny = get_method("super_resolution", load_config(os.path.join(REPO, "configs", "ediffi_sr256.py:tiny")))
    assert tiny.num_experts == 2 and tiny.degradation.factor == 4
    with pytest.raises(ValueError, match="inference only"):
        get_method("cascade", cascade_shapes.get_config("variant=tiny"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny SR config with 2 experts (eDiff-I's E(1,0) + E(1,1)), 2 steps through the train loop."""
    workdir = str(tmp_path_factory.mktemp("sr"))
    config = sr_config(experts=2)
    state = loop.train(config, workdir)
    return config, workdir, state


def test_sr_trains_two_experts(trained):
    config, workdir, state = trained
    assert int(state.step) == 2
    assert set(state.params) == {"unet", "text_encoder"}
    leaves = jax.tree.leaves(state.params["unet"])
    assert all(leaf.shape[0] == 2 for leaf in leaves)  # stacked on the expert axis
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(state.params))
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    losses = [r for r in rows if "loss" in r]
    print("SR losses", [(r["loss_expert_0"], r["loss_expert_1"]) for r in losses])
    assert len(losses) == 2 and all(np.isfinite([r["loss_expert_0"], r["loss_expert_1"]]).all() for r in losses)
    # the two experts were trained apart: their weights differ after the same init
    e0, e1 = (expert_params(state.params["unet"], e) for e in (0, 1))
    diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(e0), jax.tree.leaves(e1)))
    assert diff > 0


@pytest.fixture(scope="module")
def cascade(trained):
    """configs/cascade_shapes.py:variant=tiny with the trained SR stage from its workdir (its config.json, as the
    CLI loads it): a random tiny 32 px base -> the 2-expert SR 32 -> 64."""
    _, workdir, _ = trained
    config = cascade_shapes.get_config("variant=tiny")
    config.stages.sr.update(dict(config="", workdir=workdir, random_init=False, num_steps=2))
    return load_cascade_from_config(config)


def test_sr_samples(cascade):
    stage = cascade.stages[1]
    method, params, frozen = stage.method, stage.params, stage.frozen
    assert isinstance(method, SuperResolutionMethod) and method.num_experts == 2
    low = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    prompts = ["a red circle", "two blue squares"]
    a = method.sample(params, frozen, prompts, seeds=[3, 4], low_res=low, num_steps=2)
    assert a.shape == (2, 64, 64, 3) and a.dtype == np.uint8
    b = method.sample(params, frozen, prompts, seeds=[3, 4], low_res=low, num_steps=2, aug_level=0.8)
    assert np.abs(a.astype(int) - b).max() > 0  # the sampling aug level reaches the model
    floats = method.sample(params, frozen, prompts, seeds=[3, 4], low_res=low / 127.5 - 1.0, num_steps=2)
    assert regenerated_matches(a[0], floats[0])  # uint8 and [-1, 1] low-res inputs are the same images
    with pytest.raises(ValueError, match="needs low_res"):
        method.sample(params, frozen, prompts, seeds=[3, 4])
    with pytest.raises(ValueError, match="32x32"):
        method.sample(params, frozen, prompts, seeds=[3, 4], low_res=np.zeros((2, 16, 16, 3), np.uint8))


def test_cascade_end_to_end(cascade):
    prompts = ["a red circle", "two blue squares"]
    base, final = cascade.sample(prompts, [0, 1], return_all=True)
    assert base.shape == (2, 32, 32, 3) and final.shape == (2, 64, 64, 3) and final.dtype == np.uint8
    assert cascade.resolution == 64
    settings = cascade.sampler().settings["cascade"]
    assert [s["resolution"] for s in settings] == [32, 64] and settings[1]["num_steps"] == 2
    assert settings[1]["aug_level"] == 0.1 and settings[1]["low_resolution"] == 32
    # the SR stage upsamples the base's images, with its own seeds
    sr = cascade.stages[1]
    direct = sr.method.sample(sr.params, sr.frozen, prompts, seeds=[stage_seed(0, 1), stage_seed(1, 1)],
                              low_res=base, num_steps=2)
    np.testing.assert_array_equal(direct, final)
    assert stage_seed(5, 0) == 5 and len({stage_seed(5, k) for k in range(3)}) == 3
    # a stage after the first must be an SR stage whose low resolution is the previous stage's resolution
    fake = types.SimpleNamespace(resolution=16, sample=lambda *a, **k: None)
    with pytest.raises(ValueError, match="upsamples 32px"):
        Cascade([Stage(fake, None, None, name="base16"), sr])
    with pytest.raises(ValueError, match="first stage"):
        Cascade([sr])
