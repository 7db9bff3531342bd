"""PyTorch state-dict layout <-> Flax parameter pytrees, without torch.

Flax module names in t2ijax mirror the upstream PyTorch module paths, so a Flax
leaf path maps to a state-dict key mechanically:

  (..., "kernel")     -> "....weight"  Dense (in, out) <-> Linear (out, in);
                                        Conv (H, W, I, O) <-> Conv2d (O, I, H, W)
  (..., "scale")      -> "....weight"  norms
  (..., "embedding")  -> "....weight"  nn.Embedding
  (..., "bias")       -> "....bias"
  (..., other)        -> "....other"   raw parameters, copied as they are

Loading is strict: a missing, unexpected or mis-shaped key raises an error that
names the key and both shapes. Export is the exact inverse, so a round trip is
bit-exact. Safetensors files are read with numpy (no torch, nothing pickled).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Iterable, Mapping

import flax
import jax
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

StateDict = dict[str, np.ndarray]


class WeightLoadError(ValueError):
    """A checkpoint does not fit the model it is loaded into."""


# ---------------------------------------------------------------- key mapping

def _leaf_to_torch(path: tuple[str, ...], ndim: int) -> tuple[str, Callable[[np.ndarray], np.ndarray] | None]:
    """Torch key and the transform (flax -> torch) for one flax leaf."""
    *mods, leaf = path
    prefix = ".".join(mods)
    join = (lambda n: f"{prefix}.{n}") if prefix else (lambda n: n)
    if leaf == "kernel":
        if ndim == 2:
            return join("weight"), lambda a: a.T
        if ndim >= 3:  # (*spatial, I, O) -> (O, I, *spatial)
            perm = (ndim - 1, ndim - 2) + tuple(range(ndim - 2))
            return join("weight"), lambda a: np.transpose(a, perm)
        return join("weight"), None
    if leaf in ("scale", "embedding"):
        return join("weight"), None
    return join(leaf), None


def _torch_to_leaf_transform(ndim: int, leaf: str) -> Callable[[np.ndarray], np.ndarray] | None:
    if leaf != "kernel" or ndim < 2:
        return None
    if ndim == 2:
        return lambda a: a.T
    perm = tuple(range(2, ndim)) + (1, 0)  # (O, I, *spatial) -> (*spatial, I, O)
    return lambda a: np.transpose(a, perm)


def _flat(tree) -> dict[tuple[str, ...], Any]:
    return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def torch_key_map(abstract_params) -> dict[str, tuple[str, ...]]:
    """{torch key: flax path} for a params pytree (arrays or ShapeDtypeStructs)."""
    out = {}
    for path, leaf in _flat(abstract_params).items():
        key, _ = _leaf_to_torch(tuple(str(p) for p in path), len(leaf.shape))
        if key in out:
            raise ValueError(f"two flax parameters map to torch key {key!r}: {out[key]} and {path}")
        out[key] = path
    return out


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], abstract_params, *, dtype=None,
                         ignore: Iterable[str] = (), place: Callable[[tuple, np.ndarray], Any] | None = None,
                         what: str = "checkpoint"):
    """Fill `abstract_params` (a pytree of ShapeDtypeStruct or arrays) from a torch-layout state dict.

    ignore: torch keys (or key prefixes ending in '.') that may be present and are dropped.
    place: optional function (flax path, numpy array) -> array, e.g. a `jax.device_put` onto a sharding.
    """
    ignore = tuple(ignore)
    expected = torch_key_map(abstract_params)
    flat_abs = _flat(abstract_params)
    given = set(state_dict)
    missing = sorted(set(expected) - given)
    unexpected = sorted(k for k in given - set(expected)
                        if not any(k == i or (i.endswith(".") and k.startswith(i)) for i in ignore))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): " + ", ".join(
            f"{k} (model expects {_torch_shape(expected[k], flat_abs[expected[k]])})" for k in missing[:20]))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): " + ", ".join(
            f"{k} {tuple(state_dict[k].shape)}" for k in unexpected[:20]))
    for key, path in expected.items():
        if key in state_dict:
            want = _torch_shape(path, flat_abs[path])
            got = tuple(state_dict[key].shape)
            if want != got:
                problems.append(f"shape mismatch for {key}: checkpoint has {got}, model expects {want}")
            stored = np.asarray(state_dict[key]).dtype
            floating = jax.numpy.issubdtype  # numpy's own does not know bfloat16 / float8
            if floating(flat_abs[path].dtype, np.inexact) and not floating(stored, np.inexact):
                problems.append(f"dtype of {key}: checkpoint has {stored}, the model's parameter is "
                                f"{flat_abs[path].dtype} (a floating tensor was expected)")
    if problems:
        raise WeightLoadError(f"{what} does not match the model:\n  " + "\n  ".join(problems))
    out = {}
    for key, path in expected.items():
        a = np.asarray(state_dict[key])
        t = _torch_to_leaf_transform(a.ndim, str(path[-1]))
        a = t(a) if t else a
        target_dtype = dtype or flat_abs[path].dtype
        a = np.asarray(a.astype(target_dtype, copy=False), order="C")  # keeps 0-d arrays 0-d
        out[path] = place(path, a) if place else jax.numpy.asarray(a)
    return flax.traverse_util.unflatten_dict(out)


def _torch_shape(path: tuple, leaf) -> tuple[int, ...]:
    shape = tuple(leaf.shape)
    if str(path[-1]) != "kernel" or len(shape) < 2:
        return shape
    if len(shape) == 2:
        return shape[::-1]
    return (shape[-1], shape[-2]) + shape[:-2]


def params_to_state_dict(params, *, dtype=None) -> StateDict:
    """Inverse of `state_dict_to_params`: numpy arrays in torch layout."""
    out = {}
    for path, leaf in _flat(params).items():
        a = np.asarray(jax.device_get(leaf))
        key, t = _leaf_to_torch(tuple(str(p) for p in path), a.ndim)
        a = t(a) if t else a
        if dtype is not None:
            a = a.astype(dtype)
        out[key] = np.asarray(a, order="C")
    return out


# ------------------------------------------------------ safetensors folders

def read_safetensors(path: str | os.PathLike) -> StateDict:
    """All tensors of one .safetensors file as numpy arrays (bf16 comes back as ml_dtypes.bfloat16).

    A file that does not parse (cut short, not safetensors) or holds a non-finite value is a `WeightLoadError`
    naming the file (and the tensor)."""
    out = {}
    path = os.fspath(path)
    try:
        with safe_open(path, framework="numpy") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    except Exception as e:  # safetensors' own errors: a bad header, a file shorter than its header says
        raise WeightLoadError(f"{path} is not a readable safetensors file (cut short or damaged?): "
                              f"{type(e).__name__}: {e}") from None
    for k, v in out.items():
        if v.dtype.kind == "f" or "float" in v.dtype.name:
            finite = np.isfinite(np.asarray(v, np.float32))
            if not finite.all():
                raise WeightLoadError(f"{path}: tensor {k!r} {tuple(v.shape)} holds {int((~finite).sum())} non-finite "
                                      "values (NaN or inf); the file is damaged or was saved from a diverged run")
    return out


def find_weights(folder: str | os.PathLike, stem: str, variant: str | None = None) -> list[str]:
    """Paths of `<stem>[.<variant>].safetensors` or of the shards its index names.

    Refuses pickled formats (.bin/.pt/.ckpt) with a message saying how to convert them.
    """
    from t2ijax.weights.local import require_local_folder

    folder = require_local_folder(folder)
    name = f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors"
    single = os.path.join(folder, name)
    index = single + ".index.json"
    if os.path.exists(single):
        return [single]
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(folder, s) for s in sorted(set(weight_map.values()))]
    pickled = [f for f in os.listdir(folder) if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    hint = (f" Found pickled weights {pickled}: t2ijax never loads pickles; convert them once with "
            "`safetensors.torch.save_file(torch.load(p, weights_only=True), ...)`.") if pickled else ""
    raise FileNotFoundError(f"no {name} (or {name}.index.json) in {folder}.{hint}")


def read_weights(folder: str | os.PathLike, stem: str, variant: str | None = None) -> StateDict:
    sd: StateDict = {}
    for p in find_weights(folder, stem, variant):
        sd.update(read_safetensors(p))
    return sd


def write_weights(state_dict: Mapping[str, np.ndarray], folder: str | os.PathLike, stem: str,
                  max_shard_bytes: int | None = None) -> list[str]:
    """Write `<stem>.safetensors`, or shards plus `<stem>.safetensors.index.json` above `max_shard_bytes`."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    keys = sorted(state_dict)
    total = sum(state_dict[k].nbytes for k in keys)
    if max_shard_bytes is None or total <= max_shard_bytes:
        path = os.path.join(folder, f"{stem}.safetensors")
        save_file({k: state_dict[k] for k in keys}, path, metadata={"format": "pt"})
        return [path]
    shards, cur, size = [], [], 0
    for k in keys:
        if cur and size + state_dict[k].nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(k)
        size += state_dict[k].nbytes
    shards.append(cur)
    paths, weight_map = [], {}
    for i, ks in enumerate(shards):
        fname = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: state_dict[k] for k in ks}, os.path.join(folder, fname), metadata={"format": "pt"})
        paths.append(os.path.join(folder, fname))
        weight_map.update({k: fname for k in ks})
    with open(os.path.join(folder, f"{stem}.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return paths


def read_config(folder: str | os.PathLike, name: str = "config.json") -> dict:
    from t2ijax.weights.local import require_local_folder

    path = os.path.join(require_local_folder(folder), name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {name} in {folder}")
    with open(path) as f:
        return json.load(f)


def write_config(config: Mapping[str, Any], folder: str | os.PathLike, name: str = "config.json") -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(os.fspath(folder), name), "w") as f:
        json.dump(dict(config), f, indent=2, sort_keys=True)


def sharded_placer(shardings) -> Callable[[tuple, np.ndarray], Any]:
    """A `place` function putting each array straight onto its sharding (a pytree like the params)."""
    flat = _flat(shardings)
    return lambda path, a: jax.device_put(a, flat[path])


def split_in_proj(sd: StateDict, attn: str = "attn") -> StateDict:
    """Split every packed `*.<attn>.in_proj_{weight,bias}` (PyTorch nn.MultiheadAttention: rows [q; k; v]) into
    `*.<attn>.{q,k,v}_proj.{weight,bias}`."""
    packed = re.compile(rf"^(.*\.{re.escape(attn)})\.in_proj_(weight|bias)$")
    out = {}
    for key, value in sd.items():
        m = packed.match(key)
        if not m:
            out[key] = value
            continue
        prefix, kind = m.groups()
        rows = value.shape[0] if value.ndim else 0
        if rows % 3 or (kind == "weight" and (value.ndim != 2 or value.shape[1] * 3 != rows)) or \
                (kind == "bias" and value.ndim != 1):
            raise WeightLoadError(f"{key} has shape {tuple(value.shape)}; a packed attention projection must be "
                                  f"(3*d, d) for the weight or (3*d,) for the bias")
        for name, part in zip(("q_proj", "k_proj", "v_proj"), np.split(value, 3, axis=0)):
            out[f"{prefix}.{name}.{kind}"] = part
    return out


def pack_in_proj(sd: StateDict, attn: str = "attn") -> StateDict:
    """Inverse of `split_in_proj`: rows [q; k; v] into `*.<attn>.in_proj_{weight,bias}`."""
    split = re.compile(rf"^(.*\.{re.escape(attn)})\.(q|k|v)_proj\.(weight|bias)$")
    out = {}
    for key, value in sd.items():
        m = split.match(key)
        if not m:
            out[key] = value
            continue
        prefix, which, kind = m.groups()
        if which == "q":
            parts = [sd[f"{prefix}.{n}_proj.{kind}"] for n in "qkv"]
            out[f"{prefix}.in_proj_{kind}"] = np.ascontiguousarray(np.concatenate(parts, axis=0))
    return out


PICKLED_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
CONVERT_HINT = ("t2ijax never unpickles checkpoints; convert it once in PyTorch with "
                "`safetensors.torch.save_file(torch.load(p, weights_only=True), out)` "
                "(out ending in .safetensors) and load that file")


def resolve_safetensors(path, what: str, *, preferred: str | None = None, skip_suffix: str | None = None) -> str:
    """The one .safetensors file a user's `path` names: the file itself, or the only one (or `preferred`) in a
    folder (files ending in `skip_suffix` left out). Pickled checkpoints are refused with `CONVERT_HINT`."""
    path = os.fspath(path)
    if path.lower().endswith(PICKLED_SUFFIXES):
        raise ValueError(f"{path!r} is a pickled PyTorch checkpoint: {CONVERT_HINT}")
    if os.path.isdir(path):
        entries = os.listdir(path)
        candidates = sorted(f for f in entries if f.endswith(".safetensors")
                            and not (skip_suffix and f.endswith(skip_suffix)))
        if preferred in candidates:
            return os.path.join(path, preferred)
        if len(candidates) == 1:
            return os.path.join(path, candidates[0])
        pickled = sorted(f for f in entries if f.lower().endswith(PICKLED_SUFFIXES))
        hint = f" Found pickled {pickled}: {CONVERT_HINT}." if pickled and not candidates else ""
        named = f" (released name: {preferred})" if preferred else ""
        raise FileNotFoundError(f"{path} has {len(candidates)} {what} .safetensors files {candidates}; pass the "
                                f"file path{named}.{hint}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {what} checkpoint at {path!r} (t2ijax loads local files only)")
    if not path.endswith(".safetensors"):
        raise ValueError(f"{path!r} is not a .safetensors file; {CONVERT_HINT}")
    return path
