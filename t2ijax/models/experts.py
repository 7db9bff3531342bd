"""Stacked experts: N copies of a Linen module whose parameters carry a leading ``expert`` axis.

    stacked = stack_experts(unet, num_experts=3)
    params = stacked.init(rng, (x, t, context), {"class_labels": labels})["params"]  # leaves (3, ...)
    out = stacked.apply({"params": params}, (x, t, context), {})   # x (3, b, ...): expert e sees x[e]

`nn.vmap` with ``metadata_params={nn.PARTITION_NAME: "expert"}`` prepends the logical axis "expert" to
every parameter's names, so a mesh ``expert`` axis (``logical_axis_rules["expert"] = "expert"``) shards
the experts across devices. The stacked tree has exactly the module's parameter names, so
``expert_params(params, e)`` is a plain parameter tree of the module (export it, load it in diffusers).

nn.vmap ignores keyword arguments, so the stacked module takes ``(args, kwargs)`` positionally; every
array in both is mapped over the leading expert axis (None entries are fine).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

EXPERT_AXIS = "expert"


def module_fields(module: nn.Module) -> dict:
    """The dataclass fields a Linen module was built with (no parent / name)."""
    return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
            if f.init and f.name not in ("parent", "name")}


def stack_experts(module: nn.Module, num_experts: int) -> nn.Module:
    """`num_experts` independent copies of `module`, parameters stacked on a leading ``expert`` axis."""
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    base = type(module)

    class Positional(base):
        def __call__(self, args, kwargs):  # noqa: D102 - nn.vmap maps positional pytrees only
            return super().__call__(*args, **kwargs)

    Positional.__name__ = Positional.__qualname__ = f"Stacked{base.__name__}"
    vmapped = nn.vmap(Positional, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=0,
                      out_axes=0, axis_size=num_experts, metadata_params={nn.PARTITION_NAME: EXPERT_AXIS})
    return vmapped(**module_fields(module))


def num_stacked(params) -> int:
    """The leading (expert) size shared by every leaf of a stacked tree."""
    sizes = {int(x.shape[0]) for x in jax.tree.leaves(params)}
    if len(sizes) != 1:
        raise ValueError(f"not a stacked expert tree: leading sizes {sorted(sizes)}")
    return sizes.pop()


def expert_params(params, expert):
    """Expert `expert`'s plain parameter tree (a static or traced index)."""
    return jax.tree.map(lambda p: p[expert], params)


def stack_params(trees) -> dict:
    """Per-expert parameter trees (same structure) -> one stacked tree."""
    trees = list(trees)
    if not trees:
        raise ValueError("stack_params needs at least one tree")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def replace_expert(params, expert: int, new):
    """`params` with expert `expert` replaced by the plain tree `new` (swap or re-train one expert)."""
    return jax.tree.map(lambda p, n: p.at[expert].set(jnp.asarray(n, p.dtype)), params, new)
