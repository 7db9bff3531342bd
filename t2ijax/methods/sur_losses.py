"""SUR-adapter's distillation losses and its fixed random LLM projection (methods.md 3.4-3.5).

The release trains the adapter with two knowledge-distillation terms (the diffusion MSE sends it no
gradient there, Q3):

  KD(x, y; T) = T^2 * KL( softmax(y/T) || softmax(x/T) )       per token over the channel axis,
              = F.kl_div(log_softmax(x/T), softmax(y/T), reduction="batchmean") * T**2
  llm_loss    = KD(LLMResize(v_llm) as (B, 1, D), encoder_out (B, L, D))   broadcast over the L tokens
  prompt_loss = KD(CLIP(complex prompt) (B, L, D), adapter_out (B, L, D))
  loss        = mse + 1e-5 * llm_loss + 1e-5 * prompt_loss                  (run.sh weights)

Argument order in the release: the FIRST argument x (the teacher-side tensor: the projected LLM vector or
the complex-prompt CLIP states) is the log-probability "input", the SECOND y (the adapter's own encoder
output / adapted states) is the KL "target" distribution, and it is not detached (Q6): the adapter is
trained only through the target argument. `kd_loss(student, target, ...)` names the arguments by their
role in the KL (student = x = input, target = y); `detach_target=False` reproduces the release, the
default `True` is standard KD towards a fixed target. `sur_distillation_losses` computes both terms
as released, or (reproduce_release=False) as standard KD with the adapter as the student and the
LLM / complex-prompt states as detached teachers.

LLMResize (Q4): a Linear(llm_size -> width), randomly initialised, frozen, never saved and unseeded in
the release. `llm_projection(seed, llm_size, width)` draws it from nn.Linear's default distribution
from an explicit seed and returns a params pytree; save it with `save_sur_adapter(..., llm_projection=)`
(written as `<stem>.llm_resize.safetensors` in LLMResize's state-dict layout `fc.weight` / `fc.bias`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

RELEASE_LOSS_WEIGHTS = {"llm": 1e-5, "prompt": 1e-5}  # run.sh: --llm_weight=1e-05 --prompt_weight=1e-05
LLM_SIZES = {"7B": 4096, "13B": 5120, "30B": 6656}     # LLaMA-1 hidden sizes; run.sh uses 13B, layer 39


def kd_loss(student, target, temperature: float = 1.0, detach_target: bool = True):
    """T^2 * KL(softmax(target/T) || softmax(student/T)) over the last (channel) axis, summed over all
    tokens and channels and divided by student.shape[0] ("batchmean", as F.kl_div).

    student, target: broadcastable arrays, e.g. (B, 1, D) against (B, L, D). Computed in float32.
    detach_target: stop the gradient into `target` (standard KD). False reproduces the release (Q6),
    where the gradient also flows through the target distribution.
    Equals torch's `F.kl_div(log_softmax(student/T), softmax(target/T), reduction="batchmean") * T**2`.
    """
    t = float(temperature)
    if detach_target:
        target = jax.lax.stop_gradient(target)
    log_q = jax.nn.log_softmax(jnp.asarray(student, jnp.float32) / t, axis=-1)
    log_p = jax.nn.log_softmax(jnp.asarray(target, jnp.float32) / t, axis=-1)
    kl = jnp.exp(log_p) * (log_p - log_q)
    return t * t * jnp.sum(kl) / jnp.shape(student)[0]


def llm_projection(key, llm_size: int, width: int = 768) -> dict:
    """The fixed LLMResize projection as a params pytree {"kernel": (llm_size, width), "bias": (width,)}.

    key: a jax PRNG key or an int seed. Both leaves ~ U(-1/sqrt(llm_size), 1/sqrt(llm_size)), nn.Linear's
    default init distribution (not its exact numbers: torch's RNG differs). The layout is Flax Dense's,
    so `flax.linen.Dense(width).apply({"params": proj}, v)` works too.
    """
    if isinstance(key, int):
        key = jax.random.key(key)
    k_w, k_b = jax.random.split(key)
    bound = llm_size ** -0.5
    return {"kernel": jax.random.uniform(k_w, (llm_size, width), jnp.float32, -bound, bound),
            "bias": jax.random.uniform(k_b, (width,), jnp.float32, -bound, bound)}


def apply_llm_projection(proj: dict, llm_vectors):
    """LLMResize(v): (..., llm_size) -> (..., width). The projection is frozen: no gradient reaches it."""
    proj = jax.lax.stop_gradient(proj)
    return jnp.asarray(llm_vectors, proj["kernel"].dtype) @ proj["kernel"] + proj["bias"]


def sur_distillation_losses(encoder_out, adapter_out, llm_target, complex_prompt_states, *,
                            temperature: float = 1.0, reproduce_release: bool = True) -> dict:
    """{"llm": llm_loss, "prompt": prompt_loss} as the release computes them.

    encoder_out: (B, L, D) the adapter's transformer-encoder output (`SUROutput.encoder_out`).
    adapter_out: (B, L, D) the adapted states (`SUROutput.out`).
    llm_target: (B, D) or (B, 1, D) the projected LLM vector, `apply_llm_projection(proj, v_llm)`.
    complex_prompt_states: (B, L, D) frozen CLIP states of the complex (keyword) prompt.

    reproduce_release=True (default): llm = kd_loss(llm_target[:, None], encoder_out, T, detach_target=False),
      prompt = kd_loss(complex_prompt_states, adapter_out, T, detach_target=False): the adapter's tensors sit in
      the KL-target slot and receive the gradient through it (Q6). The LLM vector is broadcast over the L tokens.
    reproduce_release=False: standard KD, adapter as the student against fixed teachers:
      llm = kd_loss(encoder_out, llm_target[:, None], T), prompt = kd_loss(adapter_out, complex_prompt_states, T).
    The total of the release is `mse + 1e-5 * llm + 1e-5 * prompt` (RELEASE_LOSS_WEIGHTS).
    """
    if llm_target.ndim == 2:
        llm_target = llm_target[:, None, :]
    if llm_target.ndim != 3 or llm_target.shape[1] != 1:
        raise ValueError(f"llm_target must be (B, D) or (B, 1, D), got shape {llm_target.shape}")
    if reproduce_release:
        return {"llm": kd_loss(llm_target, encoder_out, temperature, detach_target=False),
                "prompt": kd_loss(complex_prompt_states, adapter_out, temperature, detach_target=False)}
    return {"llm": kd_loss(encoder_out, llm_target, temperature),
            "prompt": kd_loss(adapter_out, complex_prompt_states, temperature)}
