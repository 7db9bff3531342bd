"""The compiled sampling loop: diffusers parity, Gaussian convergence, expert routing, CFG."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg  # noqa: E402

from t2ijax.diffusion import (  # noqa: E402
    DDIM,
    DiscreteSchedule,
    DPMSolverPlusPlus,
    EDMSchedule,
    Euler,
    Heun,
    cfg_denoise,
    discrete_model_as_denoiser,
    expert_table_from_boundaries,
    sample,
    sigma_from_timestep,
    tree_concat,
)
from t2ijax.diffusion.sample_loop import _segments  # noqa: E402

LINEAR = DiscreteSchedule()
SD = DiscreteSchedule(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _rel(ours, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


# --- end-to-end parity with a diffusers-style pipeline loop -------------------------------


def _toy_model(x, t, cond, xp):
    """A nonlinear stand-in for a U-Net, written for both jnp and torch."""
    scale = cond["scale"].reshape((-1,) + (1,) * (x.ndim - 1))
    return xp.tanh(0.8 * x * scale + cond["shift"]) * xp.cos(t.reshape((-1,) + (1,) * (x.ndim - 1)) / 400.0)


def _jax_toy(params, x, t, cond):
    return _toy_model(x, t, cond, jnp) * params["gain"]


PARITY = [
    (DDIM(schedule=SD, steps_offset=1), diffusers.DDIMScheduler, dict(clip_sample=False, steps_offset=1), 10),
    (Euler(schedule=SD, prediction_type="v_prediction"), diffusers.EulerDiscreteScheduler, dict(prediction_type="v_prediction"), 8),
    (Heun(schedule=SD), diffusers.HeunDiscreteScheduler, {}, 5),
    (DPMSolverPlusPlus(schedule=SD), diffusers.DPMSolverMultistepScheduler, {}, 8),
]


@pytest.mark.parametrize("sampler,ref_cls,ref_kw,num_steps", PARITY, ids=["ddim", "euler", "heun", "dpm"])
def test_sample_matches_diffusers_pipeline_loop(sampler, ref_cls, ref_kw, num_steps):
    """Full loop with CFG (scale 4, rescale 0.7) against diffusers' pipeline recipe in float64."""
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    cond = {"scale": np.array([1.0, 0.5], np.float32), "shift": rng.standard_normal((2, 3, 4, 4)).astype(np.float32)}
    uncond = {"scale": np.array([0.9, 0.9], np.float32), "shift": np.zeros((2, 3, 4, 4), np.float32)}
    gain = 1.3

    ref = ref_cls(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", **ref_kw)
    ref.alphas_cumprod = torch.from_numpy(SD.alphas_cumprod)  # float64 tables, see test_diffusion_samplers
    ref.set_timesteps(num_steps)
    both = {k: torch.from_numpy(np.concatenate([uncond[k], cond[k]])).double() for k in cond}
    x = torch.from_numpy(noise).double() * ref.init_noise_sigma
    for t in ref.timesteps:
        x_in = ref.scale_model_input(torch.cat([x, x]), t)
        out = _toy_model(x_in, torch.full((4,), float(t), dtype=torch.float64), both, torch) * gain
        out_u, out_c = out.chunk(2)
        guided = rescale_noise_cfg(out_u + 4.0 * (out_c - out_u), out_c, guidance_rescale=0.7)
        x = ref.step(guided, t, x).prev_sample.double()

    ours = sample(
        _jax_toy, {"gain": jnp.float32(gain)}, sampler, jnp.asarray(noise), cond,
        num_steps=num_steps, uncond=uncond, guidance_scale=4.0, guidance_rescale=0.7,
    )
    err = _rel(ours, x.numpy())
    print(f"{type(sampler).__name__}: loop vs diffusers rel err {err:.2e}")
    assert err <= 1e-5


# --- convergence on a Gaussian data distribution with its exact denoiser ------------------

MU, STD = 1.5, 0.8


def _exact_x0(x_vp, alpha, sigma):
    """E[x0 | x_t] for x0 ~ N(MU, STD^2), x_t = alpha x0 + sigma eps."""
    return MU + alpha * STD**2 / (alpha**2 * STD**2 + sigma**2) * (x_vp - alpha * MU)


def _gaussian_model(schedule, prediction_type):
    def denoise_fn(params, x_in, t, cond):
        sigma_ve = sigma_from_timestep(t, schedule)[:, None]
        alpha = 1.0 / jnp.sqrt(sigma_ve**2 + 1.0)
        sigma = sigma_ve * alpha
        x0 = _exact_x0(x_in, alpha, sigma)
        eps = (x_in - alpha * x0) / sigma
        return {"epsilon": eps, "sample": x0, "v_prediction": alpha * eps - sigma * x0}[prediction_type]

    return denoise_fn


def _edm_gaussian(params, x, sigma, cond):
    return _exact_x0(x, 1.0, sigma[:, None])


CONVERGENCE = [
    ("ddim-v", _gaussian_model(LINEAR, "v_prediction"), DDIM(schedule=LINEAR, prediction_type="v_prediction", steps_offset=1), 100),
    ("euler-eps", _gaussian_model(LINEAR, "epsilon"), Euler(schedule=LINEAR), 100),
    ("dpm++2m-x0", _gaussian_model(LINEAR, "sample"), DPMSolverPlusPlus(schedule=LINEAR, prediction_type="sample"), 20),
    ("heun-edm", _edm_gaussian, Heun(schedule=EDMSchedule(), prediction_type="sample"), 40),
    (
        "heun-edm-discrete-eps",
        discrete_model_as_denoiser(_gaussian_model(LINEAR, "epsilon"), LINEAR, "epsilon"),
        Heun(schedule=EDMSchedule(sigma_min=0.01, sigma_max=150.0), prediction_type="sample"),
        40,
    ),
]


@pytest.mark.parametrize("name,denoise_fn,sampler,num_steps", CONVERGENCE, ids=[c[0] for c in CONVERGENCE])
def test_loop_converges_to_gaussian_data(name, denoise_fn, sampler, num_steps):
    """The probability-flow ODE maps N(0, I) onto N(MU, STD^2); step counts are chosen so the
    solvers' own discretisation error (first order for DDIM / Euler) is below the tolerance."""
    noise = jax.random.normal(jax.random.key(0), (16384, 2))
    out = np.asarray(sample(denoise_fn, {}, sampler, noise, {}, num_steps=num_steps))
    print(f"{name}: mean {out.mean():.4f} (want {MU}), std {out.std():.4f} (want {STD})")
    assert abs(out.mean() - MU) < 0.02
    assert abs(out.std() - STD) < 0.02


# --- static expert routing -----------------------------------------------------------------


def _affine_expert(params, x, t, cond):
    return params["c"] + 0.1 * x


@pytest.mark.parametrize("sampler", [Heun(schedule=SD), DPMSolverPlusPlus(schedule=SD)], ids=["heun", "dpm"])
def test_expert_table_routes_each_evaluation(sampler):
    num_steps = 6
    plan = sampler.plan(num_steps)
    experts = [{"c": jnp.float32(c)} for c in (0.0, 1.0, -2.0)]
    table = tuple((0, 0, 2, 1, 1, 0, 2, 2, 1, 0, 1)[: plan.num_evals])
    noise = jax.random.normal(jax.random.key(1), (2, 4))

    # Reference: eager Python loop over plan.step, picking the expert by hand.
    x = noise * plan.init_noise_sigma
    state = plan.init_state(x)
    for i in range(plan.num_evals):
        out = _affine_expert(experts[table[i]], x * plan.input_scales[i], None, None)
        state, x = plan.step(state, out, i, x)
    routed = sample(_affine_expert, experts, sampler, noise, {}, num_steps=num_steps, expert_table=table)
    np.testing.assert_allclose(routed, x, rtol=1e-5, atol=1e-6)

    # Identical experts split into segments must equal one unsegmented scan (state carries).
    same = [experts[1]] * 3
    segmented = sample(_affine_expert, same, sampler, noise, {}, num_steps=num_steps, expert_table=table)
    single = sample(_affine_expert, experts[1], sampler, noise, {}, num_steps=num_steps)
    np.testing.assert_allclose(segmented, single, rtol=1e-6, atol=1e-6)
    assert not np.allclose(routed, single)


def test_per_expert_denoise_functions():
    sampler, num_steps = Euler(schedule=SD), 4
    fns = (_affine_expert, lambda p, x, t, c: p["c"] - 0.2 * x)
    params = [{"c": jnp.float32(0.5)}, {"c": jnp.float32(-0.5)}]
    table = (0, 1, 1, 0)
    noise = jax.random.normal(jax.random.key(2), (3, 2))
    plan = sampler.plan(num_steps)
    x = noise * plan.init_noise_sigma
    state = plan.init_state(x)
    for i, e in enumerate(table):
        state, x = plan.step(state, fns[e](params[e], x * plan.input_scales[i], None, None), i, x)
    got = sample(fns, params, sampler, noise, {}, num_steps=num_steps, expert_table=table)
    np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-6)


def test_expert_table_from_boundaries():
    ddim = DDIM(schedule=LINEAR, steps_offset=1).plan(50)
    ernie = expert_table_from_boundaries(ddim.model_times, boundaries=range(100, 1000, 100))
    assert ernie == tuple(int(t) // 100 for t in ddim.model_times)
    # eDiff-I Config-D on a 25-step EDM rho=7 grid: 9 high-noise, 11 middle, 5 low-noise steps.
    edm = Euler(schedule=EDMSchedule(), prediction_type="sample").plan(25)
    ediff = expert_table_from_boundaries(edm.eval_sigmas, boundaries=(0.0757, 9.61))
    assert (ediff.count(2), ediff.count(1), ediff.count(0)) == (9, 11, 5)
    assert [seg[0] for seg in _segments(ediff)] == [2, 1, 0]
    with pytest.raises(ValueError, match="strictly increasing"):
        expert_table_from_boundaries([1.0], boundaries=(5, 2))


def test_bad_inputs_are_rejected_before_compute():
    noise = jnp.zeros((1, 2))
    with pytest.raises(ValueError, match="model evaluations"):
        sample(_affine_expert, [{"c": 0.0}], Heun(schedule=SD), noise, {}, num_steps=3, expert_table=(0, 0, 0))
    with pytest.raises(ValueError, match="stacked on a leading expert axis"):
        sample(_affine_expert, {"c": 0.0}, Euler(schedule=SD), noise, {}, num_steps=2, expert_table=(0, 0))
    with pytest.raises(ValueError, match="PRNG"):
        sample(_affine_expert, {"c": 0.0}, DDIM(eta=1.0), noise, {}, num_steps=2)
    with pytest.raises(ValueError, match="timestep_spacing"):
        Euler(timestep_spacing="bogus").plan(4)


def test_stochastic_ddim_uses_the_key():
    sampler = DDIM(schedule=LINEAR, eta=1.0)
    noise = jnp.ones((2, 3))
    run = lambda k: sample(_affine_expert, {"c": jnp.float32(0.0)}, sampler, noise, {}, num_steps=5, key=jax.random.key(k))  # noqa: E731
    np.testing.assert_array_equal(run(0), run(0))
    assert not np.allclose(run(0), run(1))


# --- classifier-free guidance --------------------------------------------------------------

_cfg = jax.jit(cfg_denoise, static_argnums=0, static_argnames="guidance_rescale")


def test_cfg_scale_one_is_the_conditional_prediction():
    x = jax.random.normal(jax.random.key(3), (2, 3, 4, 4))
    t = jnp.array([10.0, 500.0])
    cond = {"scale": jnp.array([1.0, 2.0]), "shift": jnp.full((2, 3, 4, 4), 0.3)}
    uncond = {"scale": jnp.array([0.5, 0.5]), "shift": jnp.zeros((2, 3, 4, 4))}
    params = {"gain": jnp.float32(1.0)}
    guided = _cfg(_jax_toy, params, x, t, cond, uncond, 1.0)
    np.testing.assert_allclose(guided, _jax_toy(params, x, t, cond), rtol=0, atol=1e-6)


def test_cfg_rescale_matches_diffusers_and_pytrees_are_checked():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    t = np.array([10.0, 500.0], np.float32)
    cond = {"scale": np.array([1.0, 2.0], np.float32), "shift": rng.standard_normal((2, 3, 4, 4)).astype(np.float32)}
    uncond = {"scale": np.array([0.5, 0.5], np.float32), "shift": np.zeros((2, 3, 4, 4), np.float32)}
    params = {"gain": jnp.float32(1.0)}
    guided = _cfg(_jax_toy, params, x, t, cond, uncond, 7.5, guidance_rescale=0.6)
    out_c = _toy_model(torch.from_numpy(x), torch.from_numpy(t), {k: torch.from_numpy(v) for k, v in cond.items()}, torch)
    out_u = _toy_model(torch.from_numpy(x), torch.from_numpy(t), {k: torch.from_numpy(v) for k, v in uncond.items()}, torch)
    ref = rescale_noise_cfg(out_u + 7.5 * (out_c - out_u), out_c, guidance_rescale=0.6).numpy()
    err = _rel(guided, ref)
    print(f"cfg rescale rel err {err:.2e}")
    assert err <= 1e-5

    with pytest.raises(ValueError, match="structure"):
        tree_concat({"a": x}, {"b": x})
    with pytest.raises(ValueError, match="pad both"):
        tree_concat({"a": x}, {"a": x[:, :2]})
