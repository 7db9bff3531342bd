"""CLIP features of a dataset split, cached once: what ECLIPSE's prior (and a Kandinsky-style decoder) train on.

`build_clip_feature_cache(clip_path, data_config, split, out_path)` runs an exported CLIP (a Hugging Face
`CLIPModel` folder, e.g. ``t2ijax convert`` of a ``method="clip"`` run: ``<export>/clip``) once over a split
of the dataset of `data_config` and writes a generic feature cache (`t2ijax.data.feature_cache.write_arrays`).
One record per example of the split, in row order; its example id is the row index (the ``"record"`` of the
data-pipeline batches), so `FeatureCache.lookup(batch["record"])` finds it and
`CachedFeatureLoader` (``config.data.name = "feature_cache"``, ``data.path`` = `out_path`) trains from it
alone. Each record holds (L = ``data_config.max_length``, D = the text tower's width, E = the projection):

  input_ids          (L,)    int32    the caption (``data_config.caption``) tokenized by the export's own
                                      tokenizer, padded / truncated to L
  attention_mask     (L,)    uint8    1 for tokens, 0 for padding
  text_token_states  (L, D)  float32  the text tower's last hidden state (after final_layer_norm): the
                                      ``encoder_hidden_states`` of ECLIPSE's / Karlo's / Kandinsky's prior
                                      (Hugging Face's ``last_hidden_state``); padded positions are kept as the
                                      causal tower computes them, mask them with ``attention_mask``
  text_embeds        (E,)    float32  the projected pooled (end-of-text) text embedding, unnormalised
                                      (``CLIPModel.get_text_features``)
  image_embeds       (E,)    float32  the projected image embedding, unnormalised (``get_image_features``) of
                                      the image through `clip_score.clip_pixels` (CLIP mean / std at the
                                      vision tower's size)

`<out_path>.json` records the CLIP folder, split, caption kind, sizes, a SHA-256 of the captions, the
fields' shapes and dtypes, and ``zero_image_embed``: the image embedding of an all-zero pixel input
(`zero_image_embed`), Kandinsky's negative image embedding (``get_zero_embed``).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FIELDS = ("input_ids", "attention_mask", "text_token_states", "text_embeds", "image_embeds")


def zero_image_embed(clip_module, clip_params, image_size: int) -> np.ndarray:
    """(E,) float32: the projected image embedding of all-zero pixel values (1, S, S, 3).

    As Kandinsky 2.2's ``get_zero_embed``: zeros are fed as the vision tower's input as they are (the
    normalised pixel space, i.e. the CLIP-mean-colour image), not a black image run through the normaliser.
    """
    pixels = jnp.zeros((1, int(image_size), int(image_size), 3), jnp.float32)
    out = clip_module.apply({"params": clip_params}, pixels, method="get_image_features")
    return np.asarray(out, np.float32)[0]


def _encode_fn(module):
    @jax.jit
    def encode(params, input_ids, attention_mask, pixels):
        states, text_embeds = module.apply({"params": params}, input_ids, attention_mask, method="encode")
        image_embeds = module.apply({"params": params}, pixels, method="get_image_features")
        return states, text_embeds, image_embeds

    return encode


def build_clip_feature_cache(clip_path, data_config, split: str, out_path, *, batch_size: int = 64,
                             caption: str | None = None) -> dict[str, Any]:
    """Run the exported CLIP at `clip_path` once over `split` of `data_config`'s dataset and write the cache
    of the module docstring to `out_path` (+ ``.json`` metadata, ``.ids.npy`` example ids). Fixed-shape
    batches (one compilation; the last is padded and the padding not written). Returns the metadata."""
    from t2ijax.data.feature_cache import captions_sha256, write_arrays
    from t2ijax.data.tokenizer import load_tokenizer, tokenize
    from t2ijax.eval.clip_score import clip_pixels
    from t2ijax.eval.retrieval import SPLITS, split_pairs
    from t2ijax.methods.clip import export_folder
    from t2ijax.weights import load_clip

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    folder = export_folder(os.fspath(clip_path))
    module, params = load_clip(folder)
    max_length = int(data_config.max_length)
    positions = module.text_config.max_position_embeddings
    if max_length > positions:
        raise ValueError(f"data max_length={max_length} exceeds the CLIP text tower's max_position_embeddings "
                         f"{positions}")
    tokenizer = load_tokenizer(folder, max_length)
    if tokenizer.eos_token_id != module.text_config.eos_token_id:
        raise ValueError(f"the tokenizer in {folder} has EOS id {tokenizer.eos_token_id}, the CLIP text config "
                         f"{module.text_config.eos_token_id}: not a matching export")
    kind = caption or data_config.caption
    images, captions = split_pairs(data_config, split, kind)
    image_size = module.vision_config.image_size
    encode = _encode_fn(module)

    def records():
        for start in range(0, len(captions), batch_size):
            texts = captions[start:start + batch_size]
            n = len(texts)
            tok = tokenize(tokenizer, texts + [""] * (batch_size - n), max_length)
            pixels = clip_pixels(images[start:start + batch_size], image_size)
            pixels = np.concatenate([pixels, np.zeros((batch_size - n, *pixels.shape[1:]), np.float32)])
            states, text_embeds, image_embeds = (np.asarray(a, np.float32) for a in
                                                 encode(params, tok["input_ids"], tok["attention_mask"], pixels))
            for j in range(n):
                yield start + j, {"input_ids": tok["input_ids"][j].astype(np.int32),
                                  "attention_mask": tok["attention_mask"][j].astype(np.uint8),
                                  "text_token_states": states[j], "text_embeds": text_embeds[j],
                                  "image_embeds": image_embeds[j]}

    meta = {"kind": "clip_features", "clip_path": os.path.abspath(folder), "split": SPLITS.get(split, split),
            "caption": kind, "max_length": max_length, "hidden_size": module.text_config.hidden_size,
            "projection_dim": module.projection_dim, "image_size": image_size, "batch_size": batch_size,
            "dataset": {k: data_config.get(k) for k in ("name", "resolution", "seed", "num_train", "num_val",
                                                        "num_test", "folder") if k in data_config},
            "captions_sha256": captions_sha256(captions),
            "zero_image_embed": zero_image_embed(module, params, image_size).tolist()}
    return write_arrays(records(), out_path, metadata=meta)
