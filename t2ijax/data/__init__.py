"""Datasets and input pipelines.

Public API (imported lazily so that `import t2ijax.data` stays cheap):
  default_data_config(**overrides) -> ConfigDict        the data section of a config
  make_loader(data_config, *, split, batch_size, seed, ...) -> Loader   Grain batches, get_state/set_state
  prepare(data_config) -> TFDS builder                  build the ArrayRecord dataset once
  load_tokenizer(name_or_path)                          "shapes_word" or a local tokenizer folder
  shapes                                                the procedural Shapes dataset (scenes, captions, renders)
"""

import importlib

_API = {
    "default_data_config": "config", "make_loader": "pipeline", "Loader": "pipeline",
    "prepare": "tfds_builders", "load_tokenizer": "tokenizer", "shapes_word_tokenizer": "tokenizer",
}


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    if name == "shapes":
        return importlib.import_module(f"{__name__}.shapes")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API) + ["shapes"])
