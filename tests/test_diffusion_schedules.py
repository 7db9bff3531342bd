"""DDPM schedules, prediction conversions, losses, min-SNR weights and EDM helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers.training_utils import compute_snr  # noqa: E402

from t2ijax.diffusion import (  # noqa: E402
    DiscreteSchedule,
    add_noise,
    alpha_sigma,
    convert_prediction,
    diffusion_loss,
    discrete_model_as_denoiser,
    edm_loss_weight,
    edm_precondition,
    edm_preconditioning,
    edm_sample_training_sigmas,
    karras_sigmas,
    min_snr_weights,
    sigma_from_timestep,
    snr,
    timestep_from_sigma,
    training_target,
)

SCHEDULES = [
    dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear"),
    dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
    dict(beta_start=0.0001, beta_end=0.02, beta_schedule="squaredcos_cap_v2"),
]


def _rel(ours, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("betas", SCHEDULES, ids=lambda b: b["beta_schedule"])
def test_schedule_tables_add_noise_and_velocity_match_diffusers(betas):
    ours = DiscreteSchedule(**betas)
    ref = diffusers.DDPMScheduler(**betas)
    beta_err = _rel(ours.betas, ref.betas.numpy())
    ac_err = _rel(ours.alphas_cumprod, ref.alphas_cumprod.numpy())
    print(f"{betas['beta_schedule']}: betas rel err {beta_err:.1e}, alphas_cumprod rel err {ac_err:.1e}")
    assert beta_err <= 1e-6 and ac_err <= 2e-6

    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    noise = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    t = np.array([0, 17, 500, 999])
    noisy_ref = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
    velocity_ref = ref.get_velocity(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
    alpha, sigma = alpha_sigma(ours, t)
    assert _rel(add_noise(ours, x0, noise, t), noisy_ref) <= 2e-6
    assert _rel(training_target("v_prediction", x0, noise, alpha, sigma), velocity_ref) <= 2e-6
    # SNR near t = 0 is 1 / (1 - abar): diffusers' float32 table loses ~5e-4 relative there, so
    # the formula is checked on our float64 table.
    ref.alphas_cumprod = torch.from_numpy(ours.alphas_cumprod)
    assert _rel(snr(ours, t), compute_snr(ref, torch.from_numpy(t)).numpy()) <= 1e-6


def test_prediction_conversions_round_trip():
    schedule = DiscreteSchedule()
    rng = np.random.default_rng(1)
    x0 = jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)
    eps = jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)
    t = jnp.array([50, 400, 900])
    alpha, sigma = alpha_sigma(schedule, t)
    x_t = add_noise(schedule, x0, eps, t)
    truth = {kind: training_target(kind, x0, eps, alpha, sigma) for kind in ("epsilon", "v_prediction", "sample")}
    for src, value in truth.items():
        for dst, want in truth.items():
            got = convert_prediction(value, x_t, alpha, sigma, src, dst)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"{src} -> {dst}")
    with pytest.raises(ValueError, match="prediction_type"):
        convert_prediction(x0, x_t, alpha, sigma, "flow", "sample")


def test_min_snr_weights_match_the_formula():
    snr_values = np.array([0.01, 0.5, 1.0, 5.0, 5.0001, 80.0], np.float32)
    gamma = 5.0
    clipped = np.minimum(snr_values, gamma)
    np.testing.assert_allclose(min_snr_weights(snr_values, gamma, "epsilon"), clipped / snr_values, rtol=1e-6)
    np.testing.assert_allclose(min_snr_weights(snr_values, gamma, "v_prediction"), clipped / (snr_values + 1), rtol=1e-6)
    np.testing.assert_allclose(min_snr_weights(snr_values, gamma, "sample"), clipped, rtol=1e-6)
    with pytest.raises(ValueError, match="gamma"):
        min_snr_weights(snr_values, 0.0, "epsilon")


def test_diffusion_loss():
    rng = np.random.default_rng(2)
    pred = rng.standard_normal((4, 2, 3)).astype(np.float32)
    target = rng.standard_normal((4, 2, 3)).astype(np.float32)
    weights = np.array([1.0, 0.5, 2.0, 0.0], np.float32)
    per_example = ((pred - target) ** 2).reshape(4, -1).mean(1)
    np.testing.assert_allclose(diffusion_loss(pred, target), ((pred - target) ** 2).mean(), rtol=1e-6)
    np.testing.assert_allclose(diffusion_loss(pred, target, weights), (per_example * weights).mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="weights"):
        diffusion_loss(pred, target, weights[:2])


def test_edm_preconditioning_against_diffusers_and_closed_form():
    sigmas = np.array([0.002, 0.1, 0.5, 1.0, 9.61, 80.0], np.float32)
    c_skip, c_out, c_in, c_noise = edm_preconditioning(sigmas, sigma_data=0.5)
    ref = diffusers.EDMEulerScheduler(sigma_data=0.5)
    sig_t = torch.from_numpy(sigmas).double()
    ones = torch.ones_like(sig_t)
    np.testing.assert_allclose(c_in, ref._get_conditioning_c_in(sig_t).numpy(), rtol=1e-6)
    np.testing.assert_allclose(c_noise, ref.precondition_noise(sig_t).numpy(), rtol=1e-6, atol=1e-7)
    # precondition_outputs(sample, model_output, sigma) = c_skip * sample + c_out * model_output.
    np.testing.assert_allclose(c_skip, ref.precondition_outputs(ones, 0 * ones, sig_t).numpy(), rtol=1e-6)
    np.testing.assert_allclose(c_out, ref.precondition_outputs(0 * ones, ones, sig_t).numpy(), rtol=1e-6)
    # At sigma = sigma_data: c_skip = 1/2, c_out = sigma_data / sqrt(2), c_in = 1 / (sigma_data sqrt(2)).
    at_data = [float(c) for c in edm_preconditioning(0.5, 0.5)[:3]]
    np.testing.assert_allclose(at_data, [0.5, 0.5 / np.sqrt(2), 1 / (0.5 * np.sqrt(2))], rtol=1e-6)
    np.testing.assert_allclose(edm_loss_weight(sigmas, 0.5), (sigmas**2 + 0.25) / (sigmas * 0.5) ** 2, rtol=1e-6)

    def network(params, x_in, c_noise, cond):
        return params * x_in + c_noise[:, None]

    x = jnp.asarray(np.random.default_rng(3).standard_normal((6, 2)), jnp.float32)
    denoised = edm_precondition(network, 0.5)(2.0, x, sigmas, None)
    want = c_skip[:, None] * x + c_out[:, None] * (2.0 * c_in[:, None] * x + c_noise[:, None])
    np.testing.assert_allclose(denoised, want, rtol=1e-6, atol=1e-6)


def test_karras_grid_and_training_sigmas():
    ref = diffusers.EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    ref.set_timesteps(25)
    assert _rel(karras_sigmas(25, 0.002, 80.0, 7.0), ref.sigmas.numpy()[:-1]) <= 1e-6
    log_sigma = np.log(np.asarray(edm_sample_training_sigmas(jax.random.key(0), (200_000,), -1.2, 1.2)))
    assert abs(log_sigma.mean() + 1.2) < 0.01 and abs(log_sigma.std() - 1.2) < 0.01


def test_sigma_timestep_maps_and_discrete_model_wrapper():
    schedule = DiscreteSchedule(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    ref = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    log_sigmas = np.log(schedule.sigmas)
    sig = np.array([0.02, 0.0292, 0.5, 3.3, 14.6, 20.0])
    ref_t = np.array([ref._sigma_to_t(s, log_sigmas) for s in sig])
    np.testing.assert_allclose(timestep_from_sigma(sig, schedule), ref_t, rtol=1e-5, atol=2e-3)
    t = np.array([0.0, 10.5, 999.0])
    np.testing.assert_allclose(sigma_from_timestep(t, schedule), np.interp(t, np.arange(1000), schedule.sigmas), rtol=1e-6)

    # An exact epsilon model of a point mass at x0 = 0.7: the wrapper must return D(x; sigma) = 0.7.
    def eps_model(params, x_in, t, cond):
        sigma_ve = sigma_from_timestep(t, schedule)[:, None]
        alpha = 1 / jnp.sqrt(sigma_ve**2 + 1)
        return (x_in - alpha * 0.7) / (sigma_ve * alpha)

    denoiser = discrete_model_as_denoiser(eps_model, schedule, "epsilon")
    sigma = jnp.array([0.1, 1.0, 10.0])
    x = 0.7 + sigma[:, None] * jnp.ones((3, 4))
    np.testing.assert_allclose(denoiser(None, x, sigma, None), jnp.full((3, 4), 0.7), rtol=1e-4)
