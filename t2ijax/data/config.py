"""The data section of a config, importable without TFDS or Grain (configs read their defaults here)."""

from __future__ import annotations

import ml_collections

CAPTION_KINDS = ("dense", "short", "narrative")
# Longest Shapes captions in shapes_word tokens, [BOS] and [EOS] included (measured over 1,000 scenes:
# dense 76, short 17, narrative 96), rounded up. Shorter max_length truncates some captions.
SHAPES_WORD_LENGTH = {"dense": 80, "short": 20, "narrative": 100}


def default_data_config(**overrides) -> ml_collections.ConfigDict:
    """The data section of an experiment config; keyword overrides must name existing fields."""
    cfg = ml_collections.ConfigDict({
        "name": "shapes",             # "shapes" | "image_text_folder"
        "data_dir": "~/t2ijax_datasets",  # where the TFDS ArrayRecord files are written
        "folder": "",                 # image_text_folder: folder of images + captions.jsonl / metadata.jsonl
        "resolution": 32,
        "caption": "dense",           # "dense" | "short" | "narrative"
        "max_length": 128,
        "tokenizer": "shapes_word",   # or a local tokenizer folder
        "num_train": 10000,           # Shapes split sizes
        "num_val": 500,
        "num_test": 500,
        "seed": 0,                    # Shapes scene seed
        "random_flip": False,         # Shapes: also swaps "left"/"right" tokens so captions stay true
        "with_regions": True,         # boxes, masks, key-token and object-token masks (image folders: see key_words)
        # ERNIE-ViLG 2.0 knowledge (t2ijax.data.knowledge); nothing is downloaded at run time.
        # Which provider marks the key words of "key_token_mask": "annotations" (Shapes' annotated key spans;
        # image folders have none, so there with_regions gives region fields only with another provider),
        # "heuristic" (a light English part-of-speech heuristic, no dependencies) or "spacy" (spaCy and
        # en_core_web_sm, installed by the user beforehand).
        "key_words": "annotations",
        # Caption completion: append the objects (Shapes: "<colour> <shape>" from the scene graph; image
        # folders: the metadata "objects" or the detector's labels) that the caption does not mention.
        "complete_captions": False,
        # Shapes, "short" captions only: each object is left out of the caption with this probability (at
        # least one always stays; seeded per epoch like flips); its masks and boxes stay, its
        # object_token_mask row is zero (unless caption completion appends it). Noisy web captions stand-in.
        "caption_object_dropout": 0.0,
        # Image folders: "package.module:function" mapping a uint8 (H, W, 3) image to [{"label", "box":
        # [x0, y0, x1, y1] normalised}], run on rows whose metadata has no "objects" field ("" = none).
        "detector": "",
        # More captions per example, each tokenized on its own: {name: "kind" or "kind:tokenizer:max_length"}
        # (tokenizer and max_length default to the main ones) -> batch fields <name>_input_ids and
        # <name>_attention_mask, e.g. {"narrative": "narrative", "llm": "dense:/models/llama:256"}.
        "extra_captions": {},
        "worker_count": 0,            # Grain worker processes (0 = in the calling process)
        "read_threads": 16,           # Grain threads reading + transforming rows (0 = synchronous)
        "prefetch_buffer_size": 500,  # rows read ahead by those threads
    })
    for key, value in overrides.items():
        if key not in cfg:
            raise KeyError(f"unknown data config field {key!r}; fields: {sorted(cfg.keys())}")
        cfg[key] = value
    return cfg
