"""Device mesh, logical-axis rules and sharded placement.

Model code names logical axes only (vocabulary in `t2ijax.models.layers`); the
config maps them to mesh axes:

  config.mesh = {"data": -1, "fsdp": 1, "tensor": 1, "expert": 1}   # -1 = fill
  config.logical_axis_rules = {"embed": "fsdp", "mlp": "tensor", "batch": ("data", "fsdp"), ...}

`ShardConfig.from_config(config)` builds the mesh and resolves the rules once;
`init_sharded` creates parameters born sharded; `global_batch` turns the
per-process numpy batch into global arrays; `shard(x, logical_spec)` constrains
an activation and is a no-op without an active `ShardConfig`.

Mesh axes are built with explicitly given axis types. The default is
``AxisType.Auto`` (the compiler propagates shardings from the parameter and
batch shardings, so the Linen models run unchanged); ``config.mesh_axis_types =
"explicit"`` selects JAX's explicit-sharding mode for models written for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor", "expert")
Rules = tuple[tuple[str, Any], ...]


def maybe_initialize_distributed() -> bool:
    """`jax.distributed.initialize()` when this is one process of a multi-process job; no-op otherwise.

    Multi-process means: a TPU pod slice (more than one worker hostname), SLURM with more
    than one task, or an explicit ``JAX_COORDINATOR_ADDRESS``. Must run before any
    `jax.devices()` call. Returns whether it initialised.
    """
    if jax.distributed.is_initialized():
        return False
    env = os.environ
    tpu_hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    slurm_tasks = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")) or 1)
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kwargs = {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"]}
        if "JAX_NUM_PROCESSES" in env:
            kwargs.update(num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(env["JAX_PROCESS_ID"]))
        jax.distributed.initialize(**kwargs)
    elif len(tpu_hosts) > 1 or slurm_tasks > 1:
        jax.distributed.initialize()
    else:
        return False
    log.info("jax.distributed initialised: process %d of %d", jax.process_index(), jax.process_count())
    return True


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Resolve one ``-1`` axis and check that the product equals `num_devices`."""
    sizes = {str(k): int(v) for k, v in dict(mesh_config).items()}
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"config.mesh has unknown axes {unknown}; allowed: {list(MESH_AXES)}")
    fill = [k for k, v in sizes.items() if v == -1]
    bad = [k for k, v in sizes.items() if v == 0 or v < -1]
    if bad or len(fill) > 1:
        raise ValueError(f"config.mesh={sizes}: sizes must be positive, with at most one -1 (fill); "
                         f"offending axes: {bad or fill}")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if fill:
        if num_devices % fixed:
            raise ValueError(f"config.mesh={sizes}: the fixed axes multiply to {fixed}, which does not "
                             f"divide the {num_devices} available devices")
        sizes[fill[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(f"config.mesh={sizes} needs {math.prod(sizes.values())} devices, "
                         f"but {num_devices} are available (use -1 on one axis to fill)")
    return sizes


def make_mesh(mesh_config: Mapping[str, int], *, axis_types: str = "auto",
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    devices = list(devices) if devices is not None else jax.devices()
    sizes = mesh_shape(mesh_config, len(devices))
    names = tuple(a for a in MESH_AXES if a in sizes)
    kinds = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}
    if axis_types not in kinds:
        raise ValueError(f"mesh_axis_types={axis_types!r}; choose one of {sorted(kinds)}")
    return jax.make_mesh(tuple(sizes[a] for a in names), names, axis_types=(kinds[axis_types],) * len(names),
                         devices=devices)


def rules_from_config(rules: Mapping[str, Any]) -> Rules:
    """Config dict {logical: mesh axis | tuple of mesh axes | None} -> Flax rules tuple."""
    out = []
    for logical, target in dict(rules).items():
        if isinstance(target, (list, tuple)):
            target = tuple(str(t) for t in target) or None
        out.append((str(logical), target))
    return tuple(out)


def _axis_size(mesh: jax.sharding.Mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def fit_spec(spec: P, shape: Sequence[int], mesh: jax.sharding.Mesh) -> P:
    """Drop mesh axes from dimensions they do not divide (that dimension is replicated instead)."""
    entries = list(spec) + [None] * (len(shape) - len(spec))
    return P(*[axes if dim % _axis_size(mesh, axes) == 0 else None for axes, dim in zip(entries, shape)])


@dataclasses.dataclass(frozen=True)
class ShardConfig:
    """A mesh plus resolved logical-axis rules."""
    mesh: jax.sharding.Mesh
    rules: Rules

    @classmethod
    def from_config(cls, config, devices: Sequence[jax.Device] | None = None) -> "ShardConfig":
        mesh = make_mesh(config.mesh, axis_types=config.get("mesh_axis_types", "auto"), devices=devices)
        rules = rules_from_config(config.logical_axis_rules)
        for logical, target in rules:
            for axis in (target,) if isinstance(target, str) else (target or ()):
                if axis not in mesh.shape:
                    raise ValueError(f"logical_axis_rules[{logical!r}] -> {axis!r} is not a mesh axis "
                                     f"{tuple(mesh.shape)}")
        return cls(mesh, rules)

    @property
    def batch_axes(self):
        return dict(self.rules).get("batch")

    @property
    def batch_size_divisor(self) -> int:
        return _axis_size(self.mesh, self.batch_axes)

    def logical_to_mesh(self, logical_spec) -> P:
        return nn.logical_to_mesh_axes(tuple(logical_spec), self.rules)

    def sharding(self, logical_spec, shape: Sequence[int] | None = None) -> NamedSharding:
        """NamedSharding for one array; with `shape`, non-dividing mesh axes are dropped."""
        spec = self.logical_to_mesh(logical_spec) if logical_spec is not None else P()
        if shape is not None:
            spec = fit_spec(spec, shape, self.mesh)
        return NamedSharding(self.mesh, spec)

    def tree_shardings(self, logical_specs, abstract) -> Any:
        """Shardings for a pytree from its logical specs (``nn.get_partition_spec``) and shapes."""
        def one(spec, leaf):
            return self.sharding(tuple(spec) if spec is not None else (), leaf.shape)
        return jax.tree.map(one, logical_specs, abstract, is_leaf=lambda x: isinstance(x, P) or x is None)

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, P(self.batch_axes))

    @contextlib.contextmanager
    def active(self):
        """Make `shard` and Linen's logical constraints use this mesh and these rules."""
        global _ACTIVE
        previous, _ACTIVE = _ACTIVE, self
        try:
            with nn.logical_axis_rules(self.rules), jax.set_mesh(self.mesh):
                yield self
        finally:
            _ACTIVE = previous


_ACTIVE: ShardConfig | None = None


def active_shard_config() -> ShardConfig | None:
    return _ACTIVE


def shard(x: jax.Array, logical_spec: Sequence[str | None]) -> jax.Array:
    """Constrain an activation to the sharding its logical axes map to; no-op without an active mesh."""
    if _ACTIVE is None:
        return x
    if len(logical_spec) != x.ndim:
        raise ValueError(f"shard: logical spec {tuple(logical_spec)} has {len(logical_spec)} names for an "
                         f"array of rank {x.ndim}")
    return jax.lax.with_sharding_constraint(x, _ACTIVE.sharding(logical_spec, x.shape))


def strip_boxes(tree):
    """Replace Linen metadata boxes (``nn.LogicallyPartitioned``) by their values, without applying
    the sharding constraints that ``nn.meta.unbox`` adds under an active mesh."""
    return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.meta.AxisMetadata) else x,
                        tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def abstract_with_specs(init_fn: Callable, *args) -> tuple[Any, Any]:
    """(unboxed ShapeDtypeStruct tree, logical PartitionSpec tree) of ``init_fn(*args)`` without allocating."""
    boxed = jax.eval_shape(init_fn, *args)
    return strip_boxes(boxed), nn.get_partition_spec(boxed)


def init_sharded(init_fn: Callable, rng: jax.Array, shard_config: ShardConfig):
    """Materialise ``init_fn(rng)`` (may return boxed Linen params) born sharded.

    Returns (params, shardings, abstract) where `abstract` holds ShapeDtypeStructs
    carrying the shardings (the restore targets of a checkpoint).
    """
    abstract, specs = abstract_with_specs(init_fn, rng)
    shardings = shard_config.tree_shardings(specs, abstract)
    params = jax.jit(lambda r: strip_boxes(init_fn(r)), out_shardings=shardings)(rng)
    return params, shardings, with_shardings(abstract, shardings)


def with_shardings(abstract, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def _key_shapes(tree) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_flatten_with_path(strip_boxes(tree))[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(getattr(x, "shape", ())) for path, x in leaves}


def check_tree_like(expected, actual, what: str) -> None:
    """Raise a ValueError naming every missing, unexpected or mis-shaped key of `actual` (arrays, abstract
    arrays or checkpoint metadata) against `expected`."""
    want, have = _key_shapes(expected), _key_shapes(actual)
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    shapes = [f"{k}: expected {want[k]}, got {have[k]}" for k in sorted(set(want) & set(have)) if want[k] != have[k]]
    if missing or unexpected or shapes:
        def few(keys):
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
        problems = [f"missing keys: {few(missing)}" if missing else "", f"unexpected keys: {few(unexpected)}" if unexpected
                    else "", f"mis-shaped: {few(shapes)}" if shapes else ""]
        raise ValueError(f"{what} does not match the trainable params: " + "; ".join(p for p in problems if p))


def place(tree, shard_config: ShardConfig):
    """Put an eager pytree onto the mesh: boxed leaves by their logical axes, arrays already sharded on this
    mesh where they are (weights loaded straight onto their shardings), other leaves replicated."""
    specs = nn.get_partition_spec(tree)
    values = strip_boxes(tree)
    shardings = shard_config.tree_shardings(specs, values)

    def keep_placed(value, sharding):
        placed = getattr(value, "sharding", None)
        if isinstance(placed, NamedSharding) and placed.mesh == shard_config.mesh and not isinstance(
                value, nn.meta.AxisMetadata):
            return placed
        return sharding

    shardings = jax.tree.map(keep_placed, values, shardings)
    return jax.device_put(values, shardings), shardings


def global_batch(local_batch: Mapping[str, np.ndarray], shard_config: ShardConfig) -> dict[str, jax.Array]:
    """Per-process numpy batch -> global arrays sharded over the batch mesh axes."""
    sharding = shard_config.batch_sharding()
    if jax.process_count() == 1:  # same result, one transfer call
        return jax.device_put({k: np.asarray(v) for k, v in local_batch.items()}, sharding)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def process_allgather_json(value) -> list:
    """Every process's JSON-able `value`, in process order (one process: ``[value]``). A collective: every
    process must call it at the same point."""
    if jax.process_count() == 1:
        return [value]
    import json

    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value, sort_keys=True).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(bytes(row[:n])) for row, n in zip(rows, sizes)]


def to_host(tree):
    """numpy copy of a tree of arrays; replicated arrays spanning several processes are read from the
    local replica (``jax.device_get`` refuses arrays that are not fully addressable)."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.sharding.is_fully_replicated:
                raise ValueError(f"to_host: array of shape {x.shape} is sharded across processes; gather it first")
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)
    return jax.tree.map(one, tree)


def per_device_bytes(tree) -> int:
    """Bytes held by the first addressable device for a tree of jax.Arrays."""
    device = jax.local_devices()[0]
    total = 0
    for leaf in jax.tree.leaves(tree):
        for s in leaf.addressable_shards:
            if s.device == device:
                total += s.data.nbytes
    return total
