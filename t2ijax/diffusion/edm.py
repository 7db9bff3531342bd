"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models").

* ``preconditioning``: c_skip, c_out, c_in, c_noise of EDM Table 1 (same values as
  diffusers' ``EDMEulerScheduler.precondition_*`` with ``prediction_type="epsilon"``).
* ``precondition``: wraps a raw network F into the denoiser
  D(x; sigma) = c_skip x + c_out F(c_in x, c_noise).
* ``sample_training_sigmas``: ln sigma ~ N(P_mean, P_std^2) (EDM defaults -1.2, 1.2).
* ``loss_weight``: lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2.
* ``karras_sigmas``: the rho-spaced sampling grid (EDM Eq. 5).
* ``timestep_from_sigma`` / ``sigma_from_timestep`` / ``discrete_model_as_denoiser``: run a
  discrete-time (DDPM) model under sigma-space samplers the way diffusers does
  (``EulerDiscreteScheduler._sigma_to_t``: linear interpolation in log sigma; the model
  input is x / sqrt(sigma^2 + 1)).

EDM-family denoisers take sigma as their time argument:
``denoise_fn(params, x, sigma, cond) -> D(x; sigma)`` (an x0 estimate).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from t2ijax.diffusion.schedules import DiscreteSchedule, check_prediction_type, convert_prediction


def _broadcast(coef, like):
    coef = jnp.asarray(coef, like.dtype)
    return coef.reshape(coef.shape + (1,) * (like.ndim - coef.ndim))


def preconditioning(sigma, sigma_data: float = 0.5):
    """EDM coefficients (c_skip, c_out, c_in, c_noise) at noise level(s) ``sigma``."""
    sigma = jnp.asarray(sigma, jnp.float32)
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / jnp.sqrt(total)
    c_in = 1.0 / jnp.sqrt(total)
    c_noise = 0.25 * jnp.log(sigma)
    return c_skip, c_out, c_in, c_noise


def precondition(network_fn, sigma_data: float = 0.5):
    """Turn ``network_fn(params, x_in, c_noise, cond) -> F`` into an EDM denoiser.

    Returns ``denoise_fn(params, x, sigma, cond) = c_skip * x + c_out * F(c_in * x, c_noise)``,
    where sigma has shape (B,). Use it with an ``EDMSchedule`` sampler (prediction "sample").
    """

    def denoise_fn(params, x, sigma, cond):
        c_skip, c_out, c_in, c_noise = preconditioning(sigma, sigma_data)
        out = network_fn(params, _broadcast(c_in, x) * x, c_noise, cond)
        return _broadcast(c_skip, x) * x + _broadcast(c_out, x) * out.astype(x.dtype)

    return denoise_fn


def sample_training_sigmas(key, shape, p_mean: float = -1.2, p_std: float = 1.2):
    """Log-normal training noise levels: ln sigma ~ N(p_mean, p_std^2)."""
    return jnp.exp(p_mean + p_std * jax.random.normal(key, shape, jnp.float32))


def loss_weight(sigma, sigma_data: float = 0.5):
    """EDM loss weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2."""
    sigma = jnp.asarray(sigma, jnp.float32)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """EDM Eq. 5 grid, ``num_steps`` values from sigma_max down to sigma_min (float64, host).

    No trailing zero: samplers append their own final sigma.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    ramp = np.linspace(0, 1, num_steps)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


@dataclasses.dataclass(frozen=True)
class EDMSchedule:
    """Continuous sigma range of an EDM model; samplers given one use ``karras_sigmas``.

    With an ``EDMSchedule`` the Euler, Heun and DPM-Solver++ samplers call the model with the raw x and
    ``sigma`` as its time argument (no input scaling), i.e. the EDM contract D(x; sigma).
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def __post_init__(self):
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.rho <= 0:
            raise ValueError(f"rho must be positive, got {self.rho}")


def timestep_from_sigma_np(sigma, schedule: DiscreteSchedule) -> np.ndarray:
    """Host version of ``timestep_from_sigma`` (float64), as diffusers' ``_sigma_to_t``."""
    log_sigmas = np.log(schedule.sigmas)
    log_sigma = np.log(np.maximum(np.asarray(sigma, np.float64), 1e-10))
    return np.interp(log_sigma, log_sigmas, np.arange(schedule.num_train_timesteps, dtype=np.float64))


def timestep_from_sigma(sigma, schedule: DiscreteSchedule):
    """Fractional discrete timestep whose noise level is ``sigma`` (jit-friendly).

    Linear interpolation of t in log sigma, clamped to [0, T-1], exactly the mapping of
    diffusers' ``_sigma_to_t``.
    """
    log_sigmas = jnp.asarray(np.log(schedule.sigmas), jnp.float32)
    t_grid = jnp.arange(schedule.num_train_timesteps, dtype=jnp.float32)
    log_sigma = jnp.log(jnp.maximum(jnp.asarray(sigma, jnp.float32), 1e-10))
    return jnp.interp(log_sigma, log_sigmas, t_grid)


def sigma_from_timestep(t, schedule: DiscreteSchedule):
    """Noise level at a (possibly fractional) discrete timestep, linear in t (diffusers)."""
    t_grid = jnp.arange(schedule.num_train_timesteps, dtype=jnp.float32)
    return jnp.interp(jnp.asarray(t, jnp.float32), t_grid, jnp.asarray(schedule.sigmas, jnp.float32))


def discrete_model_as_denoiser(denoise_fn, schedule: DiscreteSchedule, prediction_type: str = "epsilon"):
    """Wrap a discrete-time model so EDM-style sigma-space samplers can drive it.

    ``denoise_fn(params, x_in, t, cond)`` is a DDPM model (e.g. an SD U-Net) that sees the
    VP-scaled input ``x / sqrt(sigma^2 + 1)`` and the fractional timestep of sigma. The
    returned ``fn(params, x, sigma, cond)`` gives the x0 estimate D(x; sigma), so use it with
    ``prediction_type="sample"`` and an ``EDMSchedule`` (keep sigma_max / sigma_min inside
    the schedule's range, or t is clamped to its ends).
    """
    check_prediction_type(prediction_type)

    def edm_denoise_fn(params, x, sigma, cond):
        sigma = jnp.asarray(sigma, jnp.float32)
        alpha = 1.0 / jnp.sqrt(sigma**2 + 1.0)
        x_in = _broadcast(alpha, x) * x
        out = denoise_fn(params, x_in, timestep_from_sigma(sigma, schedule), cond).astype(x.dtype)
        return convert_prediction(out, x_in, alpha, sigma * alpha, prediction_type, "sample")

    return edm_denoise_fn
