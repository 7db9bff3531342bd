"""A small synthetic CLIP feature cache in the layout ECLIPSE trains on (shared by tests and the 8-device check)."""

import numpy as np

from t2ijax.data.feature_cache import write_arrays


def write_feature_cache(path, n=64, e=16, length=8, seed=0):
    """`n` records: random text features, image embeddings a fixed linear map of the pooled text plus noise."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((e, e)) / np.sqrt(e)

    def records():
        for i in range(n):
            text = rng.standard_normal(e).astype(np.float32)
            used = int(rng.integers(2, length + 1))
            mask = (np.arange(length) < used).astype(np.uint8)
            yield i, {"text_token_states": rng.standard_normal((length, e)).astype(np.float32),
                      "attention_mask": mask, "text_embeds": text,
                      "image_embeds": (text @ mix + 0.1 * rng.standard_normal(e)).astype(np.float32)}

    write_arrays(records(), path)
    return str(path)
