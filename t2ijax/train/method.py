"""The method interface: what a training method supplies to the one train loop.

A method is a small object built from the config by a factory registered in
`t2ijax.methods` (``config.method = "txt2img"``). The loop owns everything else
(sharding, optimizer, EMA, checkpoints, metrics), so adding a method never
copies the loop.

Contract (all functions pure and jittable unless noted):

  init(rng, config) -> params
      Trainable parameters. Return the Linen ``variables["params"]`` tree as
      produced by ``module.init`` (leaves boxed in ``nn.LogicallyPartitioned``
      carry the logical axis names); the loop evaluates it abstractly with
      ``jax.eval_shape`` to read the logical specs, then materialises it under
      ``jax.jit(out_shardings=...)`` so parameters are born sharded.
  frozen(config[, shard_config][, training]) -> pytree
      Frozen sub-models (pretrained encoders, a frozen U-Net ...), called once
      eagerly, may be ``{}``. A method whose ``frozen`` takes ``shard_config``
      gets the mesh and puts each array straight onto its sharding (a frozen 7B
      LLM is never whole on one device); otherwise boxed leaves give their
      sharding, arrays already sharded on the mesh stay, plain arrays are
      replicated. One that takes ``training`` gets False for sampling, eval and
      export, and may skip what only its loss reads (SUR-adapter's LLM). Frozen values are passed to `loss` as a separate, non-donated
      argument behind ``jax.lax.stop_gradient``; they are never differentiated,
      never in the optimizer state and never checkpointed per step.
  loss(params, frozen, batch, rng) -> (scalar loss, dict of scalar metrics)
      One micro-batch; `batch` is the dict the data loader yields, as global
      arrays sharded over the batch axes.
  flops_per_example: float | None
      Training FLOPs per example (forward + backward, ~3x forward). None makes
      the loop use XLA's cost analysis of the compiled step.

Optional (called only when defined; `t2ijax.methods.common.MethodHooks` declares them for methods to
inherit, and docs/adding_a_method.md walks through a method):

  sample(params, frozen, prompts, rng=None, *, seeds=None, **kwargs) -> uint8 images (N, H, W, 3)
      Used by ``t2ijax sample`` / ``eval`` through `t2ijax.train.sampling.make_sampler`, which passes
      `seeds` (one per prompt: image i's initial noise from seed i alone, `sampling.initial_noise`);
      `rng` (one key for the batch) is the older form. Not called by the loop.
  wrap_loader(loader, split) -> loader
      Called by the loop on its data loader (e.g. ELLA adds features read from a
      feature cache); the result must keep ``get_state`` / ``set_state``.
  prepare(config)
      Called by ``t2ijax prepare`` after the dataset is built (e.g. ELLA's feature cache).
  trainable_item: str
      Name of the checkpoint item holding `params` (e.g. "connector" for ELLA,
      "adapter" for SUR); defaults to "params".
  make_optimizer(optim_config, total_steps) -> (optax transformation, lr schedule)
      Replaces `t2ijax.train.optim.make_optimizer` (e.g. expert ensembles: per-expert
      clipping, updates masked to the experts a step trains).
  adapt_init_params(saved_params, abstract_params) -> params
      With ``config.init_from`` a workdir: reshapes its saved trainable params into this
      run's (e.g. one parent copied into N stacked experts).
  loss(..., step=...)
      A loss that takes `step` gets the optimizer step (e.g. the expert a sequential
      step trains).
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

import jax

PyTree = Any


@runtime_checkable
class Method(Protocol):
    flops_per_example: float | None

    def init(self, rng: jax.Array, config) -> PyTree: ...

    def frozen(self, config) -> PyTree: ...

    def loss(self, params: PyTree, frozen: PyTree, batch: Mapping[str, jax.Array],
             rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]: ...


def check_method(method: Any, name: str) -> None:
    """Raise a TypeError naming what a method object lacks, before anything is compiled."""
    missing = [attr for attr in ("init", "frozen", "loss") if not callable(getattr(method, attr, None))]
    if not hasattr(method, "flops_per_example"):
        missing.append("flops_per_example")
    if missing:
        raise TypeError(f"method {name!r} ({type(method).__name__}) lacks {missing}; see t2ijax.train.method")


def accepts(fn, name: str) -> bool:
    """Whether `fn` takes a parameter called `name` (the optional parts of the contract above)."""
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def frozen_models(method: Any, config, shard_config, *, training: bool = True):
    """``method.frozen``, given the shard config and `training` when it takes them (see the contract above):
    ``training=False`` (sampling, eval, export) lets a method skip what only its loss needs (e.g. SUR's LLM)."""
    kwargs = {"shard_config": shard_config} if accepts(method.frozen, "shard_config") else {}
    if accepts(method.frozen, "training"):
        kwargs["training"] = training
    return method.frozen(config, **kwargs)


def trainable_item(method: Any) -> str:
    return getattr(method, "trainable_item", "params")
