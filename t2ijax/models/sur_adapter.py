"""SUR-adapter (Zhong et al., ACM MM 2023, arXiv 2305.05189): the text adapter between CLIP and the U-Net.

The adapter maps SD1.5's frozen CLIP last hidden states x (B, L=77, width=768)
to adapted states of the same shape that replace the U-Net's
`encoder_hidden_states`. It runs once per prompt (no timestep input). Structure
of the released `Adapter(depth=2, sd_text_size=768)` (Qrange-group/SUR-adapter
`SUR_adapter.py`; methods.md section 3.2):

  E       = transformer_encoder(x)        2 post-LN nn.TransformerEncoderLayer (8 heads, FF 2048, ReLU,
                                          dropout 0.1, LayerNorm eps 1e-5), no final norm
  A       = softmax(W_q E (W_k x)^T / sqrt(width))   single head; queries from E, keys from the raw x
  H       = A x + x                        V = x: no value projection (`value_layer` exists but is unused)
  out_att = MLP(H) + H                     MLP = output_layer.0 -> ReLU -> output_layer.2
  fc_out  = fc(out_att)                    fc: zero-initialised weight, PyTorch-default bias
  out     = eta * fc_out + (1 - eta) * x   eta = `adapter_weight`, 0.1 in run.sh (default here)

`module.apply({"params": p}, x)` returns `out` (B, L, width);
`apply(..., return_all=True)` returns `SUROutput(out, encoder_out, fc_out)`, a
NamedTuple that unpacks like the release's `(out, out_transformer_encoder,
out_llm)` triple (encoder_out is the KD target of the LLM term).

Module and parameter names mirror the released state dict
(`transformer_encoder.layers.{i}.self_attn`, `linear1`, `norm1`, `attention.query_layer`,
`attention.output_layer.{0,2}`, `fc`, ...), so `t2ijax.weights.sur_adapter` maps it
with `torch_layout`; only nn.MultiheadAttention's packed `in_proj_{weight,bias}`
are split into `self_attn.{q,k,v}_proj` (and packed again on export).

Switches for the released code's quirks (methods.md 3.9), each a module field,
paper intent by default; `load_sur_adapter(path, reproduce_release=True)` sets
both behaviour switches to the release:

  attend_across_batch=False  (Q1) True reproduces nn.TransformerEncoder built without batch_first: the
                             (B, L, D) input is read as (seq=B, batch=L, D), so the encoder's self-attention
                             runs across the BATCH at each token position (the CFG [uncond; cond] halves
                             attend to each other, outputs depend on the batch composition; with B = 1 each
                             token only attends to itself). False attends across the L tokens of each sample.
                             The single-head `attention` block is token x token in both modes (as released).
  dropout_at_inference=False (Q2) True reproduces the demo that never calls `adapter.eval()`: the encoder's
                             dropouts (attention probabilities, both residual branches and the FF hidden,
                             p = dropout_rate) stay active in every call, so `apply` needs
                             `rngs={"dropout": key}`. Independently, `deterministic=False` (training)
                             enables dropout, as `adapter.train()` does.
  dead_params=True           (Q5) keep the released dead parameters as real, unused params:
                             `attention.value_layer` and the template `encoder_layer` (a full
                             TransformerEncoderLayer registered next to its deep copies). They never touch
                             the output (they are created only at `init`), load strictly from a released
                             file and are written back on export, so the released module loads our export
                             with strict=True. Exclude them from weight decay with `trainable_mask` (PyTorch
                             AdamW skips them because they never get a gradient). False drops them: the loader
                             then ignores those keys and the exporter writes zero placeholders for them.

Parameter counts (released config width 768, 8 heads, FF 2048, depth 2):
20,085,504 with dead_params (= the released state dict and optimizer set), 13,980,928 without.

Init: every Linear follows PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the encoder's
self-attention uses nn.MultiheadAttention's init (xavier-uniform packed in_proj, zero in_proj and
out_proj biases); `fc.weight` is zero, so at init out = (1 - eta) x + eta b_fc (Q7: not an identity).
PyTorch's nn.TransformerEncoder deep-copies the template layer, so in the release `layers.0`,
`layers.1` and `encoder_layer` start identical; our init draws them independently, and
`copy_template_layer(params)` reproduces the release's tied start.

Attention: every attention calls `t2ijax.models.attention.attention`, except the encoder's
self-attention when dropout is active: PyTorch drops attention probabilities (p = dropout_rate)
and `attention()` has no probability dropout, so that path forms the probabilities explicitly.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from t2ijax.models import layers
from t2ijax.models.attention import attention
from t2ijax.models.ella import torch_dense, torch_linear_kernel_init

Dtype = Any

# flax paths (first components) of the parameters that never affect the output (Q5)
DEAD_PARAM_PATHS = (("encoder_layer",), ("attention", "value_layer"))


class SUROutput(NamedTuple):
    """The release's `(out, out_transformer_encoder, out_llm)`: adapted states, encoder output E, fc(out_att)."""
    out: jax.Array
    encoder_out: jax.Array
    fc_out: jax.Array


class TorchMultiheadAttention(nn.Module):
    """nn.MultiheadAttention self-attention (batch-first here) with q/k/v as separate Dense layers.

    Dropout on the attention probabilities as PyTorch (only when `deterministic` is False).
    """
    width: int
    heads: int
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        d, h = self.width, self.heads
        xavier_packed = nn.initializers.variance_scaling(0.5, "fan_in", "uniform")  # bound sqrt(6 / (d + 3d))

        def proj(name):
            return layers.Dense(d, ("embed", "heads"), dtype=self.dtype, kernel_init=xavier_packed, name=name)

        b, n = x.shape[:2]
        q, k, v = (proj(f"{c}_proj")(x).reshape(b, n, h, d // h) for c in "qkv")
        if deterministic or self.dropout_rate == 0.0:
            out = attention(q, k, v)
        else:
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * (d // h) ** -0.5
            probs = jax.nn.softmax(logits, axis=-1)
            probs = nn.Dropout(self.dropout_rate, deterministic=False)(probs)
            out = jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(jnp.float32)).astype(v.dtype)
        return layers.Dense(d, ("heads", "embed"), dtype=self.dtype, kernel_init=torch_linear_kernel_init(),
                            name="out_proj")(out.reshape(b, n, d))


class TransformerEncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer(d_model=width, nhead=heads, dim_feedforward=ff_dim), batch-first input.

    Post-LN (norm_first=False), ReLU:
      h   = norm1(x + Drop(SelfAttn(x)))
      out = norm2(h + Drop(linear2(Drop(relu(linear1(h))))))
    """
    width: int
    heads: int
    ff_dim: int
    dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        drop = lambda y: nn.Dropout(self.dropout_rate, deterministic=deterministic)(y)
        attn = TorchMultiheadAttention(self.width, self.heads, self.dropout_rate, dtype=self.dtype,
                                       name="self_attn")(x, deterministic)
        x = layers.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm1")(x + drop(attn))
        ff = torch_dense(self.ff_dim, self.width, ("embed", "mlp"), name="linear1", dtype=self.dtype)(x)
        ff = torch_dense(self.width, self.ff_dim, ("mlp", "embed"), name="linear2", dtype=self.dtype)(
            drop(nn.relu(ff)))
        return layers.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm2")(x + drop(ff))


class TransformerEncoder(nn.Module):
    """nn.TransformerEncoder(layer, num_layers=depth) without a final norm, on batch-first (B, S, D) input."""
    width: int
    heads: int
    ff_dim: int
    depth: int
    dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        for i in range(self.depth):
            x = TransformerEncoderLayer(self.width, self.heads, self.ff_dim, self.dropout_rate, self.layer_norm_eps,
                                        dtype=self.dtype, name=f"layers.{i}")(x, deterministic)
        return x


class SURAttention(nn.Module):
    """The release's custom single-head `Attention`: softmax(W_q E (W_k x)^T / sqrt(width)) x + x, then a
    residual ReLU MLP. `value_layer` is created (at init only, with `dead_params`) but never used."""
    width: int
    dead_params: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, query, x):
        w = self.width
        q = torch_dense(w, w, ("embed", "heads"), name="query_layer", dtype=self.dtype)(query)
        k = torch_dense(w, w, ("embed", "heads"), name="key_layer", dtype=self.dtype)(x)
        if self.dead_params and self.is_initializing():  # Q5: defined and stored, never applied
            torch_dense(w, w, ("embed", "heads"), name="value_layer", dtype=self.dtype)(x)
        v = x.astype(self.dtype)
        # one head of size width: attention's default scale 1/sqrt(head_dim) is the release's 1/sqrt(width)
        h = attention(q[:, :, None, :], k[:, :, None, :], v[:, :, None, :])[:, :, 0, :] + v
        mlp = torch_dense(w, w, ("embed", "mlp"), name="output_layer.0", dtype=self.dtype)(h)
        mlp = torch_dense(w, w, ("mlp", "embed"), name="output_layer.2", dtype=self.dtype)(nn.relu(mlp))
        return mlp + h


class SURAdapter(nn.Module):
    """SUR-adapter. `apply({"params": p}, clip_states)` -> adapted states (B, L, width).

    clip_states: (B, L, width) CLIP last hidden states (with CFG: the concatenated [uncond; cond]).
    deterministic: False = training (dropout on, as `adapter.train()`; needs rngs={"dropout": key}).
    return_all: return `SUROutput(out, encoder_out, fc_out)` instead of `out`.
    Defaults are the released architecture with the paper-intent behaviour; see the module
    docstring for `attend_across_batch`, `dropout_at_inference` and `dead_params`.
    `eta` is the release's `adapter_weight` (0.1 as trained in run.sh); it is a field, so
    `save_sur_adapter` stores it next to the weights (Q8). `dtype` is the compute dtype
    (params stay float32).
    """
    width: int = 768
    depth: int = 2
    heads: int = 8
    ff_dim: int = 2048
    dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-5
    eta: float = 0.1
    attend_across_batch: bool = False
    dropout_at_inference: bool = False
    dead_params: bool = True
    dtype: Dtype = jnp.float32

    def check_config(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"SURAdapter width {self.width} is not divisible by heads {self.heads}")
        if min(self.width, self.heads, self.ff_dim) < 1 or self.depth < 0:
            raise ValueError("SURAdapter sizes must be positive")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"SURAdapter dropout_rate must be in [0, 1), got {self.dropout_rate}")

    def _encoder(self, name):
        return TransformerEncoder(self.width, self.heads, self.ff_dim, self.depth, self.dropout_rate,
                                  self.layer_norm_eps, dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, clip_states, *, deterministic: bool = True, return_all: bool = False):
        self.check_config()
        if clip_states.ndim != 3 or clip_states.shape[-1] != self.width:
            raise ValueError(f"SURAdapter expects CLIP states (B, L, {self.width}), got shape {clip_states.shape}")
        # params do not depend on dropout: init never needs a "dropout" rng
        deterministic = (deterministic and not self.dropout_at_inference) or self.is_initializing()
        if not deterministic and self.dropout_rate > 0 and not self.has_rng("dropout"):
            why = "dropout_at_inference=True" if self.dropout_at_inference else "deterministic=False"
            raise ValueError(f"SURAdapter dropout is active ({why}): pass rngs={{'dropout': key}} to apply")
        x = clip_states.astype(self.dtype)
        if self.dead_params and self.is_initializing():  # Q5: the registered template layer, never applied
            TransformerEncoderLayer(self.width, self.heads, self.ff_dim, self.dropout_rate, self.layer_norm_eps,
                                    dtype=self.dtype, name="encoder_layer")(x, True)
        encoder = self._encoder("transformer_encoder")
        if self.attend_across_batch:  # Q1: (B, L, D) read as (seq=B, batch=L, D)
            encoder_out = jnp.swapaxes(encoder(jnp.swapaxes(x, 0, 1), deterministic), 0, 1)
        else:
            encoder_out = encoder(x, deterministic)
        out_att = SURAttention(self.width, self.dead_params, dtype=self.dtype, name="attention")(encoder_out, x)
        fc = layers.Dense(self.width, ("mlp", "embed"), dtype=self.dtype, kernel_init=nn.initializers.zeros,
                          bias_init=_uniform_bias(self.width), name="fc")
        fc_out = fc(out_att)
        out = self.eta * fc_out + (1.0 - self.eta) * x
        return SUROutput(out, encoder_out, fc_out) if return_all else out


def _uniform_bias(fan_in: int):
    bound = fan_in ** -0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# ------------------------------------------------------------------------------- param helpers

def _is_dead(path: tuple) -> bool:
    names = tuple(str(p) for p in path)
    return any(names[:len(d)] == d for d in DEAD_PARAM_PATHS)


def trainable_mask(params):
    """Pytree of bools like `params` (boxed or not): False for the dead parameters (Q5), True otherwise.

    For optimizers: e.g. `optax.masked(optax.adamw(...), trainable_mask(params))`, or mask only the weight
    decay; PyTorch's AdamW leaves the dead parameters untouched because they never get a gradient."""
    return flax.traverse_util.path_aware_map(lambda path, _: not _is_dead(path), flax.core.unfreeze(params))


def copy_template_layer(params):
    """The release's init tie: nn.TransformerEncoder deep-copies `encoder_layer` into every `layers.{i}`.

    Returns params whose encoder layers are copies of the template `encoder_layer` (needs dead_params=True)."""
    params = flax.core.unfreeze(params)
    if "encoder_layer" not in params:
        raise ValueError("copy_template_layer needs the template `encoder_layer` (SURAdapter(dead_params=True))")
    enc = dict(params["transformer_encoder"])
    for name in enc:
        enc[name] = jax.tree.map(lambda a: a, params["encoder_layer"])
    return {**params, "transformer_encoder": enc}
