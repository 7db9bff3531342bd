"""The train state pytree and its sharded construction."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from t2ijax import sharding as shd


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training. Frozen sub-models are held apart (see `method.py`).

    `rng` is raw uint32 key data; the step's key is ``fold_in(rng, step)`` so a resumed run
    draws exactly the randomness an uninterrupted one would. `ema` is None when disabled.
    """
    step: jax.Array
    params: Any
    opt_state: Any
    ema: Any
    rng: jax.Array


def create_state(method, config, tx: optax.GradientTransformation, shard_config: shd.ShardConfig):
    """(build, state shardings, abstract state with shardings). `build()` materialises the fresh state, every
    array born sharded; nothing concrete exists until it is called, so a resume, which restores into the
    abstract state, never holds a second copy of parameters, optimizer state and EMA."""
    seed_key = jax.random.PRNGKey(int(config.seed))
    init_key, loop_key = jax.random.split(seed_key)
    use_ema = float(config.get("ema_decay", 0.0)) > 0

    abstract_params, param_specs = shd.abstract_with_specs(lambda r: method.init(r, config), init_key)
    param_shardings = shard_config.tree_shardings(param_specs, abstract_params)
    repl = shard_config.replicated()
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    # Optimizer moments mirror their parameter's sharding; counters and other leaves are replicated.
    # (a masked optimizer's moments hold MaskedNode where a parameter is frozen: it stays as it is)
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    opt_shardings = optax.tree_map_params(tx, lambda v, s: v if masked(v) else s, abstract_opt, param_shardings,
                                          transform_non_params=lambda _: repl, is_leaf=masked)
    shardings = TrainState(step=repl, params=param_shardings, opt_state=opt_shardings,
                           ema=param_shardings if use_ema else None, rng=repl)

    def init(key):
        params = shd.strip_boxes(method.init(key, config))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          ema=jax.tree.map(jnp.copy, params) if use_ema else None, rng=loop_key)

    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            jax.eval_shape(init, init_key), shardings)

    def build() -> TrainState:
        with shard_config.active():
            return jax.jit(init, out_shardings=shardings)(init_key)

    return build, shardings, abstract


def with_params(state: TrainState, params, tx: optax.GradientTransformation) -> TrainState:
    """`state` started from `params` instead (``config.init_from``): fresh optimizer state, EMA = params."""
    return state.replace(params=params, opt_state=tx.init(params),
                         ema=jax.tree.map(jnp.copy, params) if state.ema is not None else None)


def param_count(tree) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree))
