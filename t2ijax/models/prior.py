"""The unCLIP prior transformer: ECLIPSE's non-diffusion prior and the diffusion prior it replaces.

Mirrors diffusers' `PriorTransformer` (parameter names = its state-dict keys) and the ECLIPSE release
(`eclipse-inference/src/priors/prior_transformer.py`: the same class with the timestep embedding removed):

    sequence = [text token states (L) | pooled text embedding | (time embedding) | noise | prd token]
    each input projected to inner = heads x head_dim, plus a learned positional embedding;
    mask = causal over the whole sequence (-10000 above the diagonal) + (1 - text mask) x -10000 on the text
           columns (additive, finite: exactly the upstream values);
    `num_layers` x BasicTransformerBlock (pre-LN self-attention with q/k/v biases, exact-GELU MLP x4);
    norm_out, the prd token (last position) -> proj_to_clip_embeddings -> (B, clip_embed_dim).

    prior = PriorTransformer.eclipse(embedding_dim=1280)          # 34,193,152 params (Kandinsky 2.2)
    emb = prior.apply({"params": p}, noise, text_embeds, text_token_states, attention_mask)

`time_embedding=True` is diffusers' diffusion prior (Karlo / Kandinsky): `apply(..., timestep=t)` adds the
sinusoidal + MLP time token after the pooled text embedding. `clip_mean` / `clip_std` exist as in diffusers
(ECLIPSE's pipelines never use them; the diffusion prior un-normalises its output with them,
`post_process_latents`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from t2ijax.models.ella import TimestepEmbedding
from t2ijax.models.layers import Dense, LayerNorm, param, timestep_embedding
from t2ijax.models.transformer_2d import BasicTransformerBlock

Dtype = Any
MASK = -10000.0  # upstream's additive mask value (not -inf)

# diffusers' PriorTransformer config keys this module understands, with diffusers' defaults.
PRIOR_DEFAULTS: dict[str, Any] = dict(
    num_attention_heads=32, attention_head_dim=64, num_layers=20, embedding_dim=768, num_embeddings=77,
    additional_embeddings=4, dropout=0.0, time_embed_act_fn="silu", norm_in_type=None,
    embedding_proj_norm_type=None, encoder_hid_proj_type="linear", added_emb_type="prd", time_embed_dim=None,
    embedding_proj_dim=None, clip_embed_dim=None)


class PriorTransformer(nn.Module):
    """diffusers' PriorTransformer (with `time_embedding`) or ECLIPSE's prior (without). See the module doc."""
    num_attention_heads: int = 16
    attention_head_dim: int = 32
    num_layers: int = 10
    embedding_dim: int = 768
    num_embeddings: int = 77
    time_embedding: bool = False
    time_embed_act_fn: str = "silu"
    time_embed_dim: int | None = None
    norm_in: bool = False
    embedding_proj_norm: bool = False
    embedding_proj_dim: int | None = None
    clip_embed_dim: int | None = None
    dtype: Dtype = jnp.float32

    # -------------------------------------------------------------- construction

    @classmethod
    def eclipse(cls, embedding_dim: int = 768, **overrides) -> "PriorTransformer":
        """The released ECLIPSE prior: 16 heads x 32, 10 layers, no time embedding (E=768 Karlo, 1280 Kandinsky)."""
        return cls(embedding_dim=embedding_dim, **overrides)

    @classmethod
    def from_config(cls, config: dict, *, dtype: Dtype = jnp.float32) -> "PriorTransformer":
        """From a diffusers `PriorTransformer` config.json (ECLIPSE's has additional_embeddings=3: no time token)."""
        unknown = sorted(k for k in config if not k.startswith("_") and k not in PRIOR_DEFAULTS)
        if unknown:
            raise ValueError(f"PriorTransformer config has keys this module does not know: {unknown}")
        c = {**PRIOR_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
        for key, allowed in (("encoder_hid_proj_type", ("linear",)), ("added_emb_type", ("prd",)),
                             ("norm_in_type", (None, "layer")), ("embedding_proj_norm_type", (None, "layer"))):
            if c[key] not in allowed:
                raise ValueError(f"PriorTransformer config {key}={c[key]!r} is not supported (supported: {allowed})")
        if c["dropout"]:
            raise ValueError(f"PriorTransformer config dropout={c['dropout']} is not supported (0 only)")
        # text tokens are counted by num_embeddings; the extra tokens are pooled text, noise, prd (+ time)
        if c["additional_embeddings"] not in (3, 4):
            raise ValueError(f"PriorTransformer config additional_embeddings={c['additional_embeddings']}: expected "
                             "3 (ECLIPSE, no time token) or 4 (diffusers' diffusion prior)")
        return cls(num_attention_heads=c["num_attention_heads"], attention_head_dim=c["attention_head_dim"],
                   num_layers=c["num_layers"], embedding_dim=c["embedding_dim"], num_embeddings=c["num_embeddings"],
                   time_embedding=c["additional_embeddings"] == 4, time_embed_act_fn=c["time_embed_act_fn"],
                   time_embed_dim=c["time_embed_dim"], norm_in=c["norm_in_type"] == "layer",
                   embedding_proj_norm=c["embedding_proj_norm_type"] == "layer",
                   embedding_proj_dim=c["embedding_proj_dim"], clip_embed_dim=c["clip_embed_dim"], dtype=dtype)

    def to_config(self) -> dict:
        """The diffusers config.json of this module (`from_config(to_config())` rebuilds it)."""
        return {"_class_name": "PriorTransformer", "num_attention_heads": self.num_attention_heads,
                "attention_head_dim": self.attention_head_dim, "num_layers": self.num_layers,
                "embedding_dim": self.embedding_dim, "num_embeddings": self.num_embeddings,
                "additional_embeddings": self.additional_embeddings, "dropout": 0.0,
                "time_embed_act_fn": self.time_embed_act_fn,
                "norm_in_type": "layer" if self.norm_in else None,
                "embedding_proj_norm_type": "layer" if self.embedding_proj_norm else None,
                "encoder_hid_proj_type": "linear", "added_emb_type": "prd", "time_embed_dim": self.time_embed_dim,
                "embedding_proj_dim": self.embedding_proj_dim, "clip_embed_dim": self.clip_embed_dim}

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def additional_embeddings(self) -> int:
        return 4 if self.time_embedding else 3

    @property
    def output_dim(self) -> int:
        return self.clip_embed_dim or self.embedding_dim

    def example_inputs(self, batch: int = 1):
        """(noise, text_embeds, text_token_states, attention_mask) of the right shapes, zeros."""
        e = self.embedding_dim
        return (jnp.zeros((batch, e)), jnp.zeros((batch, self.embedding_proj_dim or e)),
                jnp.zeros((batch, self.num_embeddings, e)), jnp.ones((batch, self.num_embeddings), jnp.int32))

    # -------------------------------------------------------------- forward

    @nn.compact
    def __call__(self, hidden_states, proj_embedding, encoder_hidden_states, attention_mask=None, timestep=None):
        """(B, E) noise (or noisy embedding), (B, P) pooled text embedding, (B, L, E) text token states,
        (B, L) text mask (1 = token; None = no mask at all, as upstream) -> (B, clip_embed_dim)."""
        b, length = encoder_hidden_states.shape[0], encoder_hidden_states.shape[1]
        if length != self.num_embeddings:
            raise ValueError(f"PriorTransformer takes {self.num_embeddings} text token states (num_embeddings), "
                             f"got {length}: pad or truncate the text to that length")
        if hidden_states.shape != (b, self.embedding_dim):
            raise ValueError(f"PriorTransformer noise must be (B, {self.embedding_dim}), got {hidden_states.shape}")
        if self.time_embedding == (timestep is None):
            raise ValueError("a diffusion prior (time_embedding=True) needs `timestep`; ECLIPSE's prior takes none")
        inner = self.inner_dim

        def dense(name, x, fan_in_axis=None):
            return Dense(inner, (fan_in_axis, "embed"), dtype=self.dtype, name=name)(x.astype(self.dtype))

        if self.embedding_proj_norm:
            proj_embedding = LayerNorm(dtype=self.dtype, name="embedding_proj_norm")(proj_embedding)
        tokens = [dense("encoder_hidden_states_proj", encoder_hidden_states),
                  dense("embedding_proj", proj_embedding)[:, None]]
        if self.time_embedding:
            t = jnp.broadcast_to(jnp.asarray(timestep), (b,))
            t_emb = timestep_embedding(t, inner, flip_sin_to_cos=True, downscale_freq_shift=0.0)
            embed = TimestepEmbedding(inner, self.time_embed_dim or inner, self.time_embed_act_fn, out_features=inner,
                                      dtype=self.dtype, name="time_embedding")
            tokens.append(embed(t_emb.astype(self.dtype))[:, None])
        tokens.append(dense("proj_in", hidden_states)[:, None])
        seq_len = length + self.additional_embeddings
        prd = param(self, "prd_embedding", nn.initializers.zeros, (1, 1, inner), (None, None, "embed"))
        positional = param(self, "positional_embedding", nn.initializers.zeros, (1, seq_len, inner),
                           (None, None, "embed"))
        tokens.append(jnp.broadcast_to(prd.astype(self.dtype), (b, 1, inner)))
        x = jnp.concatenate(tokens, axis=1) + positional.astype(self.dtype)

        bias = None
        if attention_mask is not None:
            causal = jnp.triu(jnp.full((seq_len, seq_len), MASK, jnp.float32), 1)
            padding = (1.0 - attention_mask.astype(jnp.float32)) * MASK
            padding = jnp.pad(padding, ((0, 0), (0, self.additional_embeddings)))
            bias = (padding[:, None, :] + causal[None])[:, None]  # (B, 1, L', L'), the same for every head
        if self.norm_in:
            x = LayerNorm(dtype=self.dtype, name="norm_in")(x)
        for i in range(self.num_layers):
            x = BasicTransformerBlock(inner, self.num_attention_heads, self.attention_head_dim, cross_attention=False,
                                      attention_bias=True, activation_fn="gelu", dtype=self.dtype,
                                      name=f"transformer_blocks.{i}")(x, self_bias=bias)
        x = LayerNorm(dtype=self.dtype, name="norm_out")(x)[:, -1]
        out = Dense(self.output_dim, ("embed", None), dtype=self.dtype, name="proj_to_clip_embeddings")(x)
        # kept for the diffusers layout (ECLIPSE never uses them); see post_process_latents
        param(self, "clip_mean", nn.initializers.zeros, (1, self.output_dim), (None, None))
        param(self, "clip_std", nn.initializers.zeros, (1, self.output_dim), (None, None))
        return out.astype(jnp.float32)

    def post_process_latents(self, latents):
        """diffusers' un-normalisation of a diffusion prior's output: latents x clip_std + clip_mean."""
        return latents * self.get_variable("params", "clip_std") + self.get_variable("params", "clip_mean")
