"""Samplers that reproduce diffusers' schedulers step for step, as pure JAX updates.

============================  ==========================================================
t2ijax                        diffusers (0.42)
============================  ==========================================================
``DDIM``                      ``DDIMScheduler``
``Euler``                     ``EulerDiscreteScheduler`` (deterministic: s_churn = 0);
                              with an ``EDMSchedule``: ``EDMEulerScheduler``
``Heun``                      ``HeunDiscreteScheduler`` (EDM Algorithm 1, 2nd order);
                              with an ``EDMSchedule``: EDM Algorithm 1 itself (diffusers
                              has no EDM Heun scheduler)
``DPMSolverPlusPlus``         ``DPMSolverMultistepScheduler`` (algorithm "dpmsolver++",
                              solver_order 1 or 2, midpoint / heun, lower_order_final);
                              with an ``EDMSchedule``: ``EDMDPMSolverMultistepScheduler``
                              (sigma_schedule "karras", same options)
============================  ==========================================================

``DDIM`` takes a ``DiscreteSchedule`` only; ``Euler``, ``Heun`` and ``DPMSolverPlusPlus``
take a ``DiscreteSchedule`` or an ``EDMSchedule``.

A sampler is a hashable config. ``sampler.timesteps(n)`` returns diffusers'
``scheduler.timesteps`` after ``set_timesteps(n)`` (with an ``EDMSchedule``: the sigmas
the model is called with, where diffusers' EDM schedulers hold c_noise = log(sigma) / 4);
``sampler.plan(n)`` returns a
``SamplingPlan``: static host-side per-evaluation tables plus the pure update
``plan.step(state, model_output, i, x, noise=None) -> (state, x_next)``, where ``i`` is the
model-evaluation index (it may be traced) and ``state`` is a pytree from
``plan.init_state(x)`` (Heun's first-stage derivative, DPM-Solver's previous x0 estimate).
The step lives on the plan because its coefficient tables depend on the number of steps.

Coefficients are computed on the host in float64 from the same float32 timestep / sigma
tables diffusers uses, then applied in the sample's dtype; results agree with diffusers'
float32 ``step()`` to float32 rounding (~1e-6 relative).

Model contract. Evaluation ``i`` calls the model on ``x * plan.input_scales[i]`` at time
``plan.model_times[i]``:

* with a ``DiscreteSchedule`` the time is diffusers' discrete timestep (float) and the
  input is scaled as diffusers' ``scale_model_input`` does (1/sqrt(sigma^2+1) for Euler /
  Heun, 1 for DDIM / DPM-Solver); the output is a ``prediction_type`` prediction.
* with an ``EDMSchedule`` (Euler / Heun / DPM-Solver++) the time is sigma (float32 Karras
  grid, ``plan.model_times == plan.eval_sigmas``), the input is the raw x (input scale 1,
  ``init_noise_sigma`` = sigma_max), and the output is D(x; sigma) ("sample") or epsilon
  (x0 = x - sigma * eps). diffusers' EDM schedulers instead precondition internally
  (c_in x in, c_skip x + c_out F out, c_noise time) and start from sqrt(sigma_max^2 + 1)
  noise; wrap a raw EDM network with ``edm.precondition`` to get D.

Deliberate differences from diffusers, each a documented switch or omission:
``DDIM.clip_sample`` defaults to False (diffusers: True). Not provided: dynamic
thresholding, ``rescale_betas_zero_snr``, Euler's s_churn, DPM-Solver's SDE variants,
third order, ``lambda_min_clipped``, and the exponential / beta / Lu sigma grids
(including the EDM schedulers' ``sigma_schedule="exponential"``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from t2ijax.diffusion.edm import EDMSchedule, karras_sigmas, timestep_from_sigma_np
from t2ijax.diffusion.schedules import DiscreteSchedule, check_prediction_type, convert_prediction

SPACINGS = ("leading", "trailing", "linspace")


@dataclasses.dataclass(frozen=True, eq=False)
class SamplingPlan:
    """Static per-evaluation tables for one (sampler, num_steps) and its pure update.

    Attributes:
      model_times: (num_evals,) time argument passed to the model at each evaluation.
      input_scales: (num_evals,) the model sees ``x * input_scales[i]``.
      eval_sigmas: (num_evals,) VE noise level sqrt((1-abar)/abar) (or EDM sigma) of each
        evaluation, for routing steps to experts by sigma.
      init_noise_sigma: multiply standard-normal noise by this to get the initial sample.
      stochastic: whether ``step`` needs ``noise`` (DDIM with eta > 0).
      coefs: per-evaluation coefficient tables used by ``step``.
    """

    model_times: np.ndarray
    input_scales: np.ndarray
    eval_sigmas: np.ndarray
    init_noise_sigma: float
    stochastic: bool
    coefs: dict[str, np.ndarray]
    step_fn: Callable[..., Any]
    init_state_fn: Callable[[Any], Any]

    @property
    def num_evals(self) -> int:
        return len(self.model_times)

    def init_state(self, x):
        """Initial sampler state for a sample shaped like ``x``."""
        return self.init_state_fn(x)

    def step(self, state, model_output, i, x, noise=None):
        """One update at evaluation index ``i``: returns ``(new_state, x_next)``."""
        if self.stochastic and noise is None:
            raise ValueError("this sampler is stochastic (eta > 0): pass `noise` shaped like x")
        coef = {name: jnp.asarray(table, jnp.float32)[i].astype(x.dtype) for name, table in self.coefs.items()}
        return self.step_fn(coef, state, model_output.astype(x.dtype), i, x, noise)


def _check_common(num_steps: int, spacing: str, prediction_type: str):
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {spacing!r}")
    check_prediction_type(prediction_type)


def _check_steps_fit(num_steps: int, schedule: DiscreteSchedule):
    if num_steps > schedule.num_train_timesteps:
        raise ValueError(
            f"num_steps={num_steps} exceeds the schedule's num_train_timesteps={schedule.num_train_timesteps}"
        )


def _sigma_space_timesteps(num_steps: int, train_steps: int, spacing: str, offset: int) -> np.ndarray:
    """Euler / Heun ``set_timesteps`` spacing (float32, descending)."""
    if spacing == "linspace":
        return np.linspace(0, train_steps - 1, num_steps, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ratio = train_steps // num_steps
        return (np.arange(0, num_steps) * ratio).round()[::-1].astype(np.float32) + offset
    ratio = train_steps / num_steps
    return np.arange(train_steps, 0, -ratio).round().astype(np.float32) - 1


def _x0_from_ve(model_output, x, sigma, prediction_type: str):
    """x0 from a model output on the VE sample x = x0 + sigma * eps (Euler / Heun)."""
    if prediction_type == "sample":
        return model_output
    if prediction_type == "epsilon":
        return x - sigma * model_output
    # v-prediction of a model that saw x / sqrt(sigma^2 + 1).
    return model_output * (-sigma / jnp.sqrt(sigma**2 + 1)) + x / (sigma**2 + 1)


@dataclasses.dataclass(frozen=True)
class DDIM:
    """``DDIMScheduler``. The model gets the unscaled sample and the integer timestep.

    Mirrors diffusers' quirk that the previous timestep is always
    ``t - num_train_timesteps // num_steps``, whatever the spacing.
    """

    schedule: DiscreteSchedule = DiscreteSchedule()
    prediction_type: str = "epsilon"
    eta: float = 0.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    timestep_spacing: str = "leading"
    clip_sample: bool = False
    clip_sample_range: float = 1.0

    def timesteps(self, num_steps: int) -> np.ndarray:
        _check_common(num_steps, self.timestep_spacing, self.prediction_type)
        _check_steps_fit(num_steps, self.schedule)
        train = self.schedule.num_train_timesteps
        if self.timestep_spacing == "linspace":
            return np.linspace(0, train - 1, num_steps).round()[::-1].astype(np.int64)
        if self.timestep_spacing == "leading":
            ratio = train // num_steps
            return (np.arange(0, num_steps) * ratio).round()[::-1].astype(np.int64) + self.steps_offset
        ratio = train / num_steps
        return np.round(np.arange(train, 0, -ratio)).astype(np.int64) - 1

    def plan(self, num_steps: int) -> SamplingPlan:
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        timesteps = self.timesteps(num_steps)
        ac = self.schedule.alphas_cumprod
        final = 1.0 if self.set_alpha_to_one else ac[0]
        prev = timesteps - self.schedule.num_train_timesteps // num_steps
        ac_t = ac[timesteps]
        ac_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final)
        variance = (1 - ac_prev) / (1 - ac_t) * (1 - ac_t / ac_prev)
        std = self.eta * np.sqrt(variance)
        coefs = {
            "alpha": np.sqrt(ac_t),
            "sigma": np.sqrt(1 - ac_t),
            "alpha_prev": np.sqrt(ac_prev),
            "direction": np.sqrt(1 - ac_prev - std**2),
            "std": std,
        }
        return SamplingPlan(
            model_times=timesteps.astype(np.float32),
            input_scales=np.ones(num_steps, np.float32),
            eval_sigmas=np.sqrt((1 - ac_t) / ac_t),
            init_noise_sigma=1.0,
            stochastic=self.eta > 0,
            coefs=coefs,
            step_fn=self._step,
            init_state_fn=lambda x: (),
        )

    def _step(self, c, state, out, i, x, noise):
        x0 = convert_prediction(out, x, c["alpha"], c["sigma"], self.prediction_type, "sample")
        eps = convert_prediction(out, x, c["alpha"], c["sigma"], self.prediction_type, "epsilon")
        if self.clip_sample:
            x0 = jnp.clip(x0, -self.clip_sample_range, self.clip_sample_range)
        x_prev = c["alpha_prev"] * x0 + c["direction"] * eps
        if self.eta > 0:
            x_prev = x_prev + c["std"] * noise.astype(x.dtype)
        return state, x_prev


@dataclasses.dataclass(frozen=True)
class _SigmaSpaceSampler:
    """Shared sigma grid of ``Euler`` and ``Heun`` (diffusers or EDM family).

    With an ``EDMSchedule`` the grid is ``karras_sigmas`` + [0] (Euler with
    ``final_sigmas_type="sigma_min"``: + [sigmas[-1]], as ``EDMEulerScheduler``, which makes
    the last step a no-op) and ``timestep_spacing``, ``steps_offset`` and
    ``use_karras_sigmas`` do not apply.
    """

    schedule: DiscreteSchedule | EDMSchedule = DiscreteSchedule()
    prediction_type: str = "epsilon"
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    use_karras_sigmas: bool = False

    def _final_sigma(self) -> float:
        return 0.0

    def _grid(self, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(model timesteps (n,), sigmas (n+1,) float32) exactly as diffusers' set_timesteps."""
        _check_common(num_steps, self.timestep_spacing, self.prediction_type)
        if isinstance(self.schedule, EDMSchedule):
            if self.prediction_type == "v_prediction":
                raise ValueError("an EDMSchedule sampler takes 'sample' (D(x; sigma)) or 'epsilon' outputs")
            s = self.schedule
            sigmas = karras_sigmas(num_steps, s.sigma_min, s.sigma_max, s.rho).astype(np.float32)
            # EDMEulerScheduler's "sigma_min" final sigma repeats the grid's last value.
            last = sigmas[-1] if self._final_sigma() != 0.0 else 0.0
            return sigmas.copy(), np.concatenate([sigmas, [last]]).astype(np.float32)
        _check_steps_fit(num_steps, self.schedule)
        train = self.schedule.num_train_timesteps
        timesteps = _sigma_space_timesteps(num_steps, train, self.timestep_spacing, self.steps_offset)
        sigmas = np.interp(timesteps, np.arange(train), self.schedule.sigmas)
        if self.use_karras_sigmas:
            sigmas = karras_sigmas(num_steps, sigmas[-1], sigmas[0])
            timesteps = timestep_from_sigma_np(sigmas, self.schedule).astype(np.float32)
        sigmas = np.concatenate([sigmas, [self._final_sigma()]]).astype(np.float32)
        return timesteps, sigmas

    def _init_noise_sigma(self, sigmas: np.ndarray) -> float:
        top = float(sigmas.max())
        if isinstance(self.schedule, EDMSchedule) or self.timestep_spacing in ("linspace", "trailing"):
            return top
        return float(np.sqrt(top**2 + 1))

    def _input_scales(self, sigmas: np.ndarray) -> np.ndarray:
        if isinstance(self.schedule, EDMSchedule):
            return np.ones(len(sigmas), np.float32)
        return (1 / np.sqrt(sigmas.astype(np.float64) ** 2 + 1)).astype(np.float32)

    def sigmas(self, num_steps: int) -> np.ndarray:
        """diffusers' ``scheduler.sigmas`` after ``set_timesteps(num_steps)``."""
        return self._grid(num_steps)[1]


@dataclasses.dataclass(frozen=True)
class Euler(_SigmaSpaceSampler):
    """``EulerDiscreteScheduler`` / ``EDMEulerScheduler`` (deterministic).

    ``final_sigmas_type``: "zero" or "sigma_min".
    """

    final_sigmas_type: str = "zero"

    def _final_sigma(self) -> float:
        if self.final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min', got {self.final_sigmas_type!r}")
        if self.final_sigmas_type == "zero":
            return 0.0
        if isinstance(self.schedule, EDMSchedule):
            return float(self.schedule.sigma_min)
        return float(self.schedule.sigmas[0])

    def timesteps(self, num_steps: int) -> np.ndarray:
        return self._grid(num_steps)[0]

    def plan(self, num_steps: int) -> SamplingPlan:
        timesteps, sigmas = self._grid(num_steps)
        s64 = sigmas.astype(np.float64)
        return SamplingPlan(
            model_times=timesteps.astype(np.float32),
            input_scales=self._input_scales(sigmas[:-1]),
            eval_sigmas=s64[:-1],
            init_noise_sigma=self._init_noise_sigma(sigmas),
            stochastic=False,
            coefs={"sigma": sigmas[:-1], "dt": s64[1:] - s64[:-1]},
            step_fn=self._step,
            init_state_fn=lambda x: (),
        )

    def _step(self, c, state, out, i, x, noise):
        x0 = _x0_from_ve(out, x, c["sigma"], self.prediction_type)
        derivative = (x - x0) / c["sigma"]
        return state, x + derivative * c["dt"]


@dataclasses.dataclass(frozen=True)
class Heun(_SigmaSpaceSampler):
    """``HeunDiscreteScheduler``: 2N-1 model evaluations for N steps (last step is Euler).

    Evaluation 2k is the Euler predictor of step k, evaluation 2k+1 its corrector at the
    next sigma; the predictor's derivative and starting point are carried in the state.
    """

    def timesteps(self, num_steps: int) -> np.ndarray:
        """diffusers' interleaved timesteps [t0, t1, t1, ..., t_{n-1}, t_{n-1}] (2n-1 values)."""
        timesteps, _ = self._grid(num_steps)
        return np.concatenate([timesteps[:1], np.repeat(timesteps[1:], 2)]).astype(np.float32)

    def sigmas(self, num_steps: int) -> np.ndarray:
        """diffusers' interleaved sigmas [s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0] (2n values)."""
        sigmas = self._grid(num_steps)[1]
        return np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]])

    def plan(self, num_steps: int) -> SamplingPlan:
        _, sigmas = self._grid(num_steps)
        per_eval = self.sigmas(num_steps)
        s64 = per_eval.astype(np.float64)
        num_evals = 2 * num_steps - 1
        is_corrector = np.arange(num_evals) % 2 == 1
        dt = np.where(is_corrector, s64[:-1] - np.roll(s64, 1)[:-1], s64[1:] - s64[:-1])
        return SamplingPlan(
            model_times=self.timesteps(num_steps),
            input_scales=self._input_scales(per_eval[:-1]),
            eval_sigmas=s64[:-1],
            init_noise_sigma=self._init_noise_sigma(sigmas),
            stochastic=False,
            coefs={"sigma": per_eval[:-1], "dt": dt, "corrector": is_corrector.astype(np.float32)},
            step_fn=self._step,
            init_state_fn=lambda x: {"derivative": jnp.zeros_like(x), "start": jnp.zeros_like(x)},
        )

    def _step(self, c, state, out, i, x, noise):
        x0 = _x0_from_ve(out, x, c["sigma"], self.prediction_type)
        derivative = (x - x0) / c["sigma"]
        corrector = c["corrector"] > 0
        mean_derivative = (state["derivative"] + derivative) / 2
        start = jnp.where(corrector, state["start"], x)
        x_next = start + jnp.where(corrector, mean_derivative, derivative) * c["dt"]
        new_state = {"derivative": derivative, "start": x}
        return new_state, x_next


@dataclasses.dataclass(frozen=True)
class DPMSolverPlusPlus:
    """``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++"`` (ODE).

    ``solver_order`` 2 with ``solver_type="midpoint"`` is DPM-Solver++(2M). Steps use first
    order at the start and, with the diffusers rules (``lower_order_final`` and fewer than 15
    steps, ``euler_at_final``, or ``final_sigmas_type="zero"``), at the end.

    * ``DiscreteSchedule``: the model gets the unscaled sample and the integer timestep.
    * ``EDMSchedule``: ``EDMDPMSolverMultistepScheduler`` (``sigma_schedule="karras"``). The
      grid is ``karras_sigmas`` + [0] (or + [sigma_min] with ``final_sigmas_type="sigma_min"``),
      the solver works in the VE parameterisation x = x0 + sigma * eps (alpha = 1,
      lambda = -log sigma), and the model gets the raw x and sigma as its time: D(x; sigma)
      for ``prediction_type="sample"``, eps (x0 = x - sigma * eps) for "epsilon".
      ``timestep_spacing``, ``steps_offset`` and ``use_karras_sigmas`` do not apply;
      ``timesteps(n)`` returns the sigmas the model is called with (diffusers' own
      ``timesteps`` are c_noise = log(sigma) / 4, which its pipelines pass to the network).
    """

    schedule: DiscreteSchedule | EDMSchedule = DiscreteSchedule()
    prediction_type: str = "epsilon"
    solver_order: int = 2
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    final_sigmas_type: str = "zero"
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    use_karras_sigmas: bool = False

    def _grid(self, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
        _check_common(num_steps, self.timestep_spacing, self.prediction_type)
        if self.solver_order not in (1, 2):
            raise ValueError(f"solver_order must be 1 or 2, got {self.solver_order}")
        if self.solver_type not in ("midpoint", "heun"):
            raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {self.solver_type!r}")
        if self.final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min', got {self.final_sigmas_type!r}")
        if isinstance(self.schedule, EDMSchedule):
            return self._edm_grid(num_steps)
        _check_steps_fit(num_steps, self.schedule)
        train = self.schedule.num_train_timesteps
        if self.timestep_spacing == "linspace":
            timesteps = np.linspace(0, train - 1, num_steps + 1).round()[::-1][:-1].astype(np.int64)
        elif self.timestep_spacing == "leading":
            ratio = train // (num_steps + 1)
            timesteps = (np.arange(0, num_steps + 1) * ratio).round()[::-1][:-1].astype(np.int64)
            timesteps = timesteps + self.steps_offset
        else:
            timesteps = np.arange(train, 0, -train / num_steps).round().astype(np.int64) - 1
        table = self.schedule.sigmas
        if self.use_karras_sigmas:
            sigmas = karras_sigmas(num_steps, table[0], table[-1])
            timesteps = timestep_from_sigma_np(sigmas, self.schedule)
            if self.schedule.beta_schedule != "squaredcos_cap_v2":
                timesteps = timesteps.round()
            timesteps = timesteps.astype(np.int64)
        else:
            sigmas = np.interp(timesteps, np.arange(train), table)
        last = 0.0 if self.final_sigmas_type == "zero" else table[0]
        return timesteps, np.concatenate([sigmas, [last]]).astype(np.float32)

    def _edm_grid(self, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(model times = sigmas (n,), sigmas (n+1,)) float32, as ``EDMDPMSolverMultistepScheduler``."""
        if self.prediction_type == "v_prediction":
            raise ValueError("an EDMSchedule sampler takes 'sample' (D(x; sigma)) or 'epsilon' outputs")
        s = self.schedule
        sigmas = karras_sigmas(num_steps, s.sigma_min, s.sigma_max, s.rho).astype(np.float32)
        last = 0.0 if self.final_sigmas_type == "zero" else s.sigma_min
        return sigmas.copy(), np.concatenate([sigmas, [last]]).astype(np.float32)

    def timesteps(self, num_steps: int) -> np.ndarray:
        return self._grid(num_steps)[0]

    def sigmas(self, num_steps: int) -> np.ndarray:
        """diffusers' ``scheduler.sigmas`` after ``set_timesteps(num_steps)``."""
        return self._grid(num_steps)[1]

    def plan(self, num_steps: int) -> SamplingPlan:
        timesteps, sigmas32 = self._grid(num_steps)
        edm = isinstance(self.schedule, EDMSchedule)
        n = len(timesteps)
        sig = sigmas32.astype(np.float64)
        if edm:
            # VE / EDM parameterisation (diffusers' EDM ``_sigma_to_alpha_sigma_t``): alpha_t = 1.
            alpha = np.ones_like(sig)
            vp_sigma = sig
        else:
            alpha = 1 / np.sqrt(sig**2 + 1)  # VP alpha_t of each grid point
            vp_sigma = sig * alpha
        s0, st = sig[:-1], sig[1:]
        exp_neg_h = st / s0  # exp(-(lambda_t - lambda_s0)), with lambda = -log(VE sigma)
        x_coef = vp_sigma[1:] / vp_sigma[:-1]
        x0_coef = -alpha[1:] * (exp_neg_h - 1.0)
        final_first_order = self.euler_at_final or (self.lower_order_final and n < 15) or self.final_sigmas_type == "zero"
        second = np.array(
            [self.solver_order == 2 and i > 0 and not (i == n - 1 and final_first_order) for i in range(n)]
        )
        diff_coef = np.zeros(n)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = np.log(s0 / st)
            r0 = np.log(np.roll(s0, 1) / s0) / h
            if self.solver_type == "midpoint":
                d1 = -0.5 * alpha[1:] * (exp_neg_h - 1.0)
            else:
                d1 = alpha[1:] * ((exp_neg_h - 1.0) / h + 1.0)
            diff_coef[second] = (d1 / r0)[second]
        if edm:
            # final_sigmas_type="sigma_min" repeats sigma_min: the last step has h = 0 and is the
            # identity (its limit). With solver_type "heun" and a 2nd-order last step (15+ steps)
            # d1 is 0/0 there, and diffusers' EDM scheduler returns NaN (its float32 log sigmas of
            # the two nearly equal last sigmas coincide).
            diff_coef[h == 0] = 0.0
        return SamplingPlan(
            model_times=timesteps.astype(np.float32),
            input_scales=np.ones(n, np.float32),
            eval_sigmas=s0,
            init_noise_sigma=float(sigmas32[0]) if edm else 1.0,
            stochastic=False,
            coefs={
                "alpha": alpha[:-1],
                "sigma": vp_sigma[:-1],
                "x": x_coef,
                "x0": x0_coef,
                "diff": diff_coef,
            },
            step_fn=self._step,
            init_state_fn=lambda x: {"prev_x0": jnp.zeros_like(x)},
        )

    def _step(self, c, state, out, i, x, noise):
        # With an EDMSchedule alpha = 1, so this is x0 = out ("sample") or x - sigma * out.
        x0 = convert_prediction(out, x, c["alpha"], c["sigma"], self.prediction_type, "sample")
        x_next = c["x"] * x + c["x0"] * x0 + c["diff"] * (x0 - state["prev_x0"])
        return {"prev_x0": x0}, x_next


Sampler = DDIM | Euler | Heun | DPMSolverPlusPlus


@functools.lru_cache(maxsize=64)
def cached_plan(sampler, num_steps: int) -> SamplingPlan:
    """``sampler.plan(num_steps)``, memoised (samplers are hashable)."""
    return sampler.plan(num_steps)
