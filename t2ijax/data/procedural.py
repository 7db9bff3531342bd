"""The base of procedural loaders: batches computed from their index, so that resuming is exact.

A procedural loader (`t2ijax.train.synthetic`, `t2ijax.eval.cnn_judge_data`, registered in
`t2ijax.train.loop.PROCEDURAL_LOADERS`) renders batch n of shard s on the fly; its whole state is the index
of the next batch. Subclasses implement `batch(n)`.
"""

from __future__ import annotations

import abc

import numpy as np


class ProceduralLoader(abc.ABC):
    """Infinite iterator of batches with ``get_state()`` / ``set_state(state)``; batch n of shard s holds the
    global examples ``(n * shard_count + s) * batch_size + j`` (`example_ids`)."""

    def __init__(self, *, batch_size: int, seed: int, shard_index: int = 0, shard_count: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"shard_index={shard_index} outside [0, {shard_count})")
        self.batch_size, self.seed = batch_size, seed
        self.shard_index, self.shard_count = shard_index, shard_count
        self.next_batch = 0

    def example_ids(self, n: int) -> np.ndarray:
        first = (n * self.shard_count + self.shard_index) * self.batch_size
        return np.arange(first, first + self.batch_size, dtype=np.int32)

    @abc.abstractmethod
    def batch(self, n: int) -> dict[str, np.ndarray]:
        """Batch `n` of this shard (a pure function of n and the loader's settings)."""

    def get_state(self) -> dict:
        return {"next_batch": self.next_batch}

    def set_state(self, state: dict) -> None:
        self.next_batch = int(state["next_batch"])

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        n = self.next_batch
        self.next_batch += 1
        return self.batch(n)
