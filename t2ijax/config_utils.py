"""Config helpers for the ml_collections files in ``configs/``.

A config file defines ``get_config(arg=None) -> ConfigDict``; the string after ``:`` in
``--config=configs/x.py:tiny`` is its `arg` (parsed by `parse_arg`). The CLI loads configs
through absl's ``config_flags.DEFINE_config_file(lock_config=True)``; `load_config` is the
same thing as a function (tests, notebooks): a locked config, dotted overrides, and unknown
keys rejected naming the key.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from typing import Any, Iterable

import ml_collections


def import_sibling(config_file: str, name: str):
    """Import ``<dir of config_file>/<name>.py`` (e.g. configs/common.py) under a private module name."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    key = f"_t2ijax_configs_{abs(hash(path))}_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or not os.path.exists(path):
        raise FileNotFoundError(f"config helper module {path} not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """big_vision-style argument: ``"tiny"`` (sets variant) or ``"variant=tiny,runlocal=True"``.

    Unknown names raise; values are converted to the type of their default.
    """
    out = dict(defaults)
    for i, part in enumerate(p for p in (arg or "").split(",") if p):
        if "=" not in part:
            if i or "variant" not in defaults:
                raise ValueError(f"config argument {part!r} must be name=value (known: {sorted(defaults)})")
            out["variant"] = part
            continue
        name, value = part.split("=", 1)
        if name not in defaults:
            raise ValueError(f"unknown config argument {name!r}; known: {sorted(defaults)}")
        out[name] = _convert(value, defaults[name], name)
    return ml_collections.ConfigDict(out)


def _convert(text: str, like: Any, name: str):
    if isinstance(like, bool):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"{name}={text!r} is not a boolean")
    if isinstance(like, (int, float)) and not isinstance(like, bool):
        return type(like)(text)
    if isinstance(like, str) or like is None:
        return text
    return ast.literal_eval(text)


def load_module(path: str):
    spec = importlib.util.spec_from_file_location(f"_t2ijax_config_{abs(hash(os.path.abspath(path)))}", path)
    if spec is None or not os.path.exists(path):
        raise FileNotFoundError(f"config file {path} not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """``load_config("configs/x.py:tiny", ["optim.lr=3e-4"])`` -> locked ConfigDict."""
    path, _, arg = spec.partition(":")
    module = load_module(path)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} defines no get_config(arg)")
    config = module.get_config(arg or None)
    config.lock()
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must be key.path=value")
        key, value = item.split("=", 1)
        set_by_path(config, key.removeprefix("config."), value)
    return config


def set_by_path(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
    """Set ``a.b.c`` from its command-line text; an unknown key raises KeyError naming it."""
    *parents, leaf = dotted.split(".")
    node = config
    for i, part in enumerate(parents):
        if part not in node:
            raise KeyError(f"unknown config key {'.'.join(parents[:i + 1])!r} (in override {dotted!r}); "
                           f"known here: {sorted(node.keys())}")
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise KeyError(f"unknown config key {dotted!r}; known at this level: {known}")
    current = node[leaf]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, str) and not isinstance(value, str):
        value = text
    if isinstance(current, ml_collections.ConfigDict) and isinstance(value, dict):
        for k, v in value.items():
            set_by_path(node, f"{leaf}.{k}", repr(v))
        return
    try:
        node[leaf] = value
    except TypeError as e:
        raise TypeError(f"config key {dotted!r}: cannot set {text!r} ({e})") from None


def config_to_dict(config) -> dict:
    """A JSON-serialisable plain dict of a (possibly locked / FieldReference-holding) ConfigDict."""
    def clean(v):
        if isinstance(v, ml_collections.ConfigDict):
            return {k: clean(v[k]) for k in v.keys()}
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        return str(v)
    return clean(config)
