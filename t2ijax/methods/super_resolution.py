"""Text-conditioned super-resolution stage of a pixel cascade (eDiff-I SR256 / SR1024, Imagen's SR U-Nets).

The denoiser is `t2ijax.methods.experts.ExpertsMethod`'s U-Net ensemble (one or more noise-interval experts,
EDM or DDPM formulation) working at the HIGH resolution ``config.data.resolution``, with the upsampled
low-resolution image concatenated to its input channels (``extra_in_channels = 3``: ``model.unet.in_channels``
is 6) and the text conditioning of ExpertsMethod (its conditioner, caption dropout and classifier-free guidance
against the empty caption), so the SR stage is text-conditioned as in eDiff-I.

Training (`SRConditioner.train_cond`): each high-res training image is degraded into its low-res version and
upsampled back (`t2ijax.data.degradations.Degradation`, config ``model.low_res.degradations``), then
noise-conditioning augmentation (Imagen, Ho et al. 2021's "conditioning augmentation") noises that
conditioning image at a random level, drawn per example and independently of the denoising noise level:

  EDM   sigma_aug from ``noise_aug.distribution``: "log_uniform" (ln sigma_aug ~ U[ln min, ln max]; default
        [0.002, 1.0]), "log_normal" (ln sigma_aug ~ N(p_mean, p_std^2), clipped to [min, max]) or "uniform"
        (sigma_aug ~ U[min, max]); with probability ``zero_prob`` (default 0.1) sigma_aug = 0 (a clean
        conditioning image). The conditioning is  c = (x_lr + sigma_aug * n) / sqrt(sigma_data^2 + sigma_aug^2)
        when ``scale`` (default True): EDM's own c_in at sigma_aug, so the low-res channels have the same
        unit-ish variance as the U-Net's noisy-image channels (which get c_in(sigma) x_t): at sigma_aug = 0 both
        are x / sigma_data. ``scale: False`` feeds x_lr + sigma_aug * n as is.
  DDPM  t_aug uniform in {min .. max} (default {0 .. 250}; ``zero_prob`` puts t_aug = 0, which is nearly clean),
        c = q_sample(x_lr, t_aug) = sqrt(abar_t) x_lr + sqrt(1 - abar_t) n on the model's own schedule
        (variance-preserving already: no extra scaling).

The noise is drawn at the high resolution, after upsampling (as in Imagen's implementation). The augmentation
level reaches the U-Net through its class embedding: ``model.unet.class_embed_type = "timestep"`` (diffusers'
class embedding: the label goes through the sinusoidal timestep projection and its own TimestepEmbedding MLP
and is added to the time embedding), with ``class_labels`` = the level mapped to the scale the U-Net's own
time input uses in that formulation: EDM c_noise(sigma_aug) = 0.25 ln(max(sigma_aug, ``label_floor``))
(label_floor default 0.002 = EDM's sigma_min, so sigma_aug = 0 reads as "clean"), DDPM the timestep t_aug.
The sinusoid is shared with the timesteps, so both inputs use its frequencies alike.

Sampling (`SuperResolutionMethod.sample(..., low_res=images, aug_level=...)`): the low-res images
(N, h, w, 3), uint8 or float in [-1, 1] (e.g. the previous cascade stage's output), are upsampled (no random
degradation) and noised at the fixed level ``aug_level`` (default ``config.sample.noise_aug_level``; EDM: a
sigma, DDPM: an integer timestep), image i's augmentation noise drawn from its own seed, so a (prompt, seed,
low-res image) triple regenerates its image. The low-res image is in the conditional and the unconditional
(empty-caption) branch alike: guidance is on the text only.

config.model, besides ExpertsMethod's (formulation, edm, experts, unet, text, ...):
  low_res   {resolution: the low resolution (divides data.resolution),
             degradations: `t2ijax.data.degradations.DEFAULTS` keys (kernels, blur_prob, blur_sigma, noise_prob,
                           noise_std, upsample),
             noise_aug: {distribution, min, max, p_mean, p_std, zero_prob, scale, label_floor}}
  unet      in_channels 6, out_channels 3, class_embed_type "timestep"
config.sample: noise_aug_level (default: EDM 0.1, DDPM 100), besides num_steps / guidance_scale / sampler.

The SR stage may be an expert ensemble (eDiff-I's SR256: E(1,0) + E(1,1)): the partition, vmap / sequential
training, per-expert clipping and the per-step expert routing of sampling are ExpertsMethod's, with the
conditioning (text, low-res image, class labels) split over the experts' micro-batches like the text.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from t2ijax import diffusion
from t2ijax.data.degradations import Degradation
from t2ijax.methods.common import as_dict, field
from t2ijax.methods.experts import ExpertsMethod

DISTRIBUTIONS = ("log_uniform", "log_normal", "uniform")
NOISE_AUG_KEYS = ("distribution", "min", "max", "p_mean", "p_std", "zero_prob", "scale", "label_floor")
AUG_NOISE_SALT = 0x5E7A06  # folded into an image's seed for its augmentation noise (its x_T uses the seed as is)


@dataclasses.dataclass(frozen=True)
class NoiseAugmentation:
    """Noise-conditioning augmentation of the low-res conditioning (module docstring)."""

    formulation: str
    distribution: str = "log_uniform"
    min: float = 0.002
    max: float = 1.0
    p_mean: float = -2.0
    p_std: float = 1.0
    zero_prob: float = 0.1
    scale: bool = True
    label_floor: float = 0.002
    sigma_data: float = 0.5

    @classmethod
    def from_config(cls, cfg, *, formulation: str, sigma_data: float, num_train_timesteps: int):
        cfg = as_dict(cfg)
        unknown = sorted(set(cfg) - set(NOISE_AUG_KEYS))
        if unknown:
            raise ValueError(f"unknown model.low_res.noise_aug fields {unknown}; known: {list(NOISE_AUG_KEYS)}")
        if formulation == "ddpm":
            defaults = dict(distribution="uniform", min=0, max=min(250, num_train_timesteps - 1))
        else:
            defaults = dict(distribution="log_uniform", min=0.002, max=1.0)
        c = {**defaults, **{k: v for k, v in cfg.items() if v is not None}}
        aug = cls(formulation=formulation, distribution=str(c["distribution"]), min=float(c["min"]),
                  max=float(c["max"]), p_mean=float(c.get("p_mean", -2.0)), p_std=float(c.get("p_std", 1.0)),
                  zero_prob=float(c.get("zero_prob", 0.1)), scale=bool(c.get("scale", True)),
                  label_floor=float(c.get("label_floor", 0.002)), sigma_data=float(sigma_data))
        aug.check(num_train_timesteps)
        return aug

    def check(self, num_train_timesteps: int) -> None:
        if not 0.0 <= self.zero_prob <= 1.0:
            raise ValueError(f"model.low_res.noise_aug.zero_prob must be in [0, 1], got {self.zero_prob}")
        if self.formulation == "ddpm":
            if self.distribution != "uniform":
                raise ValueError("model.low_res.noise_aug.distribution must be 'uniform' (over timesteps) for ddpm")
            if not (0 <= self.min <= self.max < num_train_timesteps and self.min == int(self.min)
                    and self.max == int(self.max)):
                raise ValueError(f"model.low_res.noise_aug min/max are timesteps for ddpm: integers with 0 <= min "
                                 f"<= max < {num_train_timesteps}, got {self.min}, {self.max}")
            return
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"model.low_res.noise_aug.distribution={self.distribution!r}; choose {DISTRIBUTIONS}")
        low_ok = self.min > 0 if self.distribution != "uniform" else self.min >= 0
        if not (low_ok and self.min <= self.max):
            raise ValueError(f"model.low_res.noise_aug needs 0 {'<' if self.distribution != 'uniform' else '<='} "
                             f"min <= max (sigmas), got {self.min}, {self.max}")
        if self.label_floor <= 0:
            raise ValueError(f"model.low_res.noise_aug.label_floor must be > 0, got {self.label_floor}")

    def check_level(self, level: float, num_train_timesteps: int) -> None:
        """A sampling aug level: a sigma >= 0 (EDM) or an integer timestep in [0, T) (DDPM)."""
        if self.formulation == "ddpm":
            if level != int(level) or not 0 <= level < num_train_timesteps:
                raise ValueError(f"aug_level for a ddpm SR stage is a timestep in [0, {num_train_timesteps}), "
                                 f"got {level}")
        elif level < 0 or not math.isfinite(level):
            raise ValueError(f"aug_level for an edm SR stage is a sigma >= 0, got {level}")

    def sample_levels(self, key, batch: int):
        """(B,) float32 training levels: sigmas (EDM) or timesteps (DDPM, integral values)."""
        level_key, zero_key = jax.random.split(key)
        if self.formulation == "ddpm":
            levels = jax.random.randint(level_key, (batch,), int(self.min), int(self.max) + 1).astype(jnp.float32)
        elif self.distribution == "log_uniform":
            u = jax.random.uniform(level_key, (batch,), minval=math.log(self.min), maxval=math.log(self.max))
            levels = jnp.exp(u)
        elif self.distribution == "log_normal":
            z = self.p_mean + self.p_std * jax.random.normal(level_key, (batch,))
            levels = jnp.clip(jnp.exp(z), self.min, self.max)
        else:
            levels = jax.random.uniform(level_key, (batch,), minval=self.min, maxval=self.max)
        if self.zero_prob > 0:
            levels = jnp.where(jax.random.bernoulli(zero_key, self.zero_prob, (batch,)), 0.0, levels)
        return levels.astype(jnp.float32)

    def apply(self, images, levels, noise, schedule=None):
        """The noised conditioning of `images` (B, H, W, C) at `levels` (B,) with standard-normal `noise`."""
        levels = jnp.asarray(levels, jnp.float32)
        if self.formulation == "ddpm":
            return diffusion.add_noise(schedule, images, noise, levels.astype(jnp.int32))
        s = levels[:, None, None, None]
        out = images + s * noise
        if self.scale:
            out = out / jnp.sqrt(self.sigma_data ** 2 + s ** 2)
        return out

    def labels(self, levels):
        """(B,) float32 class labels of `levels`, on the U-Net's time-input scale (module docstring)."""
        levels = jnp.asarray(levels, jnp.float32)
        if self.formulation == "ddpm":
            return levels
        return 0.25 * jnp.log(jnp.maximum(levels, self.label_floor))


class SRConditioner:
    """Wraps ExpertsMethod's conditioner (text): adds "low_res" (the noised, upsampled low-res image) and
    "class_labels" (its augmentation level) to the conditioning dict. Params, frozen inputs and hooks
    (wrap_loader, prepare, ...) are the wrapped conditioner's."""

    def __init__(self, method: "SuperResolutionMethod", inner):
        self.method, self.inner = method, inner

    def __getattr__(self, name):  # param_keys, wrap_loader, prepare ... of the wrapped conditioner
        if name in ("inner", "method"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def init(self, rng) -> dict:
        return self.inner.init(rng)

    def frozen(self, config, shard_config=None) -> dict:
        from t2ijax.train.method import accepts

        if accepts(self.inner.frozen, "shard_config"):  # e.g. a frozen T5 placed straight onto its shards
            return self.inner.frozen(config, shard_config)
        return self.inner.frozen(config)

    def example_cond(self, batch: int) -> dict:
        m = self.method
        return {**self.inner.example_cond(batch), "low_res": jnp.zeros((batch, m.resolution, m.resolution, 3)),
                "class_labels": jnp.zeros((batch,), jnp.float32)}

    def train_cond(self, params, frozen, batch, key) -> dict:
        m = self.method
        text_key, deg_key, level_key, noise_key = jax.random.split(key, 4)
        cond = dict(self.inner.train_cond(params, frozen, batch, text_key))
        x0 = batch["image"].astype(jnp.float32)
        upsampled = m.degradation(deg_key, x0)
        levels = m.noise_aug.sample_levels(level_key, x0.shape[0])
        noise = jax.random.normal(noise_key, upsampled.shape)
        cond["low_res"] = jax.lax.stop_gradient(m.noise_aug.apply(upsampled, levels, noise, m.schedule))
        cond["class_labels"] = m.noise_aug.labels(levels)
        return cond

    def prompt_cond(self, params, frozen, prompts, *, low_res=None, class_labels=None, **rest) -> tuple[dict, dict]:
        """`low_res` (N, H, W, 3) the prepared conditioning and `class_labels` (N,)
        (`SuperResolutionMethod.low_res_condition`), shared by the conditional and unconditional branch."""
        if low_res is None or class_labels is None:
            raise ValueError("the super-resolution conditioning needs low_res and class_labels "
                             "(SuperResolutionMethod.sample prepares them from low-res images)")
        cond, uncond = self.inner.prompt_cond(params, frozen, prompts, **rest)
        extra = {"low_res": jnp.asarray(low_res, jnp.float32), "class_labels": jnp.asarray(class_labels, jnp.float32)}
        return {**cond, **extra}, {**uncond, **extra}


class SuperResolutionMethod(ExpertsMethod):
    """Method "super_resolution"; trainable params {"unet": stacked experts, "text_encoder"} as ExpertsMethod."""

    extra_in_channels = 3

    def __init__(self, config):
        lr = as_dict(field(config.model, "low_res", {}))
        unknown = sorted(set(lr) - {"resolution", "degradations", "noise_aug"})
        if unknown:
            raise ValueError(f"unknown model.low_res fields {unknown}; known: resolution, degradations, noise_aug")
        if not lr.get("resolution"):
            raise ValueError("super_resolution needs model.low_res.resolution (the resolution it upsamples from)")
        self.low_res_config = lr
        self.low_resolution = int(lr["resolution"])
        super().__init__(config)  # builds the conditioner (make_conditioner below) and the U-Nets
        if getattr(self, "vae", None) is not None:
            raise ValueError("super_resolution works in pixel space (the low-res image is concatenated to the "
                             "U-Net's pixel input): unset model.vae_path / model.vae")
        kind = config.model.unet.get("class_embed_type")
        if kind != "timestep" or config.model.unet.get("class_embeddings_concat", False):
            raise ValueError(f"super_resolution feeds the noise-augmentation level through the U-Net's class "
                             f"embedding: set model.unet.class_embed_type='timestep' (got {kind!r}, "
                             "class_embeddings_concat off)")
        default_level = 100 if self.formulation == "ddpm" else 0.1
        self.aug_level = float(field(config.sample, "noise_aug_level", default_level))
        self.noise_aug.check_level(self.aug_level, self.schedule.num_train_timesteps)

    def make_conditioner(self, config):
        self.degradation = Degradation.from_config(self.low_res_config.get("degradations") or {},
                                                   high=self.resolution, low=self.low_resolution)
        self.noise_aug = NoiseAugmentation.from_config(
            self.low_res_config.get("noise_aug") or {}, formulation=self.formulation,
            sigma_data=self.edm.sigma_data, num_train_timesteps=self.schedule.num_train_timesteps)
        return SRConditioner(self, super().make_conditioner(config))

    # ---------------------------------------------------------------- sampling

    def low_res_condition(self, low_res, aug_level=None, *, seeds=None, rng=None) -> dict:
        """{"low_res": (N, H, W, 3) conditioning, "class_labels": (N,)} for low-res images (N, h, w, 3) (uint8,
        or float in [-1, 1]) at the fixed level `aug_level` (default config.sample.noise_aug_level); image i's
        augmentation noise from ``fold_in(PRNGKey(seeds[i]), AUG_NOISE_SALT)``, or all from `rng`."""
        images = np.asarray(low_res)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"low_res must be images (N, h, w, 3), got shape {images.shape}")
        if images.shape[1:3] != (self.low_resolution, self.low_resolution):
            raise ValueError(f"this SR stage upsamples {self.low_resolution}x{self.low_resolution} images "
                             f"(model.low_res.resolution); got {images.shape[1]}x{images.shape[2]}")
        x = images.astype(np.float32) / 127.5 - 1.0 if images.dtype == np.uint8 else images.astype(np.float32)
        level = self.aug_level if aug_level is None else float(aug_level)
        self.noise_aug.check_level(level, self.schedule.num_train_timesteps)
        n = images.shape[0]
        up = self.degradation.upsample(jnp.asarray(x))
        shape = up.shape[1:]
        if (seeds is None) == (rng is None):
            raise ValueError("give exactly one of seeds (one int per image) or rng")
        if seeds is not None:
            if len(seeds) != n:
                raise ValueError(f"{len(seeds)} seeds for {n} low-res images")
            noise = jnp.stack([jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(int(s)), AUG_NOISE_SALT),
                                                 shape) for s in seeds])
        else:
            noise = jax.random.normal(jax.random.fold_in(rng, AUG_NOISE_SALT), up.shape)
        levels = jnp.full((n,), level, jnp.float32)
        return {"low_res": self.noise_aug.apply(up, levels, noise, self.schedule),
                "class_labels": self.noise_aug.labels(levels)}

    def sample(self, params, frozen, prompts, rng=None, *, seeds=None, num_steps: int | None = None,
               guidance_scale: float | None = None, low_res=None, aug_level: float | None = None,
               **cond_inputs) -> np.ndarray:
        """uint8 images (N, H, W, 3): `low_res` (N, h, w, 3) upsampled under `prompts`, noise-augmented at
        `aug_level` (default config.sample.noise_aug_level); seeds / rng / steps / guidance as ExpertsMethod."""
        if low_res is None:
            raise ValueError("super_resolution.sample needs low_res images (N, h, w, 3) to upsample: run it as a "
                             "stage of a cascade (t2ijax.methods.cascade, configs/cascade_shapes.py)")
        if len(prompts) != np.shape(low_res)[0]:
            raise ValueError(f"{len(prompts)} prompts for {np.shape(low_res)[0]} low-res images")
        lr_cond = self.low_res_condition(low_res, aug_level, seeds=seeds, rng=rng)
        return super().sample(params, frozen, prompts, rng, seeds=seeds, num_steps=num_steps,
                              guidance_scale=guidance_scale, **lr_cond, **cond_inputs)

    # ---------------------------------------------------------------- export

    def export(self, params, out_dir: str) -> list[str]:
        """ExpertsMethod's folders plus ``super_resolution.json`` (low resolution, degradations, noise aug)."""
        import json
        import os

        written = super().export(params, out_dir)
        path = os.path.join(out_dir, "super_resolution.json")
        with open(path, "w") as f:
            json.dump({"resolution": self.resolution, "low_resolution": self.low_resolution,
                       "degradations": self.degradation.describe(),
                       "noise_aug": dataclasses.asdict(self.noise_aug), "sample_noise_aug_level": self.aug_level,
                       "class_labels": "EDM: 0.25 ln(max(sigma_aug, label_floor)); DDPM: t_aug"}, f, indent=2)
        return written + [path]


def make_method(config) -> SuperResolutionMethod:
    return SuperResolutionMethod(config)
