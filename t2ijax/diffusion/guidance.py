"""Classifier-free guidance (Ho & Salimans 2022) over any conditioning pytree.

The unconditional and conditional branches run as ONE batched model call, unconditional
half first, as diffusers pipelines do (``torch.cat([negative, positive])``). The optional
guidance rescale is Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps
are Flawed", Sec. 3.4), identical to diffusers' ``rescale_noise_cfg``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def tree_concat(first, second):
    """Concatenate two conditioning pytrees of identical structure along axis 0.

    Every leaf pair must have the same shape (pad variable-length text features to a
    common length before calling).
    """
    first_leaves, first_def = jax.tree.flatten(first)
    second_leaves, second_def = jax.tree.flatten(second)
    if first_def != second_def:
        raise ValueError(f"cond and uncond pytrees differ in structure: {second_def} vs {first_def}")
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(first)[0]]
    for path, a, b in zip(paths, first_leaves, second_leaves):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(
                f"cond and uncond leaf {path or '<root>'} have different shapes {jnp.shape(b)} vs {jnp.shape(a)}; "
                "pad both to a common shape"
            )
        if jnp.ndim(a) == 0:
            raise ValueError(f"conditioning leaf {path or '<root>'} is a scalar; leaves need a batch axis")
    return jax.tree.unflatten(first_def, [jnp.concatenate([a, b], axis=0) for a, b in zip(first_leaves, second_leaves)])


def rescale_guidance(guided, cond_output, guidance_rescale: float):
    """Lin et al. rescale: match the per-example std of ``guided`` to ``cond_output``, then mix."""
    axes = tuple(range(1, guided.ndim))
    std_cond = jnp.std(cond_output, axis=axes, keepdims=True)
    std_guided = jnp.std(guided, axis=axes, keepdims=True)
    rescaled = guided * (std_cond / std_guided)
    return guidance_rescale * rescaled + (1.0 - guidance_rescale) * guided


def cfg_denoise(denoise_fn, params, x, t, cond, uncond, scale, *, guidance_rescale: float = 0.0):
    """Guided model output ``uncond + scale * (cond - uncond)`` from one batched call.

    Args:
      denoise_fn: ``denoise_fn(params, x, t, cond) -> model_output`` (see ``loop.sample``).
      x: (B, ...) model input; t: (B,) time argument.
      cond, uncond: conditioning pytrees of identical structure, leaves with leading axis B.
      scale: guidance scale (may be traced); 1.0 returns the conditional prediction.
      guidance_rescale: static float in [0, 1]; 0 disables the Lin et al. rescale.
    """
    if not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}")
    batch = x.shape[0]
    both = tree_concat(uncond, cond)
    out = denoise_fn(params, jnp.concatenate([x, x], axis=0), jnp.concatenate([t, t], axis=0), both)
    out_uncond, out_cond = out[:batch], out[batch:]
    guided = out_uncond + jnp.asarray(scale, out.dtype) * (out_cond - out_uncond)
    if guidance_rescale > 0:
        guided = rescale_guidance(guided, out_cond, guidance_rescale)
    return guided
