"""Discrete DDPM noise schedules, prediction-target conversions and training losses.

The beta tables mirror the constructors of diffusers' ``DDIMScheduler`` /
``EulerDiscreteScheduler`` / ``DPMSolverMultistepScheduler`` (``beta_schedule`` =
"linear", "scaled_linear", "squaredcos_cap_v2"): betas are float32 as in diffusers; the
derived tables (cumulative product, sigmas) are computed on the host in float64, which is
at least as accurate as diffusers' float32 torch cumprod (they agree to ~1e-6 relative).

Notation (variance-preserving form): ``x_t = alpha_t * x0 + sigma_t * eps`` with
``alpha_t = sqrt(alphas_cumprod[t])`` and ``sigma_t = sqrt(1 - alphas_cumprod[t])``.
Prediction types use diffusers' names: "epsilon", "v_prediction" (``v = alpha_t * eps -
sigma_t * x0``, Salimans & Ho 2022) and "sample" (x0).

Min-SNR-gamma weighting is Hang et al. 2023 ("Efficient Diffusion Training via
Min-SNR Weighting Strategy"); the per-target variants follow diffusers'
``train_text_to_image.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax.numpy as jnp
import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_prediction_type(prediction_type: str) -> None:
    """Raise a clear error for an unknown prediction type."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def _cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal cosine schedule as diffusers' ``betas_for_alpha_bar`` (cosine)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
        for i in range(num_train_timesteps)
    ]
    return np.asarray(betas, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class DiscreteSchedule:
    """A discrete DDPM noise schedule (hashable, so it can be a static jit argument).

    Attributes mirror diffusers' scheduler config fields of the same names. Tables are
    host-side numpy arrays indexed by the integer timestep 0..num_train_timesteps-1.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"

    def __post_init__(self):
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")

    @functools.cached_property
    def betas(self) -> np.ndarray:
        n = self.num_train_timesteps
        if self.beta_schedule == "linear":
            return np.linspace(self.beta_start, self.beta_end, n, dtype=np.float64).astype(np.float32)
        if self.beta_schedule == "scaled_linear":  # Stable Diffusion: linear in sqrt(beta).
            root = np.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=np.float64).astype(np.float32)
            return root * root
        return _cosine_betas(n)

    @functools.cached_property
    def alphas_cumprod(self) -> np.ndarray:
        """Cumulative product of (1 - beta) (float64; the float32 betas are the definition)."""
        return np.cumprod(1.0 - self.betas.astype(np.float64))

    @functools.cached_property
    def sigmas(self) -> np.ndarray:
        """Variance-exploding noise level per timestep, sqrt((1 - abar) / abar) (float64)."""
        ac = self.alphas_cumprod
        return np.sqrt((1.0 - ac) / ac)


def alpha_sigma(schedule: DiscreteSchedule, t) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(alpha_t, sigma_t) of the VP form at integer timesteps ``t`` (any shape)."""
    index = jnp.asarray(t, jnp.int32)
    alpha = jnp.asarray(np.sqrt(schedule.alphas_cumprod), jnp.float32)[index]
    sigma = jnp.asarray(np.sqrt(1.0 - schedule.alphas_cumprod), jnp.float32)[index]
    return alpha, sigma


def snr(schedule: DiscreteSchedule, t) -> jnp.ndarray:
    """Signal-to-noise ratio alphas_cumprod / (1 - alphas_cumprod) at integer timesteps."""
    ac = schedule.alphas_cumprod
    return jnp.asarray(ac / (1.0 - ac), jnp.float32)[jnp.asarray(t, jnp.int32)]


def _per_example(coef, like):
    """Reshape a (B,) coefficient to broadcast against a (B, ...) array."""
    coef = jnp.asarray(coef, like.dtype)
    return coef.reshape(coef.shape + (1,) * (like.ndim - coef.ndim))


def add_noise(schedule: DiscreteSchedule, x0, noise, t):
    """Forward process q(x_t | x0): alpha_t * x0 + sigma_t * noise, t of shape (B,).

    Same as diffusers' ``DDIMScheduler.add_noise``.
    """
    if x0.shape != noise.shape:
        raise ValueError(f"x0 and noise shapes differ: {x0.shape} vs {noise.shape}")
    alpha, sigma = alpha_sigma(schedule, t)
    return _per_example(alpha, x0) * x0 + _per_example(sigma, x0) * noise


def training_target(prediction_type: str, x0, noise, alpha, sigma):
    """The regression target for ``prediction_type`` given x0, the noise and (alpha_t, sigma_t)."""
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    return _per_example(alpha, x0) * noise - _per_example(sigma, x0) * x0


def convert_prediction(model_output, x_t, alpha, sigma, from_type: str, to_type: str):
    """Convert a model output between "epsilon", "v_prediction" and "sample" (x0).

    ``x_t`` is the VP-form noisy input (``alpha * x0 + sigma * eps``); alpha and sigma are
    scalars or (B,) arrays. Conversions from "sample" to "epsilon" divide by sigma and from
    "epsilon" to "sample" by alpha, so they are ill-conditioned at the ends of the schedule.
    """
    check_prediction_type(from_type)
    check_prediction_type(to_type)
    a, s = _per_example(alpha, x_t), _per_example(sigma, x_t)
    if from_type == "epsilon":
        eps = model_output
        x0 = (x_t - s * eps) / a
    elif from_type == "sample":
        x0 = model_output
        eps = (x_t - a * x0) / s
    else:
        x0 = a * x_t - s * model_output
        eps = a * model_output + s * x_t
    if to_type == "epsilon":
        return eps
    if to_type == "sample":
        return x0
    return a * eps - s * x0


def min_snr_weights(snr_values, gamma: float, prediction_type: str):
    """Min-SNR-gamma loss weights (Hang et al. 2023) for an MSE on ``prediction_type``.

    The paper's weight for an x0 loss is min(SNR, gamma); expressed on the other targets it
    becomes min(SNR, gamma) / SNR for epsilon and min(SNR, gamma) / (SNR + 1) for v.
    """
    check_prediction_type(prediction_type)
    if gamma <= 0:
        raise ValueError(f"min-SNR gamma must be positive, got {gamma}")
    snr_values = jnp.asarray(snr_values)
    clipped = jnp.minimum(snr_values, gamma)
    if prediction_type == "epsilon":
        return clipped / snr_values
    if prediction_type == "v_prediction":
        return clipped / (snr_values + 1.0)
    return clipped


def diffusion_loss(pred, target, weights=None, *, pixel_weights=None):
    """Weighted MSE: per-example mean over non-batch axes, times ``weights`` (B,), batch mean.

    ``pixel_weights`` (broadcastable to ``pred``, e.g. a (B, H, W, 1) region map) weighs each squared
    error before the per-example mean. Unweighted, this is ``F.mse_loss(pred, target)`` (reduction
    "mean"). Computed in float32 whatever the input dtype.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {pred.shape} vs {target.shape}")
    err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
    if pixel_weights is not None:
        err = err * jnp.broadcast_to(jnp.asarray(pixel_weights, jnp.float32), err.shape)
    if weights is None:
        return err.mean()
    per_example = err.reshape(err.shape[0], -1).mean(axis=1)
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape != per_example.shape:
        raise ValueError(f"weights must have shape {per_example.shape}, got {weights.shape}")
    return (per_example * weights).mean()
