"""Flax VQModel with diffusers' semantics and parameter names: Kandinsky 2.2's MoVQ image decoder. NHWC.

    movq = VQModel.from_config(cfg)                # movq/config.json (norm_type="spatial")
    images = movq.apply({"params": p}, latents, force_not_quantize=True, method="decode")  # Kandinsky's decode
    latents = movq.apply({"params": p}, images, method="encode")
    quant, commit_loss, indices = movq.apply({"params": p}, latents, method="quantize_latents")

MoVQ is a VQ-GAN whose decoder normalises with SpatialNorm conditioned on the quantised latents
(`norm_type="spatial"`); `norm_type="group"` is the plain VQ-GAN. Encoder and decoder are the VAE's
(`t2ijax.models.vae`), with `double_z=False` and the spatial norm switched on.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2ijax.models.diffusers_config import (FrozenConfig, check_supported, freeze_config, merge_with_defaults,
                                            thaw_config)
from t2ijax.models.layers import Embed
from t2ijax.models.resnet import conv2d
from t2ijax.models.vae import Decoder, Encoder

Dtype = Any

# diffusers' VQModel.__init__ defaults (v0.42).
VQ_DEFAULTS: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"], "block_out_channels": [64], "layers_per_block": 1, "act_fn": "silu",
    "latent_channels": 3, "sample_size": 32, "num_vq_embeddings": 256, "norm_num_groups": 32, "vq_embed_dim": None,
    "scaling_factor": 0.18215, "norm_type": "group", "mid_block_add_attention": True,
    "lookup_from_codebook": False, "force_upcast": False,
}

_SUPPORTED = {
    "down_block_types": lambda v: all(t in ("DownEncoderBlock2D", "AttnDownEncoderBlock2D") for t in v),
    "up_block_types": lambda v: all(t in ("UpDecoderBlock2D", "AttnUpDecoderBlock2D") for t in v),
    "layers_per_block": lambda v: isinstance(v, int),
    "norm_type": ("group", "spatial"),
}


class VectorQuantizer(nn.Module):
    """diffusers' VectorQuantizer (legacy loss, beta 0.25, no index remapping); codebook `embedding`.

    Distances, the codebook and the quantised latents are float32, whatever the model's dtype
    (diffusers keeps `quantize` out of layerwise casting).
    """
    num_embeddings: int
    embed_dim: int
    beta: float = 0.25

    def setup(self):
        bound = 1.0 / self.num_embeddings

        def init(key, shape, dtype=jnp.float32):  # diffusers: uniform(-1/n, 1/n)
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        self.embedding = Embed(self.num_embeddings, self.embed_dim, ("vocab", "embed"), init=init)

    def __call__(self, z):
        """NHWC z -> (z_q with a straight-through gradient, commitment loss (scalar), indices (B, H, W))."""
        z = z.astype(jnp.float32)
        codebook = self.embedding.embedding
        flat = z.reshape(-1, self.embed_dim)
        # ||z - e||^2 = ||z||^2 + ||e||^2 - 2 z.e, as torch.cdist computes it for batches this large
        dist = (jnp.sum(flat ** 2, axis=1, keepdims=True) + jnp.sum(codebook ** 2, axis=1)[None, :]
                - 2.0 * jnp.dot(flat, codebook.T, precision=jax.lax.Precision.HIGHEST))
        indices = jnp.argmin(dist, axis=1).reshape(z.shape[:-1])
        z_q = codebook[indices]
        sg = jax.lax.stop_gradient
        # diffusers' legacy weighting: beta on the codebook term, 1 on the commitment term
        loss = jnp.mean((sg(z_q) - z) ** 2) + self.beta * jnp.mean((z_q - sg(z)) ** 2)
        return z + sg(z_q - z), loss, indices

    def lookup(self, indices, shape: Sequence[int] | None = None):
        """Codebook entries of integer `indices`, reshaped to NHWC `shape` (B, H, W, C) when given."""
        z_q = self.embedding(indices)
        return z_q.reshape(tuple(shape)) if shape is not None else z_q


class VQModel(nn.Module):
    """diffusers' VQModel: `encode` -> latents, `quantize`, `decode(latents, force_not_quantize)` -> images.

    Images are NHWC in [-1, 1]; latents NHWC with `vq_embed_dim` channels. `force_upcast` (a pipeline hint in
    diffusers: run this model in float32 under half precision) makes the module compute in float32 whatever
    `dtype` says. `config` keeps the original config.json.
    """
    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 3
    num_vq_embeddings: int = 256
    norm_num_groups: int = 32
    vq_embed_dim: int | None = None
    scaling_factor: float = 0.18215
    norm_type: str = "group"
    mid_block_add_attention: bool = True
    lookup_from_codebook: bool = False
    force_upcast: bool = False
    dtype: Dtype = jnp.float32
    config: FrozenConfig = ()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, dtype: Dtype = jnp.float32) -> "VQModel":
        """Build from a diffusers VQModel config dict (keys starting with '_' are ignored).

        Raises ValueError naming every config value this port does not support.
        """
        c = merge_with_defaults(cfg, VQ_DEFAULTS, "VQModel")
        check_supported(c, _SUPPORTED, "VQModel")
        n = len(c["block_out_channels"])
        if len(c["down_block_types"]) != n or len(c["up_block_types"]) != n:
            raise ValueError(f"VQModel config needs one down and one up block type per block_out_channels "
                             f"entry ({n}), got {len(c['down_block_types'])} and {len(c['up_block_types'])}")
        embed_dim = c["vq_embed_dim"] or c["latent_channels"]
        if c["norm_type"] == "spatial" and embed_dim != c["latent_channels"]:
            # diffusers sizes SpatialNorm's convs by latent_channels but feeds them vq_embed_dim channels
            raise ValueError(f"norm_type='spatial' needs vq_embed_dim ({embed_dim}) == latent_channels "
                             f"({c['latent_channels']}), as diffusers' VQModel does")
        if c["norm_type"] == "spatial" and any(ch % 32 for ch in c["block_out_channels"]):
            raise ValueError(f"norm_type='spatial' needs block_out_channels divisible by 32 (SpatialNorm's fixed "
                             f"32 groups), got {c['block_out_channels']}")
        return cls(in_channels=c["in_channels"], out_channels=c["out_channels"],
                   down_block_types=tuple(c["down_block_types"]), up_block_types=tuple(c["up_block_types"]),
                   block_out_channels=tuple(c["block_out_channels"]), layers_per_block=c["layers_per_block"],
                   act_fn=c["act_fn"], latent_channels=c["latent_channels"],
                   num_vq_embeddings=c["num_vq_embeddings"], norm_num_groups=c["norm_num_groups"],
                   vq_embed_dim=c["vq_embed_dim"], scaling_factor=c["scaling_factor"], norm_type=c["norm_type"],
                   mid_block_add_attention=c["mid_block_add_attention"],
                   lookup_from_codebook=c["lookup_from_codebook"], force_upcast=c["force_upcast"], dtype=dtype,
                   config=freeze_config(cfg))

    def to_config(self) -> dict[str, Any]:
        """The diffusers config.json: the original one if built by `from_config`, else derived from the fields."""
        if self.config:
            return thaw_config(self.config)
        return {"_class_name": "VQModel", "in_channels": self.in_channels, "out_channels": self.out_channels,
                "down_block_types": list(self.down_block_types), "up_block_types": list(self.up_block_types),
                "block_out_channels": list(self.block_out_channels), "layers_per_block": self.layers_per_block,
                "act_fn": self.act_fn, "latent_channels": self.latent_channels,
                "num_vq_embeddings": self.num_vq_embeddings, "norm_num_groups": self.norm_num_groups,
                "vq_embed_dim": self.vq_embed_dim, "scaling_factor": self.scaling_factor,
                "norm_type": self.norm_type, "mid_block_add_attention": self.mid_block_add_attention,
                "lookup_from_codebook": self.lookup_from_codebook, "force_upcast": self.force_upcast}

    @property
    def embed_dim(self) -> int:
        return self.vq_embed_dim or self.latent_channels

    @property
    def compute_dtype(self) -> Dtype:
        return jnp.float32 if self.force_upcast else self.dtype

    def setup(self):
        dt = self.compute_dtype
        self.encoder = Encoder(tuple(self.block_out_channels), self.layers_per_block, self.latent_channels,
                               self.norm_num_groups, self.act_fn, self.mid_block_add_attention, dt,
                               down_block_types=tuple(self.down_block_types), double_z=False)
        self.quant_conv = conv2d(self.embed_dim, 1, dtype=dt)
        self.quantize = VectorQuantizer(self.num_vq_embeddings, self.embed_dim)
        self.post_quant_conv = conv2d(self.latent_channels, 1, dtype=dt)
        self.decoder = Decoder(tuple(self.block_out_channels), self.layers_per_block, self.out_channels,
                               self.norm_num_groups, self.act_fn, self.mid_block_add_attention, dt,
                               up_block_types=tuple(self.up_block_types), norm_type=self.norm_type)

    def encode(self, images):
        """NHWC images (B, H, W, in_channels) -> latents (B, H/f, W/f, vq_embed_dim), before quantisation."""
        if images.ndim != 4 or images.shape[-1] != self.in_channels:
            raise ValueError(f"encode expects NHWC images with {self.in_channels} channels, got {images.shape}")
        return self.quant_conv(self.encoder(images.astype(self.compute_dtype)))

    def quantize_latents(self, latents):
        """diffusers' `VQModel.quantize(latents)`: (z_q NHWC float32, commitment loss, indices (B, h, w))."""
        return self.quantize(latents)

    def decode(self, latents, force_not_quantize: bool = False, shape: Sequence[int] | None = None):
        """Latents -> images (B, h*f, w*f, out_channels), as diffusers' `VQModel.decode(...).sample`.

        force_not_quantize=False: `latents` (B, h, w, vq_embed_dim) are quantised first.
        force_not_quantize=True: they are used as they are (Kandinsky 2.2's pipeline), or, with
        `lookup_from_codebook`, `latents` are codebook indices (B, h, w), or flat with `shape` = (B, h, w, C).
        """
        if force_not_quantize and self.lookup_from_codebook:
            if shape is None and latents.ndim == 3:
                shape = (*latents.shape, self.embed_dim)
            if shape is None:
                raise ValueError("lookup_from_codebook decodes codebook indices: pass them as (B, h, w) or give "
                                 "`shape` = (B, h, w, vq_embed_dim)")
            quant = self.quantize.lookup(latents, shape)
        else:
            if latents.ndim != 4 or latents.shape[-1] != self.embed_dim:
                raise ValueError(f"decode expects NHWC latents with {self.embed_dim} channels, got {latents.shape}")
            quant = latents if force_not_quantize else self.quantize(latents)[0]
        return self._decode_quantised(quant)

    def __call__(self, images):
        """Reconstruction through the codebook, as diffusers' forward: (images, commitment loss)."""
        quant, loss, _ = self.quantize(self.encode(images))
        return self._decode_quantised(quant), loss

    def _decode_quantised(self, quant):
        quant = quant.astype(self.compute_dtype)
        # MoVQ conditions the decoder's norms on the quantised latents before post_quant_conv
        return self.decoder(self.post_quant_conv(quant), quant if self.norm_type == "spatial" else None)
