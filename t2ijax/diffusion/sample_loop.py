"""The whole sampling loop as one compiled program, with static per-step expert routing.

``sample`` runs a sampler's plan with ``lax.scan``. A static ``expert_table`` (one expert
index per model evaluation) splits the loop into contiguous segments; each segment is its
own scan closing over that expert's parameters (and, optionally, its own denoise_fn), so
there is no dynamic switch and each step costs exactly one expert evaluation (eDiff-I's
sigma-interval experts, ERNIE-ViLG 2.0's MoDE). The experts' parameters may be a list of
pytrees or one stacked pytree (leading axis = expert, as `t2ijax.models.experts` trains them):
a segment then slices its expert inside the compiled loop, by a static index. The sampler state (Heun's predictor,
DPM-Solver's previous x0) flows across segment boundaries unchanged.

Denoiser contract: ``denoise_fn(params, x, t, cond) -> model_output`` where ``x`` is the
sampler's model input (already scaled by ``plan.input_scales``), ``t`` is a float32 (B,)
array holding the discrete timestep (DDIM, and DPM-Solver, Euler, Heun with a
``DiscreteSchedule``) or sigma (DPM-Solver, Euler, Heun with an ``EDMSchedule``), ``cond`` is any
pytree with leading batch axis, and the output is a ``sampler.prediction_type``
prediction shaped like ``x``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t2ijax.diffusion.guidance import cfg_denoise
from t2ijax.diffusion.samplers import cached_plan


def expert_table_from_boundaries(values, boundaries) -> tuple[int, ...]:
    """Map per-evaluation timesteps (or sigmas) to expert indices by fixed boundaries.

    With ascending ``boundaries`` (b_1 < ... < b_k), expert j serves values in
    [b_j, b_{j+1}) (b_0 = -inf, b_{k+1} = +inf), so there are k+1 experts, expert 0 the
    lowest noise. ERNIE-ViLG 2.0 MoDE: ``boundaries=(100, 200, ..., 900)`` over
    ``plan.model_times`` gives floor(t / 100). eDiff-I Config-D: ``boundaries=(0.0757,
    9.61)`` over ``plan.eval_sigmas`` gives low / middle / high-noise experts.
    """
    boundaries = np.asarray(boundaries, np.float64)
    if boundaries.ndim != 1 or np.any(np.diff(boundaries) <= 0):
        raise ValueError(f"boundaries must be a strictly increasing 1-D sequence, got {boundaries}")
    values = np.asarray(values, np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D (one per model evaluation), got shape {values.shape}")
    return tuple(int(j) for j in np.searchsorted(boundaries, values, side="right"))


def _segments(table: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """Contiguous runs of equal expert index as (expert, start, stop)."""
    runs, start = [], 0
    for i in range(1, len(table) + 1):
        if i == len(table) or table[i] != table[start]:
            runs.append((table[start], start, i))
            start = i
    return runs


def _as_experts(denoise_fn, params, expert_table, num_evals):
    """Validate inputs; return (tuple of denoise fns, params list or stacked pytree, number of experts,
    table)."""
    if expert_table is None:
        return (denoise_fn,), [params], 1, (0,) * num_evals
    table = tuple(int(j) for j in expert_table)
    if len(table) != num_evals:
        raise ValueError(
            f"expert_table has {len(table)} entries but the sampler makes {num_evals} model evaluations "
            "(one entry per evaluation; Heun makes 2 * num_steps - 1)"
        )
    if isinstance(params, (list, tuple)):
        num_experts = len(params)
        params = list(params)
    else:  # one stacked pytree: every leaf's leading axis is the expert
        sizes = {int(x.shape[0]) if getattr(x, "ndim", 0) else None for x in jax.tree.leaves(params)}
        if len(sizes) != 1 or None in sizes:
            raise ValueError("with an expert_table, params must be a list of per-expert pytrees or one pytree "
                             f"stacked on a leading expert axis; its leaves' leading sizes are {sorted(sizes, key=str)}")
        num_experts = sizes.pop()
    if min(table) < 0 or max(table) >= num_experts:
        raise ValueError(f"expert_table indices must lie in [0, {num_experts}), got {sorted(set(table))}")
    fns = tuple(denoise_fn) if isinstance(denoise_fn, (list, tuple)) else (denoise_fn,) * num_experts
    if len(fns) != num_experts:
        raise ValueError(f"got {len(fns)} denoise functions for {num_experts} experts")
    return fns, params, num_experts, table


def _expert_params(params, expert: int):
    if isinstance(params, list):
        return params[expert]
    return jax.tree.map(lambda p: p[expert], params)


def sample(
    denoise_fn: Callable | Sequence[Callable],
    params,
    sampler,
    x_T,
    cond,
    *,
    num_steps: int,
    uncond=None,
    guidance_scale=1.0,
    guidance_rescale: float = 0.0,
    expert_table: Sequence[int] | None = None,
    key=None,
):
    """Run ``sampler`` for ``num_steps`` steps from standard-normal ``x_T``; return x_0.

    Args:
      denoise_fn: model ``fn(params, x, t, cond)`` (module docstring), or one per expert.
      params: the model's params pytree; with ``expert_table``, a list of per-expert pytrees or one
        pytree stacked on a leading expert axis.
      sampler: a ``DDIM`` / ``Euler`` / ``Heun`` / ``DPMSolverPlusPlus`` config.
      x_T: (B, ...) standard-normal noise; it is multiplied by ``plan.init_noise_sigma``.
      cond: conditioning pytree (leading axis B).
      num_steps: number of sampler steps (static).
      uncond: optional unconditional pytree; if given, classifier-free guidance is applied
        with ``guidance_scale`` (traced, no recompile) and ``guidance_rescale`` (static).
      expert_table: static per-evaluation expert index (see ``expert_table_from_boundaries``).
      key: PRNG key, required by stochastic samplers (DDIM with eta > 0).

    The loop is jit-compiled as a whole; denoise_fn, sampler, num_steps, guidance_rescale
    and expert_table are static (pass the same function object to reuse the compilation).
    """
    plan = cached_plan(sampler, num_steps)
    fns, params_list, _, table = _as_experts(denoise_fn, params, expert_table, plan.num_evals)
    if plan.stochastic and key is None:
        raise ValueError("this sampler is stochastic (eta > 0): pass a PRNG `key`")
    return _sample_jit(fns, sampler, num_steps, table, guidance_rescale, params_list, x_T, cond, uncond, guidance_scale, key)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _sample_jit(fns, sampler, num_steps, table, guidance_rescale, params_list, x_T, cond, uncond, guidance_scale, key):
    plan = cached_plan(sampler, num_steps)
    model_times = jnp.asarray(plan.model_times, jnp.float32)
    input_scales = jnp.asarray(plan.input_scales, jnp.float32)
    batch = x_T.shape[0]

    def evaluate(fn, params, x_in, t):
        if uncond is None:
            return fn(params, x_in, t, cond)
        return cfg_denoise(fn, params, x_in, t, cond, uncond, guidance_scale, guidance_rescale=guidance_rescale)

    x = x_T * jnp.asarray(plan.init_noise_sigma, x_T.dtype)
    state = plan.init_state(x)
    for expert, start, stop in _segments(table):
        fn, params = fns[expert], _expert_params(params_list, expert)

        def body(carry, i, fn=fn, params=params):
            x, state = carry
            t = jnp.full((batch,), model_times[i], jnp.float32)
            out = evaluate(fn, params, x * input_scales[i].astype(x.dtype), t)
            noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype) if plan.stochastic else None
            state, x_next = plan.step(state, out, i, x, noise)
            return (x_next.astype(x.dtype), state), None

        (x, state), _ = jax.lax.scan(body, (x, state), jnp.arange(start, stop))
    return x
