"""CLIP score with pluggable embedding functions (the torchmetrics definition).

score = 100 * max(cos(image_embedding, text_embedding), 0), averaged over the
image-caption pairs. `image_embed` maps (N, H, W, 3) images and `text_embed`
maps a list of N strings to (N, D) embeddings (e.g. the Flax CLIP towers with
their projections).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def clip_score_from_embeddings(image_embeddings, text_embeddings) -> np.ndarray:
    """Per-pair scores 100 * max(cos, 0), shape (N,)."""
    a = np.asarray(image_embeddings, np.float64)
    b = np.asarray(text_embeddings, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need matching (N, D) embeddings, got {a.shape} and {b.shape}")
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return 100.0 * np.maximum(np.sum(a * b, axis=-1), 0.0)


def clip_score(images, captions: Sequence[str], image_embed: Callable, text_embed: Callable,
               batch_size: int = 64) -> float:
    """Mean CLIP score over image-caption pairs."""
    images = np.asarray(images)
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    scores = []
    for i in range(0, len(images), batch_size):
        scores.append(clip_score_from_embeddings(image_embed(images[i:i + batch_size]),
                                                 text_embed(list(captions[i:i + batch_size]))))
    return float(np.mean(np.concatenate(scores)))


# OpenAI CLIP image normalisation (CLIPImageProcessor defaults).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_pixels(images, image_size: int) -> np.ndarray:
    """CLIPImageProcessor's transform in numpy: uint8 or [-1, 1] images -> bicubic resize of the shorter side
    to `image_size`, centre crop, scale to [0, 1], normalise with CLIP's mean/std; (N, S, S, 3) float32 NHWC."""
    from PIL import Image

    from t2ijax.data.preprocess import centre_crop, resize_shorter_side
    from t2ijax.eval.grid import to_uint8

    out = []
    for image in images:
        img = centre_crop(resize_shorter_side(to_uint8(image), image_size, resample=Image.BICUBIC), image_size)
        out.append((img.astype(np.float32) / 255.0 - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32))
    return np.stack(out)


def clip_embedders(clip_path: str, tokenizer=None, max_length: int = 77):
    """(image_embed, text_embed) functions for `clip_score` / `fid` from a local Hugging Face CLIPModel folder,
    run by the Flax CLIP of `t2ijax.weights.load_clip` (projected, unnormalised features).

    tokenizer: a tokenizer object, a name/path for `t2ijax.data.tokenizer.load_tokenizer`, or None for the
    tokenizer saved in `clip_path`.
    """
    import jax

    from t2ijax.data.tokenizer import CaptionTokenizer, load_tokenizer
    from t2ijax.weights import load_clip

    module, params = load_clip(clip_path)
    if tokenizer is None or isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer or clip_path, max_length)
    encode = CaptionTokenizer(tokenizer, max_length)
    image_size = module.vision_config.image_size
    image_fn = jax.jit(lambda p, x: module.apply({"params": p}, x, method="get_image_features"))
    text_fn = jax.jit(lambda p, ids, mask: module.apply({"params": p}, ids, mask, method="get_text_features"))

    def image_embed(images):
        return np.asarray(image_fn(params, clip_pixels(images, image_size)))

    def text_embed(texts):
        enc = [encode(t) for t in texts]
        ids = np.stack([e["input_ids"] for e in enc])
        mask = np.stack([e["attention_mask"] for e in enc])
        return np.asarray(text_fn(params, ids, mask))

    return image_embed, text_embed
