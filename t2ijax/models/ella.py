"""ELLA's Timestep-Aware Semantic Connector (TSC), arXiv 2403.05135.

The TSC maps frozen-LLM text features (Flan-T5-XL, width 2048) and the raw
diffusion timestep (DDPM scale 0-999) to 64 tokens of width 768 that replace
CLIP's `encoder_hidden_states` in a frozen SD1.5 U-Net. It is re-evaluated at
every sampling step (see `ella_denoise`).

Module names mirror the released state-dict keys (`time_embedding.linear_1`,
`connector.perceiver_blocks.{i}.ln_1.linear`, ...), so
`t2ijax.weights.torch_layout` converts them; only `nn.MultiheadAttention`'s
packed `in_proj_weight` is split into `q_proj`/`k_proj`/`v_proj` by the loader
(`t2ijax.weights.ella`).

Defaults are the released ELLA-SD1.5 configuration (66,820,608 parameters).
Switches for the paper's Tab. 6 ablations (from the code before commit 8ded246
"only keep AdaLN"):

  norm_type="ada_norm"       the TSC: three AdaLNs per block (released)
  norm_type="ada_norm_zero"  AdaLN plus a per-block `gate_linear` gating both
                             residual branches (73,907,712 params)
  norm_type="ln"             affine LayerNorm (eps 1e-5); with
                             time_aware_query=False there is no timestep path at
                             all (44,159,232 params; 8,712,192 with layers=1)
  connector_type="mlp"       the "MLP 2.16M" row, which has no code upstream:
                             Linear(input_dim, width) -> GELU -> Linear(width,
                             width) per token (2,164,224 params for 2048 -> 768,
                             matching 2.16M). Its output keeps the N text tokens
                             instead of 64 latents. [derived, not released]
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2ijax.models import layers
from t2ijax.models.layers import timestep_embedding
from t2ijax.models.attention import attention

Dtype = Any

NORM_TYPES = ("ada_norm", "ada_norm_zero", "ln")
CONNECTOR_TYPES = ("perceiver", "mlp")


# ------------------------------------------------------------- PyTorch inits

def torch_linear_kernel_init() -> Callable:
    """nn.Linear's default weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_bias_init(fan_in: int) -> Callable:
    """nn.Linear's default bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_dense(features: int, fan_in: int, axes, *, name: str, dtype: Dtype, zero_bias: bool = False,
                zero_init: bool = False) -> nn.Dense:
    """A `layers.Dense` initialised like PyTorch's nn.Linear (or all zeros)."""
    if zero_init:
        k_init, b_init = nn.initializers.zeros, nn.initializers.zeros
    else:
        k_init = torch_linear_kernel_init()
        b_init = nn.initializers.zeros if zero_bias else torch_linear_bias_init(fan_in)
    return layers.Dense(features, axes, dtype=dtype, kernel_init=k_init, bias_init=b_init, name=name)


# --------------------------------------------------------- timestep features

# --------------------------------------------------------------- sub-modules

class TimestepEmbedding(nn.Module):
    """diffusers `TimestepEmbedding`: linear_1 -> act -> linear_2 (to `out_features`, default `features`)."""
    in_channels: int
    features: int
    act_fn: str = "silu"
    out_features: int | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = torch_dense(self.features, self.in_channels, (None, "mlp"), name="linear_1", dtype=self.dtype)(x)
        x = layers.activation(self.act_fn)(x)
        return torch_dense(self.out_features or self.features, self.features, ("mlp", "embed"), name="linear_2",
                           dtype=self.dtype)(x)


class AdaLayerNorm(nn.Module):
    """LayerNorm(eps 1e-6, no affine)(x) * (1 + scale) + shift, [shift | scale] = linear(SiLU(t_emb)).

    `linear` is zero-initialised, so at init this is a plain non-affine LayerNorm.
    """
    width: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, t_emb):
        emb = torch_dense(2 * self.width, t_emb.shape[-1], (None, "mlp"), name="linear", dtype=self.dtype,
                          zero_init=True)(nn.silu(t_emb))
        shift, scale = jnp.split(emb.reshape(x.shape[0], 1, 2 * self.width), 2, axis=-1)
        normed = layers.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, dtype=self.dtype, name="norm")(x)
        return normed * (1 + scale) + shift


class MultiheadAttention(nn.Module):
    """torch nn.MultiheadAttention (no dropout, no weights) with q/k/v split into separate Dense layers.

    The loader splits the packed `in_proj_weight` rows [q; k; v] into these.
    q/k/v use xavier_uniform over the packed (3d, d) matrix and zero biases, as torch does.
    """
    width: int
    heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, query, kv, mask=None):
        d, h = self.width, self.heads
        xavier_packed = nn.initializers.variance_scaling(0.5, "fan_in", "uniform")  # bound sqrt(6 / (d + 3d))

        def proj(name):
            return layers.Dense(d, ("embed", "heads"), dtype=self.dtype, kernel_init=xavier_packed, name=name)

        b = query.shape[0]
        q = proj("q_proj")(query).reshape(b, query.shape[1], h, d // h)
        k = proj("k_proj")(kv).reshape(b, kv.shape[1], h, d // h)
        v = proj("v_proj")(kv).reshape(b, kv.shape[1], h, d // h)
        out = attention(q, k, v, mask=mask).reshape(b, query.shape[1], d)
        return layers.Dense(d, ("heads", "embed"), dtype=self.dtype, kernel_init=torch_linear_kernel_init(),
                            name="out_proj")(out)


class SquaredReLUMLP(nn.Module):
    """c_fc -> relu(x)^2 -> c_proj (width -> 4 width -> width)."""
    width: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = torch_dense(4 * self.width, self.width, ("embed", "mlp"), name="c_fc", dtype=self.dtype)(x)
        x = jnp.square(nn.relu(x))
        return torch_dense(self.width, 4 * self.width, ("mlp", "embed"), name="c_proj", dtype=self.dtype)(x)


class PerceiverAttentionBlock(nn.Module):
    """Pre-norm perceiver block: latents attend to [latents; text] (Flamingo style), then a squared-ReLU MLP."""
    width: int
    heads: int
    norm_type: str = "ada_norm"
    dtype: Dtype = jnp.float32

    def _norm(self, name):
        if self.norm_type == "ln":
            ln = layers.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)
            return lambda x, t_emb: ln(x)
        return AdaLayerNorm(self.width, dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, x, latents, t_emb, text_mask=None):
        ln_1, ln_2, ln_ff = self._norm("ln_1"), self._norm("ln_2"), self._norm("ln_ff")
        gate_attn = gate_mlp = 1.0
        if self.norm_type == "ada_norm_zero":
            # Old-code AdaLN-Zero: default weight init, zero bias (so gates are not zero at init).
            gates = torch_dense(2 * self.width, t_emb.shape[-1], (None, "mlp"), name="gate_linear",
                                dtype=self.dtype, zero_bias=True)(nn.silu(t_emb))
            gate_attn, gate_mlp = jnp.split(gates.reshape(x.shape[0], 1, 2 * self.width), 2, axis=-1)

        normed = ln_1(latents, t_emb)
        kv = jnp.concatenate([normed, ln_2(x, t_emb)], axis=1)
        mask = None
        if text_mask is not None:
            keep_latents = jnp.ones((x.shape[0], latents.shape[1]), bool)
            mask = jnp.concatenate([keep_latents, text_mask.astype(bool)], axis=1)[:, None, None, :]
        attn = MultiheadAttention(self.width, self.heads, dtype=self.dtype, name="attn")(normed, kv, mask)
        latents = latents + gate_attn * attn
        mlp = SquaredReLUMLP(self.width, dtype=self.dtype, name="mlp")(ln_ff(latents, t_emb))
        return latents + gate_mlp * mlp


class PerceiverResampler(nn.Module):
    """ELLA's `connector`: time-aware learned latents refined by perceiver blocks; no output projection."""
    width: int = 768
    layers: int = 6
    heads: int = 8
    num_latents: int = 64
    input_dim: int | None = 2048
    norm_type: str = "ada_norm"
    time_aware_query: bool = True
    time_aware_linear_zero_bias: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, t_emb, text_mask=None):
        w = self.width
        init_latents = lambda key, shape, dtype: w ** -0.5 * jax.random.normal(key, shape, dtype)
        latents = layers.param(self, "latents", init_latents, (self.num_latents, w), ("latents", "embed"))
        latents = jnp.broadcast_to(latents.astype(self.dtype), (x.shape[0], self.num_latents, w))
        if self.time_aware_query:
            latents = latents + torch_dense(w, t_emb.shape[-1], (None, "embed"), name="time_aware_linear",
                                            dtype=self.dtype,
                                            zero_bias=self.time_aware_linear_zero_bias)(nn.silu(t_emb))
        if self.input_dim is not None:
            x = torch_dense(w, self.input_dim, (None, "embed"), name="proj_in", dtype=self.dtype)(x)
        for i in range(self.layers):
            latents = PerceiverAttentionBlock(w, self.heads, self.norm_type, dtype=self.dtype,
                                              name=f"perceiver_blocks.{i}")(x, latents, t_emb, text_mask)
        return latents


class MLPConnector(nn.Module):
    """Tab. 6's "MLP" connector (derived): a per-token two-layer MLP, no timestep input."""
    width: int = 768
    input_dim: int = 2048
    act_fn: str = "gelu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = torch_dense(self.width, self.input_dim, (None, "mlp"), name="linear_1", dtype=self.dtype)(x)
        x = layers.activation(self.act_fn)(x)
        return torch_dense(self.width, self.width, ("mlp", "embed"), name="linear_2", dtype=self.dtype)(x)


# ---------------------------------------------------------------------- ELLA

class ELLA(nn.Module):
    """The TSC. `apply({"params": p}, llm_features, timesteps, text_mask=None)` -> (B, num_latents, width).

    llm_features: (B, N, input_dim) frozen LLM last hidden states.
    timesteps: raw diffusion timesteps (0-999 DDPM scale), a scalar, (1,) or (B,).
    text_mask: optional (B, N) bool, True = real token. None reproduces the
      released behaviour (fixed length 128, the TSC sees pad positions);
      a mask gives the "flexible length" mode, equal to running each sample on
      its unpadded features as the reference `ELLAProxyUNet` does.
    Defaults are the released ELLA-SD1.5 TSC; see the module docstring for the
    ablation switches. `dtype` is the compute dtype (params stay float32); the
    sinusoidal features are cast to it before the MLP, as the reference casts
    them to the text features' dtype.
    """
    time_channel: int = 320
    time_embed_dim: int = 768
    act_fn: str = "silu"
    width: int = 768
    layers: int = 6
    heads: int = 8
    num_latents: int = 64
    input_dim: int | None = 2048
    norm_type: str = "ada_norm"
    time_aware_query: bool = True
    connector_type: str = "perceiver"
    mlp_connector_act: str = "gelu"
    flip_sin_to_cos: bool = True
    downscale_freq_shift: float = 0.0
    time_aware_linear_zero_bias: bool = False  # True = the pre-release code's init
    dtype: Dtype = jnp.float32

    @property
    def uses_timestep(self) -> bool:
        return self.connector_type == "perceiver" and (self.norm_type != "ln" or self.time_aware_query)

    def check_config(self) -> None:
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"ELLA norm_type must be one of {NORM_TYPES}, got {self.norm_type!r}")
        if self.connector_type not in CONNECTOR_TYPES:
            raise ValueError(f"ELLA connector_type must be one of {CONNECTOR_TYPES}, got {self.connector_type!r}")
        if self.connector_type == "mlp" and self.input_dim is None:
            raise ValueError("ELLA connector_type='mlp' needs input_dim")
        if self.width % self.heads:
            raise ValueError(f"ELLA width {self.width} is not divisible by heads {self.heads}")
        if min(self.width, self.heads, self.num_latents, self.time_channel, self.time_embed_dim) < 1 or \
                self.layers < 0:
            raise ValueError("ELLA sizes must be positive")

    def _check_inputs(self, x, timesteps, text_mask):
        if x.ndim != 3:
            raise ValueError(f"ELLA llm_features must be (B, N, C), got shape {x.shape}")
        want = self.width if self.input_dim is None else self.input_dim
        if x.shape[-1] != want:
            raise ValueError(f"ELLA llm_features have {x.shape[-1]} channels, the model expects {want} "
                             "(input_dim)")
        n_t = int(jnp.size(timesteps))
        if n_t not in (1, x.shape[0]):
            raise ValueError(f"ELLA timesteps must be a scalar or have one entry per sample "
                             f"(batch {x.shape[0]}), got shape {jnp.shape(timesteps)}")
        if text_mask is not None and tuple(text_mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"ELLA text_mask must be (B, N) = {tuple(x.shape[:2])}, got {tuple(text_mask.shape)}")

    @nn.compact
    def __call__(self, llm_features, timesteps, text_mask=None):
        self.check_config()
        self._check_inputs(llm_features, timesteps, text_mask)
        x = llm_features.astype(self.dtype)
        if self.connector_type == "mlp":
            return MLPConnector(self.width, self.input_dim, self.mlp_connector_act, dtype=self.dtype,
                                name="connector")(x)
        b = x.shape[0]
        t_emb = None
        if self.uses_timestep:
            feats = timestep_embedding(timesteps, self.time_channel, flip_sin_to_cos=self.flip_sin_to_cos,
                                       downscale_freq_shift=self.downscale_freq_shift)
            feats = jnp.broadcast_to(feats.astype(self.dtype)[:, None, :], (b, 1, self.time_channel))
            t_emb = TimestepEmbedding(self.time_channel, self.time_embed_dim, self.act_fn, dtype=self.dtype,
                                      name="time_embedding")(feats)  # (B, 1, time_embed_dim)
        return PerceiverResampler(self.width, self.layers, self.heads, self.num_latents, self.input_dim,
                                  self.norm_type, self.time_aware_query, self.time_aware_linear_zero_bias,
                                  dtype=self.dtype, name="connector")(x, t_emb, text_mask)


# ------------------------------------------------------------- denoiser glue

def ella_context(tsc_module: ELLA, tsc_params, t, llm_features, mask=None, clip_context=None):
    """The U-Net's encoder_hidden_states for one step: TSC(llm_features, t) [; clip_context].

    clip_context: optional (B, 77, 768) CLIP text states appended AFTER the TSC
    output along the sequence axis (ComfyUI-ELLA's "ELLA + CLIP" mode, an
    inference-only trick for community checkpoints; ELLA was not trained so).
    """
    if clip_context is not None:
        b, w = llm_features.shape[0], tsc_module.width
        if clip_context.ndim != 3 or clip_context.shape[0] != b or clip_context.shape[-1] != w:
            raise ValueError(f"clip_context must be (B, L, {w}) with B = {b}, got {tuple(clip_context.shape)}")
    context = tsc_module.apply({"params": tsc_params}, llm_features, t, mask)
    if clip_context is not None:
        context = jnp.concatenate([context, clip_context.astype(context.dtype)], axis=1)
    return context


def ella_denoise(unet_apply: Callable, unet_params, tsc_module: ELLA, tsc_params, x, t, llm_features,
                 mask=None, clip_context=None):
    """One denoiser call with ELLA conditioning, as the reference `ELLAProxyUNet`.

    The TSC is recomputed from THIS step's timestep `t` (raw 0-999 scale, scalar
    or (B,)) and its output is passed as the U-Net's encoder_hidden_states:
    returns `unet_apply(unet_params, x, t, context)`. Any callable with that
    signature works, e.g. `unet.apply` with `unet_params={"params": p}`.

    Text modes: `mask=None` is the released fixed-length mode (T5 features padded
    to 128, the TSC sees pad positions); a (B, N) `mask` is the flexible-length
    mode (true length, pad positions masked out of the TSC's keys).
    `clip_context`: see `ella_context`.
    """
    context = ella_context(tsc_module, tsc_params, t, llm_features, mask, clip_context)
    return unet_apply(unet_params, x, t, context)


def _pad_tokens(features, mask, n):
    b, length = features.shape[:2]
    if mask is None:
        mask = jnp.ones((b, length), bool)
    pad = n - length
    return (jnp.pad(features, ((0, 0), (0, pad), (0, 0))), jnp.pad(mask.astype(bool), ((0, 0), (0, pad))))


def ella_guidance_pair(llm_features, uncond_features, mask=None, uncond_mask=None, clip_context=None,
                       uncond_clip_context=None) -> tuple[dict, dict]:
    """(cond, uncond) conditioning for `t2ijax.diffusion.cfg_denoise` with `ella_denoise` (keys "features",
    "mask", and "clip_context" when given), as the reference pipeline guides: the unconditional branch is the
    TSC of the LLM features of the EMPTY prompt (T5("") = a single `</s>` in flexible mode, or 128 padded
    positions in fixed mode) at the same timestep. `uncond_*` may have batch 1 (broadcast). In fixed mode
    (both masks None) both feature sets must have the same length; if either mask is given, both are
    zero-padded to a common length and masked (flexible mode)."""
    b = llm_features.shape[0]
    uncond_features = jnp.broadcast_to(uncond_features, (b,) + uncond_features.shape[1:])
    if uncond_mask is not None:
        uncond_mask = jnp.broadcast_to(uncond_mask, (b, uncond_features.shape[1]))
    if mask is None and uncond_mask is None:
        if uncond_features.shape[1] != llm_features.shape[1]:
            raise ValueError(f"fixed-length mode needs equal token counts, got {llm_features.shape[1]} (cond) and "
                             f"{uncond_features.shape[1]} (uncond); pass masks for flexible-length mode")
        cond, uncond = {"features": llm_features, "mask": None}, {"features": uncond_features, "mask": None}
    else:
        n = max(uncond_features.shape[1], llm_features.shape[1])
        (fc, mc), (fu, mu) = _pad_tokens(llm_features, mask, n), _pad_tokens(uncond_features, uncond_mask, n)
        cond, uncond = {"features": fc, "mask": mc}, {"features": fu, "mask": mu}
    if clip_context is not None or uncond_clip_context is not None:
        if clip_context is None or uncond_clip_context is None:
            raise ValueError("ELLA + CLIP guidance needs both clip_context and uncond_clip_context")
        cond["clip_context"] = clip_context
        uncond["clip_context"] = jnp.broadcast_to(uncond_clip_context, (b,) + uncond_clip_context.shape[1:])
    return cond, uncond
