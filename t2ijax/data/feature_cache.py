"""Precomputed features in an ArrayRecord file: text-encoder states, or any named arrays per example.

Generic caches (`write_arrays`): each record holds named arrays of any kind (text token states, pooled text
embeddings, CLIP image embeddings, LLM features ...) and is keyed by its example id (the "example_id" /
"record" index of the data loaders); `FeatureCache.lookup(ids)` returns a batch of them by id, and
`CachedFeatureLoader` trains from a cache alone (no image decoding). The ids are stored beside the file in
`<path>.ids.npy` (loaded with allow_pickle=False).

Text-feature caches (`write_feature_cache`, `build_feature_cache`): a frozen encoder (T5, CLIP, Llama) is run once over the captions, in fixed-shape batches
(one jit compilation; the last batch is padded with empty captions that are not written),
and every caption becomes one record holding:

  hidden_states   (max_length, D)  per-token states, float16 or float32 (option `dtype`)
  attention_mask  (max_length,)    uint8, 1 for tokens, 0 for padding
  pooled          (P,)             CLIP's pooled (projected, if the model has a projection) EOT
                                   state, or for T5 / Llama the mean of the states over the mask
                                   (`masked_mean`, float32 numpy on the host, then cast to `dtype`)
  caption         (n,)             the caption's UTF-8 bytes

Records are safetensors bytes (`safetensors.numpy.save`), so reading executes no code
(no pickle). Next to `out_path` a JSON file `<out_path>.json` records the encoder path,
dtypes, max_length, count and a SHA-256 of the captions.

`FeatureCache(path)` reads records by index (`cache[i]`, `len(cache)`), so it works as a
Grain random-access data source; it can be pickled into worker processes. A text-feature cache's record i
is example id i (the train split's row order).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from t2ijax.data.procedural import ProceduralLoader

FORMAT = "t2ijax.feature_cache/1"
STORAGE_DTYPES = {"float16": np.float16, "float32": np.float32}


def metadata_path(path) -> str:
    return f"{os.fspath(path)}.json"


class CaptionHasher:
    """SHA-256 over length-prefixed UTF-8 captions (so ["ab", "c"] and ["a", "bc"] differ)."""

    def __init__(self):
        self._h = hashlib.sha256()

    def update(self, caption: str) -> None:
        data = caption.encode("utf-8")
        self._h.update(len(data).to_bytes(8, "little"))
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def captions_sha256(captions: Iterable[str]) -> str:
    h = CaptionHasher()
    for c in captions:
        h.update(c)
    return h.hexdigest()


def masked_mean(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of (B, L, D) states over the (B, L) mask, in float32 numpy (deterministic on the host)."""
    m = np.asarray(mask, np.float32)[..., None]
    return (np.asarray(hidden, np.float32) * m).sum(1) / np.maximum(m.sum(1), 1.0)


def make_encode_fn(module, params):
    """jit-compiled (input_ids, attention_mask) -> (hidden_states, model's pooled features or None)."""

    @jax.jit
    def encode(variables, input_ids, attention_mask):  # params are an argument, not baked-in constants
        return module.apply(variables, input_ids, attention_mask, method="encode")

    return functools.partial(encode, {"params": params})


def _check_options(batch_size, max_length, dtype, pooling):
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")
    if batch_size < 1 or max_length < 1:
        raise ValueError(f"batch_size and max_length must be positive, got {batch_size}, {max_length}")
    if pooling not in ("auto", "mean"):
        raise ValueError(f"pooling must be 'auto' or 'mean', got {pooling!r}")


def _batches(items: Iterable[str], size: int):
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def _tokenize(tokenizer, captions: list[str], max_length: int):
    enc = tokenizer(captions, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    return np.asarray(enc["input_ids"], np.int32), np.asarray(enc["attention_mask"], np.int32)


def write_feature_cache(module, params, tokenizer, captions: Iterable[str], out_path, *, batch_size: int = 32,
                        max_length: int = 128, dtype: str = "float16", pooling: str = "auto",
                        metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Encode `captions` with an already loaded (module, params, tokenizer); returns the metadata.

    pooling: "auto" stores the model's own pooled features when it has them (CLIP) and the
    masked mean of the hidden states otherwise; "mean" always stores the masked mean.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    _check_options(batch_size, max_length, dtype, pooling)
    if isinstance(captions, str):
        raise TypeError("captions must be a list or iterator of strings, not one string")
    store = STORAGE_DTYPES[dtype]
    encode = make_encode_fn(module, params)
    hasher = CaptionHasher()
    out_path = os.fspath(out_path)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    writer = ArrayRecordWriter(out_path, "group_size:1")
    count, hidden_size, pooled_size = 0, None, None

    def write(batch, ids_mask, result):
        nonlocal count, hidden_size, pooled_size
        hidden, pooled = result
        hidden = np.asarray(hidden)
        pooled = masked_mean(hidden, ids_mask[1]) if pooled is None or pooling == "mean" else np.asarray(pooled)
        hidden_size, pooled_size = hidden.shape[-1], pooled.shape[-1]
        for j, caption in enumerate(batch):
            record = {"hidden_states": hidden[j].astype(store), "attention_mask": ids_mask[1][j].astype(np.uint8),
                      "pooled": pooled[j].astype(store),
                      "caption": np.frombuffer(caption.encode("utf-8"), np.uint8).copy()}
            writer.write(save_arrays(record))
            count += 1

    pending = None
    try:
        for batch in _batches(captions, batch_size):
            for c in batch:
                if not isinstance(c, str):
                    raise TypeError(f"captions must be strings, got {type(c).__name__}: {c!r}")
                hasher.update(c)
            ids, mask = _tokenize(tokenizer, batch + [""] * (batch_size - len(batch)), max_length)
            result = encode(jnp.asarray(ids), jnp.asarray(mask))  # dispatched; runs while the last batch is written
            if pending is not None:
                write(*pending)
            pending = (batch, (ids, mask), result)
        if pending is not None:
            write(*pending)
    finally:
        writer.close()
    meta = dict(metadata or {})
    meta.update(format=FORMAT, count=count, dtype=dtype, max_length=max_length, batch_size=batch_size,
                pooling=pooling, hidden_size=hidden_size, pooled_size=pooled_size,
                captions_sha256=hasher.hexdigest(), encoder_dtype=str(np.dtype(getattr(module, "dtype", "float32"))))
    with open(metadata_path(out_path), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    return meta


def build_feature_cache(encoder_path, captions: Iterable[str], out_path, *, batch_size: int = 32,
                        max_length: int = 128, dtype: str = "float16", tokenizer_path=None,
                        compute_dtype=None, pooling: str = "auto") -> dict[str, Any]:
    """Run the Hugging Face text encoder in `encoder_path` once over `captions` into `out_path`.

    tokenizer_path: folder of the tokenizer (default: `encoder_path`).
    compute_dtype: the encoder's compute dtype (default float32; jnp.float16 for ELLA's T5).
    dtype: storage dtype of the features, "float16" or "float32".
    Returns the metadata written to `<out_path>.json`.
    """
    from t2ijax.weights.hf import load_text_encoder, load_tokenizer

    _check_options(batch_size, max_length, dtype, pooling)
    tokenizer = load_tokenizer(tokenizer_path or encoder_path)
    module, params = load_text_encoder(encoder_path, dtype=compute_dtype)
    meta = {"encoder_path": os.path.abspath(encoder_path),
            "tokenizer_path": os.path.abspath(tokenizer_path or encoder_path),
            "encoder": type(module).__name__}
    return write_feature_cache(module, params, tokenizer, captions, out_path, batch_size=batch_size,
                               max_length=max_length, dtype=dtype, pooling=pooling, metadata=meta)


def ids_path(path) -> str:
    return f"{os.fspath(path)}.ids.npy"


def write_arrays(records: Iterable[tuple[int, dict[str, np.ndarray]]], out_path, *,
                 metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write (example id, {name: array}) records; every record must have the same names, shapes and dtypes
    (checked, the first record sets them) and ids must be unique. Returns the metadata written to
    `<out_path>.json` (field shapes and dtypes, count)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    out_path = os.fspath(out_path)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    writer = ArrayRecordWriter(out_path, "group_size:1")
    ids, fields = [], None
    try:
        for example_id, arrays in records:
            arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
            layout = {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in sorted(arrays.items())}
            if fields is None:
                fields = layout
            elif layout != fields:
                raise ValueError(f"record of example {example_id} has fields {layout}; the first record had {fields}")
            ids.append(int(example_id))
            writer.write(save_arrays(arrays))
    finally:
        writer.close()
    id_array = np.asarray(ids, np.int64)
    if len(np.unique(id_array)) != len(id_array):
        raise ValueError(f"{out_path}: example ids are not unique")
    np.save(ids_path(out_path), id_array, allow_pickle=False)
    meta = dict(metadata or {})
    meta.update(format=FORMAT, count=len(ids), fields=fields or {})
    with open(metadata_path(out_path), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    return meta


class FeatureCache:
    """Random-access reader of a feature cache: `cache[i]` -> dict of arrays (plus "caption" (str) in a
    text-feature cache); `cache.lookup(example_ids)` -> a batch of the records of those example ids."""

    def __init__(self, path):
        self.path = os.fspath(path)
        meta_file = metadata_path(self.path)
        if not os.path.exists(self.path) or not os.path.exists(meta_file):
            raise FileNotFoundError(f"feature cache {self.path} (and its metadata {meta_file}) not found")
        with open(meta_file) as f:
            self.metadata = json.load(f)
        if self.metadata.get("format") != FORMAT:
            raise ValueError(f"{meta_file} is not a {FORMAT} metadata file")
        self._reader = None

    def _open(self):
        if self._reader is None:
            from array_record.python.array_record_module import ArrayRecordReader

            self._reader = ArrayRecordReader(self.path, "readahead_buffer_size:0")
            if self._reader.num_records() != self.metadata["count"]:
                raise ValueError(f"{self.path} holds {self._reader.num_records()} records, its metadata says "
                                 f"{self.metadata['count']}")
        return self._reader

    def __len__(self) -> int:
        return int(self.metadata["count"])

    @functools.cached_property
    def example_ids(self) -> np.ndarray:
        """The example id of every record (record i of a text-feature cache is example i)."""
        if os.path.exists(ids_path(self.path)):
            return np.load(ids_path(self.path), allow_pickle=False)
        return np.arange(len(self), dtype=np.int64)

    @functools.cached_property
    def _position(self) -> dict[int, int]:
        return {int(e): i for i, e in enumerate(self.example_ids)}

    def lookup(self, example_ids) -> dict[str, np.ndarray]:
        """The records of `example_ids` stacked into a batch (text captions are dropped); an id the cache does
        not hold is an error naming it."""
        positions = []
        for e in np.asarray(example_ids).reshape(-1):
            if int(e) not in self._position:
                raise KeyError(f"example id {int(e)} is not in feature cache {self.path} ({len(self)} records)")
            positions.append(self._position[int(e)])
        records = [load_arrays(r) for r in self._open().read(positions)]
        for r in records:
            r.pop("caption", None)
        return {k: np.stack([r[k] for r in records]) for k in records[0]}

    def read(self, index: int) -> dict[str, Any]:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for a feature cache of {n} records")
        arrays = load_arrays(self._open().read([i])[0])
        caption = arrays.pop("caption").tobytes().decode("utf-8")
        return dict(arrays, caption=caption)

    __getitem__ = read

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        return {"path": self.path, "metadata": self.metadata}

    def __setstate__(self, state):
        self.path, self.metadata, self._reader = state["path"], state["metadata"], None

    def __repr__(self) -> str:
        return f"FeatureCache({self.path!r}, count={len(self)}, dtype={self.metadata.get('dtype')})"


class CachedFeatureLoader(ProceduralLoader):
    """Batches read from a feature cache alone (no image decoding): a method that trains on cached embeddings
    (ECLIPSE's prior on CLIP text and image embeddings) needs nothing else. Each epoch visits every record
    once in an order shuffled by (seed, epoch); batches carry the cached arrays and "example_id". Exact resume
    (the state is the batch index), shardable like the other procedural loaders."""

    def __init__(self, cache: FeatureCache | str, *, batch_size: int, seed: int, shard_index: int = 0,
                 shard_count: int = 1, shuffle: bool = True):
        super().__init__(batch_size=batch_size, seed=seed, shard_index=shard_index, shard_count=shard_count)
        self.cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
        self.shuffle = shuffle
        if len(self.cache) == 0:
            raise ValueError(f"feature cache {self.cache.path} is empty")
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            ids = self.cache.example_ids
            if len(self._orders) > 1:  # a batch spans at most two epochs
                self._orders.pop(min(self._orders))
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(ids) if self.shuffle else ids
        return self._orders[epoch]

    def batch(self, n: int) -> dict[str, np.ndarray]:
        count = len(self.cache)
        positions = self.example_ids(n).astype(np.int64)  # global positions in the endless stream of epochs
        ids = np.asarray([self._order(int(p // count))[p % count] for p in positions])
        return {**self.cache.lookup(ids), "example_id": ids.astype(np.int32)}


def make_loader(data_config, *, split: str, batch_size: int, seed: int, shard_index: int = 0,
                shard_count: int = 1) -> CachedFeatureLoader:
    """The loader named by ``config.data.name = "feature_cache"`` (`t2ijax.train.loop.make_loader`): batches of
    the cache at ``data.path`` (``data.paths[split]`` when it differs per split), no images decoded."""
    paths = dict(data_config.get("paths", {}) or {})
    path = paths.get(split) or data_config.get("path", "")
    if not path:
        raise ValueError(f"data.name='feature_cache' needs data.path (or data.paths[{split!r}])")
    return CachedFeatureLoader(os.path.expanduser(path), batch_size=batch_size, seed=seed, shard_index=shard_index,
                               shard_count=shard_count, shuffle=split == "train")
