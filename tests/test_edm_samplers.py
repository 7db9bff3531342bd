"""Samplers on an ``EDMSchedule``: parity with diffusers' EDM schedulers and EDM Algorithm 1.

Our EDM samplers call the model as D(x; sigma) on the raw x (prediction "sample") or as
eps (x0 = x - sigma * eps); diffusers' ``EDMDPMSolverMultistepScheduler`` /
``EDMEulerScheduler`` precondition internally: the network sees c_in x and its output F is
turned into x0 = c_skip x + c_out F. Both sides are driven by the same deterministic toy
denoiser D(x; sigma) by feeding diffusers F = (D(x; sigma) - c_skip x) / c_out, computed
from the unscaled sample with diffusers' own (float32) c_skip / c_out, so that its
``precondition_outputs`` gives back D. Both start from the same x_T = sigma_max * noise
(diffusers' ``init_noise_sigma`` is sqrt(sigma_max^2 + 1); its pipelines' choice, not part
of the solver). Our loop runs in float32, the references in float64 (EDMEulerScheduler
upcasts to float32 internally); error metric ``max|ours - ref| / max|ref|``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from t2ijax.diffusion import (  # noqa: E402
    DPMSolverPlusPlus,
    EDMSchedule,
    Euler,
    Heun,
    expert_table_from_boundaries,
    sample,
)

TOL = 1e-5
# EDMDPMSolverMultistepScheduler builds its Karras grid in float32 torch arithmetic (the
# rho-th power amplifies the rounding: sigma_max 80 comes out as 79.99998); we build it in
# float64 and round once to float32 (as EDMEulerScheduler does), so grids differ by ~1e-6.
DPM_GRID_TOL = 5e-6
SIGMA_DATA = 0.5
SHAPE = (2, 3, 4, 4)
_RNG = np.random.default_rng(0)
NOISE = _RNG.standard_normal(SHAPE).astype(np.float32)
SHIFT = (0.5 * _RNG.standard_normal(SHAPE)).astype(np.float32)


def _toy_denoiser(x, sigma, shift, xp):
    """A nonlinear stand-in for D(x; sigma) (sigma broadcastable to x), for jnp / numpy / torch."""
    return x / (1 + sigma**2) + sigma / (1 + sigma) * xp.tanh(0.8 * x + shift)


def _per_example(sigma, x):
    return sigma.reshape((-1,) + (1,) * (x.ndim - 1))


def _jax_denoiser(params, x, sigma, cond):
    return _toy_denoiser(x, _per_example(sigma, x), cond["shift"], jnp) * params["gain"]


def _jax_eps(params, x, sigma, cond):
    s = _per_example(sigma, x)
    return (x - _toy_denoiser(x, s, cond["shift"], jnp) * params["gain"]) / s


MODELS = {"sample": _jax_denoiser, "epsilon": _jax_eps}
GAIN = 1.1


def _ours(sampler, num_steps):
    return np.asarray(
        sample(MODELS[sampler.prediction_type], {"gain": jnp.float32(GAIN)}, sampler, jnp.asarray(NOISE),
               {"shift": jnp.asarray(SHIFT)}, num_steps=num_steps)
    )


def _ref_model_output(ref, x, sigma):
    """The network output F that diffusers' ``precondition_outputs`` maps back to D(x; sigma)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)  # diffusers' coefficients, in its precision
    c_skip = SIGMA_DATA**2 / (sigma**2 + SIGMA_DATA**2)
    c_out = sigma * SIGMA_DATA / (sigma**2 + SIGMA_DATA**2) ** 0.5
    d = _toy_denoiser(x, sigma.double(), torch.from_numpy(SHIFT).double(), torch) * GAIN
    return (d - c_skip.double() * x) / c_out.double()


def _rel(ours, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


# --- DPM-Solver++ vs EDMDPMSolverMultistepScheduler ---------------------------------------

DPM_CASES = [
    (5, dict()),
    (10, dict(prediction_type="epsilon")),
    (25, dict()),
    (5, dict(solver_order=1)),
    (10, dict(solver_order=1, prediction_type="epsilon")),
    (25, dict(solver_order=1)),
    (10, dict(solver_type="heun")),
    (25, dict(solver_type="heun", prediction_type="epsilon")),
    (10, dict(final_sigmas_type="sigma_min", lower_order_final=False)),
    (20, dict(final_sigmas_type="sigma_min")),
    (20, dict(final_sigmas_type="sigma_min", euler_at_final=True)),
]
DPM_IDS = [f"{n}-" + "-".join(f"{k}={v}" for k, v in kw.items()) for n, kw in DPM_CASES]
SCHEDULE = EDMSchedule(sigma_min=0.002, sigma_max=80.0, rho=7.0)


def _edm_dpm_ref(num_steps, kw, schedule=SCHEDULE):
    kw = {k: v for k, v in kw.items() if k != "prediction_type"}
    return diffusers.EDMDPMSolverMultistepScheduler(
        sigma_min=schedule.sigma_min, sigma_max=schedule.sigma_max, rho=schedule.rho, sigma_data=SIGMA_DATA,
        sigma_schedule="karras", algorithm_type="dpmsolver++", prediction_type="epsilon", **kw,
    )


@pytest.mark.parametrize("num_steps,kw", DPM_CASES, ids=DPM_IDS)
def test_dpm_solver_matches_diffusers_edm_dpm(num_steps, kw):
    ours_sampler = DPMSolverPlusPlus(schedule=SCHEDULE, **kw)
    ref = _edm_dpm_ref(num_steps, kw)
    ref.set_timesteps(num_steps)

    plan = ours_sampler.plan(num_steps)
    np.testing.assert_allclose(ours_sampler.sigmas(num_steps), ref.sigmas.numpy(), rtol=DPM_GRID_TOL, atol=0)
    np.testing.assert_array_equal(plan.model_times, ours_sampler.sigmas(num_steps)[:-1])
    np.testing.assert_allclose(0.25 * np.log(plan.model_times), ref.timesteps.numpy(), rtol=DPM_GRID_TOL, atol=1e-6)
    np.testing.assert_array_equal(plan.input_scales, np.ones(num_steps, np.float32))
    assert plan.init_noise_sigma == SCHEDULE.sigma_max

    x = torch.from_numpy(NOISE).double() * SCHEDULE.sigma_max
    for i, t in enumerate(ref.timesteps):
        x_in = ref.scale_model_input(x, t)  # c_in * x: what a preconditioned network would see
        sigma = ref.sigmas[i]
        torch.testing.assert_close(x_in, x / (sigma.double() ** 2 + SIGMA_DATA**2) ** 0.5, rtol=1e-6, atol=0)
        x = ref.step(_ref_model_output(ref, x, sigma), t, x).prev_sample.double()

    err = _rel(_ours(ours_sampler, num_steps), x.numpy())
    print(f"EDM DPM-Solver++ {DPM_IDS[DPM_CASES.index((num_steps, kw))]}: loop vs diffusers rel err {err:.2e}")
    assert err <= TOL


def test_dpm_solver_other_edm_range_matches_diffusers():
    """A non-default sigma range and rho (the grid follows the schedule)."""
    schedule, num_steps = EDMSchedule(sigma_min=0.03, sigma_max=14.6, rho=5.0), 12
    ref = _edm_dpm_ref(num_steps, {}, schedule)
    ref.set_timesteps(num_steps)
    x = torch.from_numpy(NOISE).double() * schedule.sigma_max
    for i, t in enumerate(ref.timesteps):
        ref.scale_model_input(x, t)
        x = ref.step(_ref_model_output(ref, x, ref.sigmas[i]), t, x).prev_sample.double()
    err = _rel(_ours(DPMSolverPlusPlus(schedule=schedule, prediction_type="sample"), num_steps), x.numpy())
    print(f"EDM DPM-Solver++ sigma in [0.03, 14.6], rho 5: rel err {err:.2e}")
    assert err <= TOL


def test_dpm_solver_zero_length_final_step_is_identity():
    """final_sigmas_type="sigma_min" repeats sigma_min, so with 15+ steps (no lower_order_final)
    the last step is a 2nd-order step of length h = 0. Its limit is the identity; diffusers'
    heun-type coefficient is (exp(-h) - 1) / h + 1 = 0/0 there and its loop returns NaN, so the
    reference is diffusers' loop stopped before that step."""
    num_steps, kw = 20, dict(final_sigmas_type="sigma_min", solver_type="heun")
    ref = _edm_dpm_ref(num_steps, kw)
    ref.set_timesteps(num_steps)
    x = torch.from_numpy(NOISE).double() * SCHEDULE.sigma_max
    for i, t in enumerate(ref.timesteps[:-1]):
        ref.scale_model_input(x, t)
        x = ref.step(_ref_model_output(ref, x, ref.sigmas[i]), t, x).prev_sample.double()
    ours = _ours(DPMSolverPlusPlus(schedule=SCHEDULE, prediction_type="sample", **kw), num_steps)
    assert np.isfinite(ours).all()
    err = _rel(ours, x.numpy())
    print(f"EDM DPM-Solver++ heun, sigma_min, zero-length last step: rel err {err:.2e}")
    assert err <= TOL


def test_dpm_solver_edm_rejects_v_prediction():
    with pytest.raises(ValueError, match="EDMSchedule"):
        DPMSolverPlusPlus(schedule=SCHEDULE, prediction_type="v_prediction").plan(5)


# --- Euler vs EDMEulerScheduler ------------------------------------------------------------

EULER_CASES = [
    (5, dict(prediction_type="sample")),
    (10, dict(prediction_type="epsilon")),
    (25, dict(prediction_type="sample")),
    (10, dict(prediction_type="sample", final_sigmas_type="sigma_min")),
]
EULER_IDS = [f"{n}-" + "-".join(f"{k}={v}" for k, v in kw.items()) for n, kw in EULER_CASES]


@pytest.mark.parametrize("num_steps,kw", EULER_CASES, ids=EULER_IDS)
def test_euler_matches_diffusers_edm_euler(num_steps, kw):
    ours_sampler = Euler(schedule=SCHEDULE, **kw)
    ref = diffusers.EDMEulerScheduler(
        sigma_min=SCHEDULE.sigma_min, sigma_max=SCHEDULE.sigma_max, rho=SCHEDULE.rho, sigma_data=SIGMA_DATA,
        sigma_schedule="karras", prediction_type="epsilon", final_sigmas_type=kw.get("final_sigmas_type", "zero"),
    )
    ref.set_timesteps(num_steps)
    np.testing.assert_allclose(ours_sampler.sigmas(num_steps), ref.sigmas.numpy(), rtol=1e-6, atol=0)
    plan = ours_sampler.plan(num_steps)
    np.testing.assert_array_equal(plan.eval_sigmas, plan.model_times.astype(np.float64))

    x = torch.from_numpy(NOISE).double() * SCHEDULE.sigma_max
    for i, t in enumerate(ref.timesteps):
        ref.scale_model_input(x, t)
        x = ref.step(_ref_model_output(ref, x, ref.sigmas[i]), t, x).prev_sample.double()

    err = _rel(_ours(ours_sampler, num_steps), x.numpy())
    print(f"EDM Euler {EULER_IDS[EULER_CASES.index((num_steps, kw))]}: loop vs diffusers rel err {err:.2e}")
    assert err <= TOL


# --- Heun vs EDM Algorithm 1 (diffusers has no EDM Heun scheduler) -------------------------


def _edm_algorithm_1(denoise, x, num_steps, sigma_min, sigma_max, rho):
    """Karras et al. 2022, Algorithm 1 (deterministic), float64 numpy."""
    i = np.arange(num_steps)
    t = (sigma_max ** (1 / rho) + i / max(num_steps - 1, 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = np.append(t, 0.0)
    x = x * t[0]
    for k in range(num_steps):
        d = (x - denoise(x, t[k])) / t[k]
        x_next = x + (t[k + 1] - t[k]) * d
        if t[k + 1] != 0:
            d_prime = (x_next - denoise(x_next, t[k + 1])) / t[k + 1]
            x_next = x + (t[k + 1] - t[k]) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return x


@pytest.mark.parametrize("num_steps,prediction_type", [(5, "sample"), (18, "epsilon")])
def test_heun_matches_edm_algorithm_1(num_steps, prediction_type):
    s = SCHEDULE

    def denoise(x, sigma):
        return _toy_denoiser(x, sigma, SHIFT.astype(np.float64), np) * GAIN

    ref = _edm_algorithm_1(denoise, NOISE.astype(np.float64), num_steps, s.sigma_min, s.sigma_max, s.rho)
    sampler = Heun(schedule=s, prediction_type=prediction_type)
    plan = sampler.plan(num_steps)
    assert plan.num_evals == 2 * num_steps - 1
    np.testing.assert_array_equal(plan.eval_sigmas, plan.model_times.astype(np.float64))
    err = _rel(_ours(sampler, num_steps), ref)
    print(f"EDM Heun {num_steps} {prediction_type}: loop vs Algorithm 1 rel err {err:.2e}")
    assert err <= TOL


# --- eval_sigmas are the model's sigmas, so sigma-boundary routing is right ---------------


def test_dpm_solver_eval_sigmas_route_experts():
    sampler, num_steps = DPMSolverPlusPlus(schedule=SCHEDULE, prediction_type="sample"), 25
    plan = sampler.plan(num_steps)
    np.testing.assert_array_equal(plan.eval_sigmas, plan.model_times.astype(np.float64))
    np.testing.assert_array_equal(plan.eval_sigmas, sampler.sigmas(num_steps)[:-1].astype(np.float64))

    boundaries = (0.0757, 9.61)  # eDiff-I Config-D: low / middle / high-noise experts
    table = expert_table_from_boundaries(plan.eval_sigmas, boundaries)
    assert (table.count(2), table.count(1), table.count(0)) == (9, 11, 5)

    calls = []

    def make_expert(j):
        def expert(params, x, sigma, cond):
            jax.debug.callback(lambda s: calls.append((j, np.asarray(s).copy())), sigma, ordered=True)
            return _jax_denoiser(params, x, sigma, cond)

        return expert

    fns = tuple(make_expert(j) for j in range(3))
    params = [{"gain": jnp.float32(GAIN)}] * 3
    routed = sample(fns, params, sampler, jnp.asarray(NOISE), {"shift": jnp.asarray(SHIFT)},
                    num_steps=num_steps, expert_table=table)
    jax.effects_barrier()
    assert len(calls) == plan.num_evals
    seen = np.array([s[0] for _, s in calls], np.float64)
    np.testing.assert_array_equal(seen, plan.eval_sigmas)
    for (j, s), want in zip(calls, table):
        assert np.all(s == s[0]) and j == want
        assert j == int(np.searchsorted(boundaries, float(s[0]), side="right"))
    # Identical experts: routing changes nothing.
    np.testing.assert_allclose(routed, _ours(sampler, num_steps), rtol=1e-6, atol=1e-6)


# --- DPM-Solver++ on EDM sigmas solves the probability-flow ODE ---------------------------

MU, STD = 1.5, 0.8


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon"])
def test_dpm_solver_edm_converges_to_gaussian_data(prediction_type):
    """Exact denoiser of x0 ~ N(MU, STD^2) under x = x0 + sigma eps: 2M on 40 EDM steps
    (on the sigma_max = 80, rho = 7 grid 20 steps still leave a 4% error in the std)."""

    def exact(params, x, sigma, cond):
        s = sigma[:, None]
        x0 = MU + STD**2 / (STD**2 + s**2) * (x - MU)
        return x0 if prediction_type == "sample" else (x - x0) / s

    noise = jax.random.normal(jax.random.key(0), (16384, 2))
    out = np.asarray(sample(exact, {}, DPMSolverPlusPlus(schedule=SCHEDULE, prediction_type=prediction_type), noise, {},
                            num_steps=40))
    print(f"EDM DPM++ {prediction_type}: mean {out.mean():.4f} (want {MU}), std {out.std():.4f} (want {STD})")
    assert abs(out.mean() - MU) < 0.02
    assert abs(out.std() - STD) < 0.02


def test_first_order_dpm_solver_on_edm_sigmas_is_euler():
    """In the VE data-prediction form DPM-Solver++(1) is x' = (s'/s) x + (1 - s'/s) D = Euler."""
    for prediction_type in ("sample", "epsilon"):
        dpm = _ours(DPMSolverPlusPlus(schedule=SCHEDULE, prediction_type=prediction_type, solver_order=1), 10)
        euler = _ours(Euler(schedule=SCHEDULE, prediction_type=prediction_type), 10)
        np.testing.assert_allclose(dpm, euler, rtol=1e-5, atol=1e-5)
