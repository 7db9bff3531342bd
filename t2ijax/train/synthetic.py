"""A synthetic image-caption loader with the data pipeline's interface (``data.name = "synthetic"``).

Deterministic in (seed, split, batch index) and independent of the process count: the global batch n is drawn
whole and each shard takes its rows, so 2 processes x batch 4 see what 1 process x batch 8 sees. Useful for tests
and benchmarks without a dataset on disk. Each example is a flat-coloured square on a grey background whose colour
and position are given by its first two tokens, so a text-conditioned model has something to learn.

Batch: "image" (B,H,W,3) float32 in [-1,1], "input_ids" (B,L) int32,
"attention_mask" (B,L) int32, "example_id" (B,) int32 (the global example index).
"""

from __future__ import annotations

import numpy as np

from t2ijax.data.procedural import ProceduralLoader

_SPLITS = {"train": 0, "validation": 1, "val": 1, "test": 2}
_PALETTE = np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1], [1, 1, 1],
                     [-1, -1, -1]], np.float32)


class SyntheticLoader(ProceduralLoader):
    """Infinite iterator of batches with ``get_state()`` / ``set_state(state)``."""

    def __init__(self, *, resolution: int, max_length: int, vocab_size: int, batch_size: int, seed: int,
                 split: str = "train", shard_index: int = 0, shard_count: int = 1):
        if split not in _SPLITS:
            raise ValueError(f"split={split!r}; choose one of {sorted(_SPLITS)}")
        if vocab_size < 3 or max_length < 2 or resolution < 4:
            raise ValueError(f"synthetic data needs vocab_size>=3, max_length>=2, resolution>=4; got "
                             f"{vocab_size}, {max_length}, {resolution}")
        super().__init__(batch_size=batch_size, seed=seed, shard_index=shard_index, shard_count=shard_count)
        self.resolution, self.max_length, self.vocab_size = resolution, max_length, vocab_size
        self.split = _SPLITS[split]

    def batch(self, n: int) -> dict[str, np.ndarray]:
        b, rows = self.batch_size, slice(self.shard_index * self.batch_size, (self.shard_index + 1) * self.batch_size)
        rng = np.random.default_rng([self.seed, self.split, n, 0])  # the global batch n (all shards' rows)
        lengths = rng.integers(2, self.max_length + 1, size=b * self.shard_count)[rows]
        ids = rng.integers(1, self.vocab_size, size=(b * self.shard_count, self.max_length))[rows]
        mask = (np.arange(self.max_length)[None] < lengths[:, None]).astype(np.int32)
        ids = (ids * mask).astype(np.int32)  # 0 pads
        r = self.resolution
        colour = _PALETTE[ids[:, 0] % len(_PALETTE)]
        side = max(r // 2, 1)
        corner = (ids[:, 1] % 4)
        y0 = ((corner // 2) * (r - side))[:, None, None]
        x0 = ((corner % 2) * (r - side))[:, None, None]
        yy, xx = np.arange(r)[None, :, None], np.arange(r)[None, None, :]
        inside = (yy >= y0) & (yy < y0 + side) & (xx >= x0) & (xx < x0 + side)  # (B, r, r)
        images = np.where(inside[..., None], colour[:, None, None, :], np.float32(0.0)).astype(np.float32)
        return {"image": images, "input_ids": ids, "attention_mask": mask,
                "example_id": self.example_ids(n)}


def make_loader(data_config, *, split: str, batch_size: int, seed: int, shard_index: int = 0,
                shard_count: int = 1, num_epochs: int | None = None, shuffle: bool = True) -> SyntheticLoader:
    """Same signature as `t2ijax.data.pipeline.make_loader`; the data is infinite and unordered, so
    `num_epochs` and `shuffle` have no effect."""
    return SyntheticLoader(resolution=int(data_config.resolution), max_length=int(data_config.max_length),
                           vocab_size=int(data_config.get("vocab_size", 64)), batch_size=batch_size, seed=seed,
                           split=split, shard_index=shard_index, shard_count=shard_count)
