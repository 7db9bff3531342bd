"""The method kit (t2ijax/methods/common.py): the denoising loss against hand computations, min-SNR and
region weights, EDM, the frozen-model factory's random-weights warning, the hooks' defaults."""

import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from t2ijax import diffusion
from t2ijax.methods.common import (
    DiffusionMethod,
    EDMTraining,
    MethodHooks,
    denoising_loss,
    frozen_text_encoder,
    frozen_unet,
    to_uint8,
)
from t2ijax.train.method import check_method, trainable_item
from t2ijax.train.sampling import make_sampler, sampling_settings

SCHEDULE = diffusion.DiscreteSchedule(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                      beta_schedule="scaled_linear")
T_KEY, NOISE_KEY = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
X0 = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (3, 4, 4, 2), minval=-1, maxval=1))


def denoise(x_t, t):
    """A stand-in network: any fixed function of its inputs."""
    return 0.5 * x_t + 0.01 * jnp.asarray(t, jnp.float32).reshape(-1, 1, 1, 1)


def by_hand(prediction_type):
    """(t, squared error per element, alpha, sigma) of the DDPM noising, computed in numpy."""
    t = np.asarray(jax.random.randint(T_KEY, (3,), 0, 1000))
    noise = np.asarray(jax.random.normal(NOISE_KEY, X0.shape), np.float64)
    ac = SCHEDULE.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    alpha, sigma = np.sqrt(ac), np.sqrt(1 - ac)
    x_t = alpha * X0 + sigma * noise
    target = {"epsilon": noise, "sample": X0, "v_prediction": alpha * noise - sigma * X0}[prediction_type]
    pred = 0.5 * x_t + 0.01 * t.reshape(-1, 1, 1, 1)
    return t, (pred - target) ** 2


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_loss_is_the_mse_to_the_target(prediction_type):
    _, err = by_hand(prediction_type)
    got = denoising_loss(denoise, jnp.asarray(X0), T_KEY, NOISE_KEY, SCHEDULE, prediction_type)
    np.testing.assert_allclose(float(got), err.mean(), rtol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_each_example(prediction_type):
    t, err = by_hand(prediction_type)
    ac = SCHEDULE.alphas_cumprod[t]
    snr = ac / (1 - ac)
    weight = np.minimum(snr, 5.0) / {"epsilon": snr, "v_prediction": snr + 1, "sample": 1.0}[prediction_type]
    got = denoising_loss(denoise, jnp.asarray(X0), T_KEY, NOISE_KEY, SCHEDULE, prediction_type, min_snr_gamma=5.0)
    np.testing.assert_allclose(float(got), (err.reshape(3, -1).mean(1) * weight).mean(), rtol=1e-5)


def test_weight_map_weighs_each_pixel():
    _, err = by_hand("epsilon")
    region = np.zeros((3, 4, 4, 1), np.float32)
    region[:, :2, :2] = 1.0
    weight_map = 1.0 + 3.0 * region  # a region counted 4 times
    got = denoising_loss(denoise, jnp.asarray(X0), T_KEY, NOISE_KEY, SCHEDULE, weight_map=weight_map)
    np.testing.assert_allclose(float(got), (err * weight_map).mean(), rtol=1e-5)
    ones = denoising_loss(denoise, jnp.asarray(X0), T_KEY, NOISE_KEY, SCHEDULE, weight_map=np.ones((3, 4, 4, 1)))
    np.testing.assert_allclose(float(ones), err.mean(), rtol=1e-5)


def test_edm_loss():
    edm = EDMTraining(p_mean=-1.0, p_std=1.5, sigma_data=0.5)
    sigma = np.exp(-1.0 + 1.5 * np.asarray(jax.random.normal(T_KEY, (3,)), np.float64))
    noise = np.asarray(jax.random.normal(NOISE_KEY, X0.shape), np.float64)
    x_t = X0 + sigma.reshape(-1, 1, 1, 1) * noise
    d = 0.5 * x_t + 0.01 * sigma.reshape(-1, 1, 1, 1)
    weight = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    want = (((d - X0) ** 2).reshape(3, -1).mean(1) * weight).mean()
    got = denoising_loss(denoise, jnp.asarray(X0), T_KEY, NOISE_KEY, edm, "edm")
    np.testing.assert_allclose(float(got), want, rtol=1e-4)
    with pytest.raises(ValueError, match="EDMTraining"):
        denoising_loss(denoise, jnp.asarray(X0), T_KEY, NOISE_KEY, SCHEDULE, "edm")
    with pytest.raises(ValueError, match="min-SNR"):
        denoising_loss(denoise, jnp.asarray(X0), T_KEY, NOISE_KEY, edm, "edm", min_snr_gamma=5.0)


TINY_UNET = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=[8], layers_per_block=1,
                 attention_head_dim=[2], down_block_types=["CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D"], cross_attention_dim=8, norm_num_groups=4)


def test_frozen_unet_warns_on_random_weights_and_loads_folders_and_exports(tmp_path):
    from t2ijax.weights import save_unet

    random_unet = frozen_unet(None, TINY_UNET, jnp.float32)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        params = random_unet.params(np.random.default_rng(0))
    assert frozen_unet(None, None, jnp.float32) is None
    save_unet(random_unet.module, params, str(tmp_path / "export" / "unet"))
    for folder in (tmp_path / "export" / "unet", tmp_path / "export"):  # a U-Net folder, a `t2ijax convert` export
        loaded = frozen_unet(str(folder), None, jnp.float32)
        assert loaded.module == random_unet.module
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # loaded weights: no warning
            got = loaded.params(np.random.default_rng(1))
        assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), params, got))


def test_frozen_text_encoder_random_and_bad_kinds():
    fields = dict(vocab_size=0, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    text = frozen_text_encoder(None, fields, "t5", jnp.float32, vocab_size=30, max_length=8)
    assert type(text.module).__name__ == "T5EncoderModel" and text.module.config.vocab_size == 30
    with pytest.warns(UserWarning, match="RANDOM weights"):
        text.params(np.random.default_rng(0))
    with pytest.raises(ValueError, match="text_encoder_type"):
        frozen_text_encoder(None, fields, "bert", jnp.float32, vocab_size=30, max_length=8)


def test_hooks_are_absent_until_a_method_defines_them():
    class Minimal(MethodHooks):
        def init(self, rng, config):
            return {}

        def loss(self, params, frozen, batch, rng):
            return jnp.zeros(()), {}

    method = Minimal()
    check_method(method, "minimal")
    assert trainable_item(method) == "params" and method.frozen(None) == {} and method.flops_per_example is None
    for hook in ("sample", "wrap_loader", "prepare", "export"):  # the loop and CLI test callable(getattr(...))
        assert not callable(getattr(method, hook, None)), hook
    with pytest.raises(ValueError, match="has no sample"):
        make_sampler(method, {}, {})


def test_sampling_defaults_and_uint8():
    config = ml_collections.ConfigDict(dict(
        compute_dtype="float32", data=dict(max_length=8, resolution=8, tokenizer="shapes_word"),
        model=dict(prediction_type="v_prediction"), sample=dict(num_steps=3, guidance_scale=4.0)))
    method = DiffusionMethod(config)
    assert method.caption_dropout == 0.1 and method.clip_sample and method.min_snr_gamma is None
    assert sampling_settings(method) == {"num_steps": 3, "guidance_scale": 4.0}
    assert sampling_settings(method, 7, 1.0) == {"num_steps": 7, "guidance_scale": 1.0}
    with pytest.raises(ValueError, match="at least one prompt"):
        method.tokens([])
    np.testing.assert_array_equal(to_uint8(jnp.asarray([-2.0, -1.0, 0.0, 1.0])), [0, 0, 128, 255])
    bad = ml_collections.ConfigDict(config.to_dict())
    bad.model.caption_dropout = 1.5
    with pytest.raises(ValueError, match="caption_dropout"):
        DiffusionMethod(bad)
