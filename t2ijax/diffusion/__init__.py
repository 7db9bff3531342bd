"""Diffusion core: DDPM schedules, EDM, diffusers-exact samplers, guidance, compiled loop.

Public API:

* schedules: ``DiscreteSchedule``, ``alpha_sigma``, ``snr``, ``add_noise``,
  ``training_target``, ``convert_prediction``, ``min_snr_weights``, ``diffusion_loss``.
* EDM: ``EDMSchedule``, ``edm_preconditioning``, ``edm_precondition``,
  ``edm_sample_training_sigmas``, ``edm_loss_weight``, ``karras_sigmas``,
  ``timestep_from_sigma``, ``sigma_from_timestep``, ``discrete_model_as_denoiser``.
* samplers (diffusers parity): ``DDIM``, ``Euler``, ``Heun``, ``DPMSolverPlusPlus``,
  ``SamplingPlan``.
* guidance: ``cfg_denoise``, ``rescale_guidance``, ``tree_concat``.
* loop: ``sample``, ``expert_table_from_boundaries``.
"""

from t2ijax.diffusion.edm import (
    EDMSchedule,
    discrete_model_as_denoiser,
    karras_sigmas,
    sigma_from_timestep,
    timestep_from_sigma,
)
from t2ijax.diffusion.edm import loss_weight as edm_loss_weight
from t2ijax.diffusion.edm import precondition as edm_precondition
from t2ijax.diffusion.edm import preconditioning as edm_preconditioning
from t2ijax.diffusion.edm import sample_training_sigmas as edm_sample_training_sigmas
from t2ijax.diffusion.guidance import cfg_denoise, rescale_guidance, tree_concat
from t2ijax.diffusion.sample_loop import expert_table_from_boundaries, sample
from t2ijax.diffusion.samplers import DDIM, DPMSolverPlusPlus, Euler, Heun, SamplingPlan
from t2ijax.diffusion.schedules import (
    DiscreteSchedule,
    add_noise,
    alpha_sigma,
    convert_prediction,
    diffusion_loss,
    min_snr_weights,
    snr,
    training_target,
)

__all__ = [
    "DDIM",
    "DPMSolverPlusPlus",
    "DiscreteSchedule",
    "EDMSchedule",
    "Euler",
    "Heun",
    "SamplingPlan",
    "add_noise",
    "alpha_sigma",
    "cfg_denoise",
    "convert_prediction",
    "diffusion_loss",
    "discrete_model_as_denoiser",
    "edm_loss_weight",
    "edm_precondition",
    "edm_preconditioning",
    "edm_sample_training_sigmas",
    "expert_table_from_boundaries",
    "karras_sigmas",
    "min_snr_weights",
    "rescale_guidance",
    "sample",
    "sigma_from_timestep",
    "snr",
    "tree_concat",
    "timestep_from_sigma",
    "training_target",
]
