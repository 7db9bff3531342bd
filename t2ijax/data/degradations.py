"""Random degradations of a high-resolution batch into the low-resolution conditioning of a super-resolution stage.

eDiff-I (sec. 5.4 of the method notes) trains its SR stages "conditioned on ground-truth low-resolution inputs
with random degradations" and says no more; Imagen and SR3 downsample the ground truth and upsample it back
(bilinear / bicubic), Real-ESRGAN-style pipelines add blur, kernel choice and noise. Our pipeline, per example,
each step with its own key (everything pure JAX, jittable, a function of the key and the images only):

  1. blur        with probability `blur_prob`, a separable Gaussian blur of the HIGH-res image with sigma drawn
                 uniformly from `blur_sigma` (in high-res pixels); otherwise none.
  2. downsample  by `factor` with a kernel drawn uniformly from `kernels`: "area" (box average of each
                 factor x factor block, exact), "bilinear" / "bicubic" (antialiased, `jax.image.resize`),
                 "nearest" (aliased: one pixel of each block).
  3. noise       with probability `noise_prob`, additive Gaussian noise of std drawn uniformly from `noise_std`
                 (in [-1, 1] units) on the low-res image.
  4. clip        to [-1, 1] (bicubic overshoots, noise), then upsample back to the high resolution with
                 `upsample` ("bilinear" or "nearest"), clipped again.

Defaults (`DEFAULTS`), our choices where the paper gives none: area downsampling as the main kernel with
bilinear and bicubic also drawn (a base model's output is neither exactly), blur with probability 0.5 and
sigma in [0.2, 1.0] high-res pixels (mild: at factor 2 a sigma-1 blur already removes most of what the
downsampling keeps), no additive noise (the SR method's noise-conditioning augmentation already noises the
low-res input at a random level; `noise_prob` > 0 adds a second, pixel-level noise), bilinear upsampling
(what Imagen's and SR3's U-Nets see). `resize_kernels: ("area",)` with `blur_prob: 0` is the plain
"area-downsample, bilinear-upsample" pair, deterministic.

    deg = Degradation.from_config({"blur_prob": 0.0}, high=64, low=32)
    low = deg.degrade(key, images)       # (B, 32, 32, 3), [-1, 1]
    cond = deg.upsample(low)             # (B, 64, 64, 3), [-1, 1]
    cond = deg(key, images)              # both at once
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

KERNELS = ("area", "bilinear", "bicubic", "nearest")
UPSAMPLE = ("bilinear", "nearest")
DEFAULTS = dict(kernels=("area", "bilinear", "bicubic"), blur_prob=0.5, blur_sigma=(0.2, 1.0), noise_prob=0.0,
                noise_std=(0.0, 0.05), upsample="bilinear")


def _pair(value, name: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in (value if isinstance(value, (tuple, list)) else (value, value)))
    if not 0.0 <= lo <= hi:
        raise ValueError(f"degradations.{name} must be a range 0 <= lo <= hi, got {value}")
    return lo, hi


@dataclasses.dataclass(frozen=True)
class Degradation:
    """The degradation of `high` x `high` images to `low` x `low` (module docstring); hashable (a jit static)."""

    high: int
    low: int
    kernels: tuple[str, ...] = DEFAULTS["kernels"]
    blur_prob: float = DEFAULTS["blur_prob"]
    blur_sigma: tuple[float, float] = DEFAULTS["blur_sigma"]
    noise_prob: float = DEFAULTS["noise_prob"]
    noise_std: tuple[float, float] = DEFAULTS["noise_std"]
    upsample_method: str = DEFAULTS["upsample"]

    def __post_init__(self):
        if self.low < 1 or self.high % self.low or self.high <= self.low:
            raise ValueError(f"low-res resolution {self.low} must divide the high resolution {self.high} (and be "
                             "smaller): the SR factor is an integer")
        kernels = tuple(self.kernels)
        if not kernels or any(k not in KERNELS for k in kernels):
            raise ValueError(f"degradations.kernels={list(kernels)}: choose from {KERNELS}")
        object.__setattr__(self, "kernels", kernels)
        if self.upsample_method not in UPSAMPLE:
            raise ValueError(f"degradations.upsample={self.upsample_method!r}: choose from {UPSAMPLE}")
        for name in ("blur_prob", "noise_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"degradations.{name} must be in [0, 1], got {getattr(self, name)}")
        object.__setattr__(self, "blur_sigma", _pair(self.blur_sigma, "blur_sigma"))
        object.__setattr__(self, "noise_std", _pair(self.noise_std, "noise_std"))

    @classmethod
    def from_config(cls, cfg, *, high: int, low: int) -> "Degradation":
        """From a config dict (keys of `DEFAULTS`; missing keys take the defaults)."""
        cfg = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else (cfg or {}))
        unknown = sorted(set(cfg) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"unknown degradations fields {unknown}; known: {sorted(DEFAULTS)}")
        c = {**DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
        kernels = (c["kernels"],) if isinstance(c["kernels"], str) else tuple(c["kernels"])
        return cls(high=int(high), low=int(low), kernels=kernels, blur_prob=float(c["blur_prob"]),
                   blur_sigma=tuple(c["blur_sigma"]) if isinstance(c["blur_sigma"], (list, tuple))
                   else c["blur_sigma"], noise_prob=float(c["noise_prob"]),
                   noise_std=tuple(c["noise_std"]) if isinstance(c["noise_std"], (list, tuple)) else c["noise_std"],
                   upsample_method=str(c["upsample"]))

    @property
    def factor(self) -> int:
        return self.high // self.low

    def describe(self) -> dict:
        return {"high": self.high, "low": self.low, "factor": self.factor, "kernels": list(self.kernels),
                "blur_prob": self.blur_prob, "blur_sigma": list(self.blur_sigma), "noise_prob": self.noise_prob,
                "noise_std": list(self.noise_std), "upsample": self.upsample_method}

    # ------------------------------------------------------------------ pieces

    def blur(self, images, sigma):
        """Separable Gaussian blur, per-example `sigma` (B,) in pixels (0: none), edge-replicated borders."""
        return gaussian_blur(images, sigma, radius=max(1, math.ceil(3.0 * self.blur_sigma[1])))

    def downsample(self, images, kernel_ids):
        """(B, high, high, C) -> (B, low, low, C) with kernel `self.kernels[kernel_ids[b]]` for example b."""
        outs = [resize_down(images, self.low, k) for k in self.kernels]
        if len(outs) == 1:
            return outs[0]
        stacked = jnp.stack(outs)  # (K, B, low, low, C)
        return jnp.take_along_axis(stacked, kernel_ids[None, :, None, None, None], axis=0)[0]

    def upsample(self, low_images):
        """(B, low, low, C) in [-1, 1] -> (B, high, high, C) in [-1, 1] (`upsample_method`)."""
        x = jnp.asarray(low_images, jnp.float32)
        b, h, w, c = x.shape
        if (h, w) != (self.low, self.low):
            raise ValueError(f"low-res images must be {self.low}x{self.low}, got {h}x{w}")
        method = "linear" if self.upsample_method == "bilinear" else "nearest"
        return jnp.clip(jax.image.resize(x, (b, self.high, self.high, c), method), -1.0, 1.0)

    # ------------------------------------------------------------------ the whole pipeline

    def degrade(self, key, images):
        """(B, high, high, C) in [-1, 1] -> the degraded low-res (B, low, low, C) in [-1, 1]."""
        x = jnp.asarray(images, jnp.float32)
        b, h, w, _ = x.shape
        if (h, w) != (self.high, self.high):
            raise ValueError(f"images must be {self.high}x{self.high}, got {h}x{w}")
        k_blur, k_sigma, k_kernel, k_noise, k_std, k_draw = jax.random.split(key, 6)
        if self.blur_prob > 0 and self.blur_sigma[1] > 0:
            on = jax.random.bernoulli(k_blur, self.blur_prob, (b,))
            sigma = jax.random.uniform(k_sigma, (b,), minval=self.blur_sigma[0], maxval=self.blur_sigma[1])
            x = self.blur(x, jnp.where(on, sigma, 0.0))
        kernel_ids = jax.random.randint(k_kernel, (b,), 0, len(self.kernels))
        low = self.downsample(x, kernel_ids)
        if self.noise_prob > 0 and self.noise_std[1] > 0:
            on = jax.random.bernoulli(k_noise, self.noise_prob, (b,))
            std = jnp.where(on, jax.random.uniform(k_std, (b,), minval=self.noise_std[0], maxval=self.noise_std[1]),
                            0.0)
            low = low + std[:, None, None, None] * jax.random.normal(k_draw, low.shape)
        return jnp.clip(low, -1.0, 1.0)

    def __call__(self, key, images):
        """The conditioning image: `degrade` then `upsample`, (B, high, high, C) in [-1, 1]."""
        return self.upsample(self.degrade(key, images))


def gaussian_blur(images, sigma, radius: int):
    """Separable Gaussian blur of (B, H, W, C) with per-example `sigma` (B,) (pixels; <= 0.01: identity),
    taps -radius..radius normalised to sum 1, edges replicated (a constant image stays constant)."""
    x = jnp.asarray(images, jnp.float32)
    sigma = jnp.asarray(sigma, jnp.float32)
    d = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    s = jnp.maximum(sigma, 0.01)[:, None]
    taps = jnp.exp(-0.5 * (d[None] / s) ** 2)
    taps = taps / taps.sum(axis=1, keepdims=True)  # (B, K); sigma 0.01: exactly the centre tap (exp(-5000) = 0)
    h, w = x.shape[1], x.shape[2]
    pad = jnp.pad(x, ((0, 0), (radius, radius), (0, 0), (0, 0)), mode="edge")
    x = sum(taps[:, k, None, None, None] * pad[:, k:k + h] for k in range(2 * radius + 1))
    pad = jnp.pad(x, ((0, 0), (0, 0), (radius, radius), (0, 0)), mode="edge")
    return sum(taps[:, k, None, None, None] * pad[:, :, k:k + w] for k in range(2 * radius + 1))


def resize_down(images, low: int, kernel: str):
    """(B, H, W, C) -> (B, low, low, C) with one kernel of `KERNELS` (H a multiple of low)."""
    x = jnp.asarray(images, jnp.float32)
    b, h, w, c = x.shape
    f = h // low
    if kernel == "area":
        return x.reshape(b, low, f, w // f, f, c).mean(axis=(2, 4))
    if kernel == "nearest":  # the pixel nearest each low-res pixel centre (lower-right of the block's middle)
        return x[:, f // 2::f, f // 2::f][:, :low, :low]
    method = {"bilinear": "linear", "bicubic": "cubic"}[kernel]
    return jax.image.resize(x, (b, low, low, c), method, antialias=True)
