"""Parity of t2ijax.diffusion samplers with diffusers' schedulers (timesteps, sigmas, step()).

What is compared:

* timesteps: identical to stock diffusers (fractional Karras timesteps to KARRAS_T_TOL);
  sigmas, init_noise_sigma and alphas_cumprod to ``TOL`` relative to stock diffusers.
* ``step()``: our float32 JAX update against diffusers' ``step()`` run in float64 on the
  same float64 ``alphas_cumprod`` table we use (diffusers builds it with a float32 torch
  cumprod, whose rounding makes 1 - alphas_cumprod near t = 0 uncertain at 1e-4 relative,
  which would dominate the comparison). Error metric: ``max|ours - ref| / max|ref|``.
"""

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from t2ijax.diffusion import DDIM, DiscreteSchedule, DPMSolverPlusPlus, Euler, Heun  # noqa: E402

TOL = 2e-6  # relative, see module docstring
# Karras grids map sigmas back to fractional timesteps through log-sigma interpolation; a
# 1e-6 relative difference in the float32 sigma table moves t by up to ~1e-3 (of 1000).
KARRAS_T_TOL = 2e-5

LINEAR = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
COSINE = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="squaredcos_cap_v2")


def _pair(kind, betas, num_steps, float64_tables=False, **kw):
    ours_cls, ref_cls = {
        "ddim": (DDIM, diffusers.DDIMScheduler),
        "euler": (Euler, diffusers.EulerDiscreteScheduler),
        "heun": (Heun, diffusers.HeunDiscreteScheduler),
        "dpm": (DPMSolverPlusPlus, diffusers.DPMSolverMultistepScheduler),
    }[kind]
    eta = kw.pop("eta", 0.0)
    ref_kw = dict(kw)
    if kind == "ddim":
        ref_kw.setdefault("clip_sample", kw.get("clip_sample", False))
        kw = dict(kw, eta=eta)
    ours = ours_cls(schedule=DiscreteSchedule(**betas), **kw)
    ref = ref_cls(**betas, **ref_kw)
    if float64_tables:
        ref.alphas_cumprod = torch.from_numpy(ours.schedule.alphas_cumprod)
        if kind == "ddim":
            ac0 = ref.alphas_cumprod[0] if not kw.get("set_alpha_to_one", True) else 1.0
            ref.final_alpha_cumprod = torch.tensor(ac0, dtype=torch.float64)
    ref.set_timesteps(num_steps)
    ref.is_scale_input_called = True  # Euler warns otherwise; the step does not depend on it.
    return ours, ref, eta


CASES = [
    ("ddim", LINEAR, 50, dict(steps_offset=1)),
    ("ddim", SD, 20, dict(timestep_spacing="trailing", prediction_type="v_prediction", set_alpha_to_one=False)),
    ("ddim", COSINE, 10, dict(timestep_spacing="linspace", prediction_type="sample", clip_sample=True)),
    ("ddim", SD, 12, dict(eta=0.7, steps_offset=1)),
    ("euler", SD, 25, dict()),
    ("euler", LINEAR, 10, dict(timestep_spacing="leading", steps_offset=1, prediction_type="v_prediction")),
    ("euler", SD, 12, dict(timestep_spacing="trailing", prediction_type="sample", final_sigmas_type="sigma_min")),
    ("euler", SD, 15, dict(use_karras_sigmas=True)),
    ("heun", SD, 10, dict()),
    ("heun", LINEAR, 8, dict(use_karras_sigmas=True, prediction_type="v_prediction")),
    ("heun", SD, 6, dict(timestep_spacing="leading", steps_offset=1, prediction_type="sample")),
    ("dpm", LINEAR, 20, dict()),
    ("dpm", SD, 10, dict(timestep_spacing="trailing", prediction_type="v_prediction", use_karras_sigmas=True)),
    ("dpm", SD, 16, dict(solver_type="heun", timestep_spacing="leading", steps_offset=1, final_sigmas_type="sigma_min")),
    ("dpm", COSINE, 12, dict(prediction_type="sample", timestep_spacing="trailing")),
    ("dpm", SD, 8, dict(solver_order=1)),
]
IDS = [f"{k}-{b['beta_schedule']}-{n}-{'-'.join(f'{a}={v}' for a, v in kw.items())}" for k, b, n, kw in CASES]


def _rel(ours, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


@pytest.mark.parametrize("kind,betas,num_steps,kw", CASES, ids=IDS)
def test_timesteps_and_sigmas_match_diffusers(kind, betas, num_steps, kw):
    ours, ref, _ = _pair(kind, betas, num_steps, **dict(kw))
    plan = ours.plan(num_steps)
    assert _rel(ours.schedule.alphas_cumprod, ref.alphas_cumprod.numpy()) <= TOL
    if kw.get("use_karras_sigmas") and kind != "dpm":
        err = _rel(ours.timesteps(num_steps), ref.timesteps.numpy())
        print(f"{kind} karras timesteps rel err {err:.2e}")
        assert err <= KARRAS_T_TOL
    else:
        np.testing.assert_array_equal(ours.timesteps(num_steps), ref.timesteps.numpy())
        np.testing.assert_array_equal(plan.model_times, ref.timesteps.numpy().astype(np.float32))
    if kind != "ddim":
        err = _rel(ours.sigmas(num_steps), ref.sigmas.numpy())
        print(f"{kind} sigmas rel err {err:.2e}")
        assert err <= TOL
        assert abs(plan.init_noise_sigma - float(ref.init_noise_sigma)) <= TOL * float(ref.init_noise_sigma)


@pytest.mark.parametrize("kind,betas,num_steps,kw", CASES, ids=IDS)
def test_steps_match_diffusers(kind, betas, num_steps, kw):
    """Teacher-forced single steps and a free multi-step rollout on fixed random outputs."""
    ours, ref, eta = _pair(kind, betas, num_steps, float64_tables=True, **dict(kw))
    plan = ours.plan(num_steps)
    rng = np.random.default_rng(0)
    shape = (2, 3, 4, 4)
    outputs = rng.standard_normal((plan.num_evals, *shape)).astype(np.float32)
    noises = rng.standard_normal((plan.num_evals, *shape)).astype(np.float32)
    x_ref = rng.standard_normal(shape).astype(np.float32) * float(ref.init_noise_sigma)
    x_free, state_free = x_ref.copy(), plan.init_state(x_ref)
    state_forced = plan.init_state(x_ref)
    step_errs, free_errs = [], []
    for i, t in enumerate(ref.timesteps):
        extra = {"variance_noise": torch.from_numpy(noises[i]).double(), "eta": eta} if kind == "ddim" else {}
        out_ref, x_in_ref = torch.from_numpy(outputs[i]).double(), torch.from_numpy(x_ref).double()
        x_next_ref = ref.step(out_ref, t, x_in_ref, **extra).prev_sample.numpy().astype(np.float32)
        noise = noises[i] if plan.stochastic else None
        state_forced, x_forced = plan.step(state_forced, outputs[i], i, x_ref, noise)
        state_free, x_free = plan.step(state_free, outputs[i], i, x_free, noise)
        step_errs.append(_rel(x_forced, x_next_ref))
        free_errs.append(_rel(x_free, x_next_ref))
        x_ref = x_next_ref
    print(f"{kind}: max single-step rel err {max(step_errs):.2e}, rollout rel err {max(free_errs):.2e}")
    assert max(step_errs) <= 1e-6
    assert max(free_errs) <= TOL
