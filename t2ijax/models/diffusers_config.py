"""diffusers `config.json` handling shared by the U-Net and the VAE.

A Linen module field must be hashable, so the original config dict is kept as a
`FrozenConfig` (sorted key/value tuples, lists as tuples) and thawed back to the
same JSON on export.
"""

from __future__ import annotations

from typing import Any, Mapping

FrozenConfig = tuple  # tuple[tuple[str, frozen value], ...]


def _freeze(v):
    if isinstance(v, Mapping):
        return ("__dict__", freeze_config(v))
    if isinstance(v, (list, tuple)):
        return ("__list__", tuple(_freeze(x) for x in v))
    return v


def _thaw(v):
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "__dict__":
        return thaw_config(v[1])
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "__list__":
        return [_thaw(x) for x in v[1]]
    return v


def freeze_config(cfg: Mapping[str, Any]) -> FrozenConfig:
    """A hashable copy of a JSON-like config dict (inverse: `thaw_config`)."""
    return tuple(sorted((str(k), _freeze(v)) for k, v in cfg.items()))


def thaw_config(frozen: FrozenConfig) -> dict[str, Any]:
    return {k: _thaw(v) for k, v in frozen}


def merge_with_defaults(cfg: Mapping[str, Any], defaults: Mapping[str, Any], what: str) -> dict[str, Any]:
    """`defaults` updated with `cfg`; keys starting with '_' (bookkeeping) are dropped, unknown keys raise."""
    unknown = sorted(k for k in cfg if not k.startswith("_") and k not in defaults)
    if unknown:
        raise ValueError(f"{what} config has keys t2ijax does not know: {unknown}")
    out = dict(defaults)
    out.update({k: v for k, v in cfg.items() if not k.startswith("_")})
    return out


def check_supported(cfg: Mapping[str, Any], allowed: Mapping[str, Any], what: str) -> None:
    """Raise one error naming every config value outside `allowed` ({key: predicate or tuple of allowed values})."""
    bad = []
    for key, rule in allowed.items():
        value = cfg.get(key)
        ok = rule(value) if callable(rule) else value in rule
        if not ok:
            expected = "" if callable(rule) else f" (supported: {list(rule)})"
            bad.append(f"{key}={value!r}{expected}")
    if bad:
        raise ValueError(f"{what} config values not supported by t2ijax: " + "; ".join(bad))


def per_block(value, n: int, key: str) -> tuple:
    """An int (or bool/None) repeated for `n` blocks, or a list checked to have length `n`."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"config {key}={list(value)} must have one entry per block ({n})")
        return tuple(value)
    return (value,) * n
