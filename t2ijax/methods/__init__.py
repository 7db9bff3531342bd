"""Training methods, registered by name for ``config.method``.

Each method lives in ``t2ijax/methods/<name>.py`` and exposes
``make_method(config) -> Method`` (interface in `t2ijax.train.method`).
`register_method` adds one from anywhere (e.g. a test or a research script).
"""

import importlib
from typing import Callable

_FACTORIES: dict[str, Callable] = {}


def register_method(name: str, factory: Callable) -> None:
    """Make ``config.method = name`` build its method with ``factory(config)``."""
    _FACTORIES[name] = factory


def get_method(name: str, config):
    """Build the method called `name`: a registered factory, else ``t2ijax.methods.<name>.make_method``."""
    if name not in _FACTORIES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise ValueError(f"unknown method {name!r}: no registered factory and no module "
                             f"t2ijax/methods/{name}.py; registered: {sorted(_FACTORIES)}") from None
        if not hasattr(module, "make_method"):
            raise ValueError(f"t2ijax/methods/{name}.py defines no make_method(config)")
        _FACTORIES[name] = module.make_method
    return _FACTORIES[name](config)
