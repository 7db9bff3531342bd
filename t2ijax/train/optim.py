"""Optimizer from config: AdamW + learning-rate schedule + global-norm clipping + accumulation.

  config.optim = {
    name: "adamw", lr, b1, b2, eps, weight_decay,
    schedule: "constant" | "warmup_cosine" | "linear" | "cosine_restarts", warmup_steps, decay_steps (0 = total_steps),
    end_lr_factor,            # final lr / peak lr for cosine and linear (eta_min / lr for cosine_restarts)
    restart_steps, restart_mult,  # cosine_restarts: PyTorch's CosineAnnealingWarmRestarts T_0 (0 = decay_steps)
                                  # and T_mult (an integer >= 1)
    grad_clip_norm,           # 0 disables clipping
    grad_accum_steps,         # > 1 wraps the optimizer in optax.MultiSteps
  }

Schedules count optimizer updates (not micro-batches).

Expert ensembles (`t2ijax.methods.experts`) stack experts on a leading parameter axis; for them
`clip_by_expert_norm` clips each expert by its own gradient norm (as if trained alone) and
`expert_masked` leaves the experts a step does not train untouched (parameters and optimizer moments).
"""

from __future__ import annotations

import optax

SCHEDULES = ("constant", "warmup_cosine", "linear", "cosine_restarts")


def cosine_restarts_schedule(lr: float, period: int, mult: int = 1, end: float = 0.0) -> optax.Schedule:
    """PyTorch's CosineAnnealingWarmRestarts(T_0=period, T_mult=mult, eta_min=end), stepped once per update."""
    import jax.numpy as jnp

    if period < 1 or mult < 1 or int(mult) != mult:
        raise ValueError(f"cosine_restarts needs restart_steps >= 1 and an integer restart_mult >= 1, got "
                         f"{period}, {mult}")

    def schedule(count):
        t = jnp.asarray(count, jnp.float32)
        if mult == 1:
            t_cur, t_i = jnp.mod(t, period), float(period)
        else:  # cycle n spans period * mult^n updates
            n = jnp.floor(jnp.log1p(t * (mult - 1) / period) / jnp.log(float(mult)))
            start = period * (mult ** n - 1) / (mult - 1)
            t_cur, t_i = t - start, period * mult ** n
        return end + (lr - end) * 0.5 * (1 + jnp.cos(jnp.pi * t_cur / t_i))

    return schedule


def make_schedule(optim, total_updates: int) -> optax.Schedule:
    lr, warmup = float(optim.lr), int(optim.get("warmup_steps", 0))
    decay = int(optim.get("decay_steps", 0)) or max(total_updates, 1)
    end = lr * float(optim.get("end_lr_factor", 0.0))
    name = optim.get("schedule", "constant")
    if name == "constant":
        if warmup:
            return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)],
                                        [warmup])
        return optax.constant_schedule(lr)
    if name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(decay, warmup + 1), end)
    if name == "linear":
        decay_part = optax.linear_schedule(lr, end, max(decay - warmup, 1))
        if warmup:
            return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay_part], [warmup])
        return decay_part
    if name == "cosine_restarts":
        restarts = cosine_restarts_schedule(lr, int(optim.get("restart_steps", 0)) or decay,
                                            int(optim.get("restart_mult", 1)), end)
        if warmup:
            return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), restarts], [warmup])
        return restarts
    raise ValueError(f"config.optim.schedule={name!r}; choose one of {SCHEDULES}")


def make_optimizer(optim, total_steps: int, *, clip=None) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, schedule). `total_steps` counts micro-batches (train steps). `clip(max_norm)` builds the
    clipping transformation (default `optax.clip_by_global_norm`)."""
    accum = int(optim.get("grad_accum_steps", 1))
    if accum < 1:
        raise ValueError(f"config.optim.grad_accum_steps={accum} must be >= 1")
    if optim.get("name", "adamw") != "adamw":
        raise ValueError(f"config.optim.name={optim.name!r}; only 'adamw' is implemented")
    schedule = make_schedule(optim, max(total_steps // accum, 1))
    parts = []
    if float(optim.get("grad_clip_norm", 0.0)) > 0:
        parts.append((clip or optax.clip_by_global_norm)(float(optim.grad_clip_norm)))
    parts.append(optax.adamw(schedule, b1=float(optim.get("b1", 0.9)), b2=float(optim.get("b2", 0.999)),
                             eps=float(optim.get("eps", 1e-8)), weight_decay=float(optim.get("weight_decay", 0.0))))
    tx = optax.chain(*parts)
    if accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accum).gradient_transformation()
    return tx, schedule


# ------------------------------------------------------------------------------------------- expert ensembles

def _flags(tree, is_stacked):
    """A tree like `tree` holding, per leaf, whether it is stacked on a leading expert axis."""
    import jax

    return jax.tree_util.tree_map_with_path(lambda path, _: bool(is_stacked(path)), tree)


def clip_by_expert_norm(max_norm: float, is_stacked) -> optax.GradientTransformation:
    """Clip each expert's gradient by its own global norm; the unstacked (shared) leaves by theirs.

    `is_stacked(path)` says which leaves carry the leading expert axis. Training experts stacked in one step
    then clips exactly as training each alone would (one global norm over all experts would couple them).
    """
    import jax
    import jax.numpy as jnp

    def update(updates, state, params=None):
        del params
        flags = _flags(updates, is_stacked)
        leaves, flag_leaves = jax.tree.leaves(updates), jax.tree.leaves(flags)
        stacked = [g for g, f in zip(leaves, flag_leaves) if f]
        shared = [g for g, f in zip(leaves, flag_leaves) if not f]
        per_expert = (jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32)).reshape(g.shape[0], -1), axis=1)
                                   for g in stacked)) if stacked else None)
        shared_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in shared)) if shared else None

        def scale(norm):  # optax.clip_by_global_norm's factor
            return jnp.where(norm < max_norm, 1.0, max_norm / jnp.maximum(norm, 1e-30))

        def clip(g, f):
            if f:
                s = scale(per_expert).reshape((-1,) + (1,) * (g.ndim - 1))
            else:
                s = scale(shared_norm)
            return (g * s).astype(g.dtype)

        return jax.tree.map(clip, updates, flags), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def expert_masked(tx: optax.GradientTransformation, active, is_stacked) -> optax.GradientTransformation:
    """`tx` applied only to the experts that `active(count)` marks ((num_experts,) bool, count = this
    transformation's update count): the others get zero updates and keep their optimizer moments, so a
    step that trains expert e (sequential mode, or re-training one expert) changes nothing else. Unstacked
    leaves (a shared text encoder) are updated every step."""
    import jax
    import jax.numpy as jnp

    def init(params):
        return (jnp.zeros((), jnp.int32), tx.init(params))

    def update(updates, state, params=None):
        count, inner = state
        mask = jnp.asarray(active(count), bool)
        new_updates, new_inner = tx.update(updates, inner, params)
        flags = _flags(updates, is_stacked)

        def keep(new, old, stacked):
            if not stacked or not hasattr(new, "ndim") or new.ndim == 0:
                return new
            return jnp.where(mask.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

        markers = optax.tree_map_params(tx, lambda _, f: f, new_inner, flags, transform_non_params=lambda _: False)
        new_inner = jax.tree.map(keep, new_inner, inner, markers)
        new_updates = jax.tree.map(lambda u, f: keep(u, jnp.zeros_like(u), f), new_updates, flags)
        return new_updates, (count + 1, new_inner)

    return optax.GradientTransformation(init, update)
