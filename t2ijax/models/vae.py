"""Flax AutoencoderKL with diffusers' semantics and parameter names (SD 1.x / 2.x / Kandinsky VAEs). NHWC.

    vae = AutoencoderKL.from_config(cfg)
    mean, logvar = vae.apply({"params": p}, images, method="encode")
    images = vae.apply({"params": p}, latents, method="decode")

Diffusion latents are `vae.scale_latents(sample_latent(mean, logvar, key))`, and
`vae.unscale_latents` undoes it before decoding (scaling_factor, and shift_factor when set).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2ijax.models.diffusers_config import (FrozenConfig, check_supported, freeze_config, merge_with_defaults,
                                            thaw_config)
from t2ijax.models.layers import GroupNorm, activation
from t2ijax.models.resnet import SpatialNorm, conv2d
from t2ijax.models.unet_blocks import (AttnDownEncoderBlock2D, AttnUpDecoderBlock2D, DownEncoderBlock2D,
                                      UNetMidBlock2D, UpDecoderBlock2D)

Dtype = Any

# diffusers' AutoencoderKL.__init__ defaults (v0.42).
VAE_DEFAULTS: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"], "block_out_channels": [64], "layers_per_block": 1, "act_fn": "silu",
    "latent_channels": 4, "norm_num_groups": 32, "sample_size": 32, "scaling_factor": 0.18215,
    "shift_factor": None, "latents_mean": None, "latents_std": None, "force_upcast": True,
    "use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True,
}

_SUPPORTED = {
    "down_block_types": lambda v: all(t == "DownEncoderBlock2D" for t in v),
    "up_block_types": lambda v: all(t == "UpDecoderBlock2D" for t in v),
    "layers_per_block": lambda v: isinstance(v, int),
}

_EPS = 1e-6  # diffusers hard-codes the VAE's norm epsilon


def sample_latent(mean, logvar, key):
    """A draw from the diagonal Gaussian posterior N(mean, exp(logvar))."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


def gaussian_kl(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over H, W, C (diffusers' DiagonalGaussianDistribution.kl)."""
    return 0.5 * jnp.sum(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3))


_DOWN_BLOCKS = {"DownEncoderBlock2D": DownEncoderBlock2D, "AttnDownEncoderBlock2D": AttnDownEncoderBlock2D}
_UP_BLOCKS = {"UpDecoderBlock2D": UpDecoderBlock2D, "AttnUpDecoderBlock2D": AttnUpDecoderBlock2D}


class Encoder(nn.Module):
    """diffusers' vae.Encoder. `down_block_types` defaults to DownEncoderBlock2D everywhere; `double_z=False`
    (VQModel) outputs `latent_channels` instead of mean and logvar."""
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    latent_channels: int
    groups: int
    act_fn: str
    mid_block_add_attention: bool = True
    dtype: Dtype = jnp.float32
    down_block_types: tuple[str, ...] | None = None
    double_z: bool = True

    @nn.compact
    def __call__(self, x):
        common = dict(groups=self.groups, eps=_EPS, act_fn=self.act_fn, dtype=self.dtype)
        n = len(self.block_out_channels)
        kinds = self.down_block_types or ("DownEncoderBlock2D",) * n
        x = conv2d(self.block_out_channels[0], 3, dtype=self.dtype, name="conv_in")(x.astype(self.dtype))
        for i, ch in enumerate(self.block_out_channels):
            x = _DOWN_BLOCKS[kinds[i]](out_channels=ch, num_layers=self.layers_per_block, add_downsample=i < n - 1,
                                       name=f"down_blocks.{i}", **common)(x)
        x = UNetMidBlock2D(out_channels=self.block_out_channels[-1], add_attention=self.mid_block_add_attention,
                           name="mid_block", **common)(x)
        x = activation(self.act_fn)(GroupNorm(self.groups, epsilon=_EPS, dtype=self.dtype, name="conv_norm_out")(x))
        out = 2 * self.latent_channels if self.double_z else self.latent_channels
        return conv2d(out, 3, dtype=self.dtype, name="conv_out")(x)


class Decoder(nn.Module):
    """diffusers' vae.Decoder. `up_block_types` defaults to UpDecoderBlock2D everywhere. With
    `norm_type="spatial"` (MoVQ) every norm after conv_in is a SpatialNorm conditioned on `latent_embeds`
    (the quantised latents, NHWC)."""
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    out_channels: int
    groups: int
    act_fn: str
    mid_block_add_attention: bool = True
    dtype: Dtype = jnp.float32
    up_block_types: tuple[str, ...] | None = None
    norm_type: str = "group"

    @nn.compact
    def __call__(self, z, latent_embeds=None):
        spatial = self.norm_type == "spatial"
        if self.norm_type not in ("group", "spatial"):
            raise ValueError(f"unsupported norm_type {self.norm_type!r}; supported: 'group', 'spatial'")
        if spatial and latent_embeds is None:
            raise ValueError("norm_type='spatial' decodes with the quantised latents as `latent_embeds`")
        temb = latent_embeds.astype(self.dtype) if spatial else None
        common = dict(groups=self.groups, eps=_EPS, act_fn=self.act_fn, dtype=self.dtype,
                      time_embedding_norm="spatial" if spatial else "default")
        n = len(self.block_out_channels)
        kinds = self.up_block_types or ("UpDecoderBlock2D",) * n
        x = conv2d(self.block_out_channels[-1], 3, dtype=self.dtype, name="conv_in")(z.astype(self.dtype))
        x = UNetMidBlock2D(out_channels=self.block_out_channels[-1], add_attention=self.mid_block_add_attention,
                           name="mid_block", **common)(x, temb)
        for i, ch in enumerate(reversed(self.block_out_channels)):
            x = _UP_BLOCKS[kinds[i]](out_channels=ch, num_layers=self.layers_per_block + 1, add_upsample=i < n - 1,
                                     name=f"up_blocks.{i}", **common)(x, temb)
        if spatial:
            x = SpatialNorm(dtype=self.dtype, name="conv_norm_out")(x, temb)
        else:
            x = GroupNorm(self.groups, epsilon=_EPS, dtype=self.dtype, name="conv_norm_out")(x)
        return conv2d(self.out_channels, 3, dtype=self.dtype, name="conv_out")(activation(self.act_fn)(x))


class AutoencoderKL(nn.Module):
    """diffusers' AutoencoderKL: `encode` -> (mean, logvar), `decode` -> image; `__call__` does both (posterior mean).

    Images are NHWC in [-1, 1]; latents NHWC with `latent_channels`. `config` keeps the original config.json.
    """
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    dtype: Dtype = jnp.float32
    config: FrozenConfig = ()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, dtype: Dtype = jnp.float32) -> "AutoencoderKL":
        """Build from a diffusers AutoencoderKL config dict (keys starting with '_' are ignored)."""
        c = merge_with_defaults(cfg, VAE_DEFAULTS, "AutoencoderKL")
        check_supported(c, _SUPPORTED, "AutoencoderKL")
        n = len(c["block_out_channels"])
        if len(c["down_block_types"]) != n or len(c["up_block_types"]) != n:
            raise ValueError(f"AutoencoderKL config needs one down and one up block type per block_out_channels "
                             f"entry ({n}), got {len(c['down_block_types'])} and {len(c['up_block_types'])}")
        return cls(in_channels=c["in_channels"], out_channels=c["out_channels"],
                   block_out_channels=tuple(c["block_out_channels"]), layers_per_block=c["layers_per_block"],
                   act_fn=c["act_fn"], latent_channels=c["latent_channels"], norm_num_groups=c["norm_num_groups"],
                   scaling_factor=c["scaling_factor"], shift_factor=c["shift_factor"],
                   use_quant_conv=c["use_quant_conv"], use_post_quant_conv=c["use_post_quant_conv"],
                   mid_block_add_attention=c["mid_block_add_attention"], dtype=dtype, config=freeze_config(cfg))

    def to_config(self) -> dict[str, Any]:
        """The diffusers config.json: the original one if built by `from_config`, else derived from the fields."""
        if self.config:
            return thaw_config(self.config)
        n = len(self.block_out_channels)
        return {"_class_name": "AutoencoderKL", "in_channels": self.in_channels, "out_channels": self.out_channels,
                "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
                "block_out_channels": list(self.block_out_channels), "layers_per_block": self.layers_per_block,
                "act_fn": self.act_fn, "latent_channels": self.latent_channels,
                "norm_num_groups": self.norm_num_groups, "scaling_factor": self.scaling_factor,
                "shift_factor": self.shift_factor, "use_quant_conv": self.use_quant_conv,
                "use_post_quant_conv": self.use_post_quant_conv,
                "mid_block_add_attention": self.mid_block_add_attention}

    def setup(self):
        self.encoder = Encoder(tuple(self.block_out_channels), self.layers_per_block, self.latent_channels,
                               self.norm_num_groups, self.act_fn, self.mid_block_add_attention, self.dtype)
        self.decoder = Decoder(tuple(self.block_out_channels), self.layers_per_block, self.out_channels,
                               self.norm_num_groups, self.act_fn, self.mid_block_add_attention, self.dtype)
        if self.use_quant_conv:
            self.quant_conv = conv2d(2 * self.latent_channels, 1, dtype=self.dtype)
        if self.use_post_quant_conv:
            self.post_quant_conv = conv2d(self.latent_channels, 1, dtype=self.dtype)

    def encode(self, images):
        """NHWC images (B, H, W, in_channels) -> (mean, logvar), each (B, H/f, W/f, latent_channels).

        logvar is clamped to [-30, 20] as in diffusers' DiagonalGaussianDistribution.
        """
        if images.ndim != 4 or images.shape[-1] != self.in_channels:
            raise ValueError(f"encode expects NHWC images with {self.in_channels} channels, got {images.shape}")
        h = self.encoder(images)
        if self.use_quant_conv:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, latents):
        """NHWC latents (B, h, w, latent_channels) -> images (B, h*f, w*f, out_channels)."""
        if latents.ndim != 4 or latents.shape[-1] != self.latent_channels:
            raise ValueError(f"decode expects NHWC latents with {self.latent_channels} channels, "
                             f"got {latents.shape}")
        z = latents.astype(self.dtype)
        if self.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def __call__(self, images, key=None):
        """Reconstruction through the posterior mean (or a posterior sample when `key` is given)."""
        mean, logvar = self.encode(images)
        return self.decode(mean if key is None else sample_latent(mean, logvar, key))

    def scale_latents(self, z):
        """VAE latents -> diffusion latents: (z - shift_factor) * scaling_factor."""
        return (z - (self.shift_factor or 0.0)) * self.scaling_factor

    def unscale_latents(self, z):
        """Diffusion latents -> VAE latents (inverse of `scale_latents`)."""
        return z / self.scaling_factor + (self.shift_factor or 0.0)
