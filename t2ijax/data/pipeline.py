"""Grain input pipelines over the ArrayRecord datasets of `t2ijax.data.tfds_builders`.

    loader = make_loader(default_data_config(), split="train", batch_size=32, seed=0,
                         shard_index=jax.process_index(), shard_count=jax.process_count())
    batch = next(loader)          # dict of numpy arrays, no strings
    state = loader.get_state()    # small, JSON-able; save it with the model checkpoint
    loader.set_state(state)       # resume exactly where it was
    loader.caption(batch["record"][0])

Batches: "image" (B, H, W, 3) float32 in [-1, 1], "input_ids" / "attention_mask"
(B, L) int32 for the caption kind `data_config.caption`, "record" (B,) int32 (the
row in the split, for `caption(record)` / `example(record)`) and "index" (B,)
int32 (the scene / line index in the source). Shapes adds, with
`data_config.with_regions`: "boxes" (B, 4, 4) normalised x0, y0, x1, y1; "masks"
(B, 4, H, W) float32; "object_valid" (B, 4); "key_token_mask" (B, L) marking the
tokens of key words (colour, shape, size, relation, count) and
"object_token_mask" (B, 4, L) marking each object's phrase in the caption.

ERNIE-ViLG 2.0 knowledge (`t2ijax.data.knowledge`; nothing is downloaded at run time):
  * `data_config.key_words` picks who marks "key_token_mask": "annotations" (Shapes'
    annotated key spans, the default), "heuristic" (a dependency-free English
    part-of-speech heuristic) or "spacy" (spaCy + en_core_web_sm, installed beforehand).
  * `data_config.complete_captions` appends to the caption the objects it does not
    mention (Shapes: "<colour> <shape>" of every object; folders: the object labels),
    ", "-separated. Appended labels are key words too (Shapes kinds "colour", "shape")
    and become the phrase of their object in "object_token_mask" when it had none.
  * `data_config.caption_object_dropout` (Shapes, "short" captions) leaves each object
    out of the caption with that probability (at least one stays), the caption rebuilt
    from the kept objects so spans stay exact; a left-out object keeps its "masks",
    "boxes" and "object_valid" (it is in the image) but has a zero "object_token_mask"
    row unless completion appends it. Extra captions are not affected.
  * Image folders, with `with_regions` and key_words "heuristic" / "spacy": the same
    region fields as Shapes. Objects (at most 4, in order) come from a metadata field
    "objects": [{"label": str, "box": [x0, y0, x1, y1]}] (normalised to the original
    image; a precomputed detector run), else from `data_config.detector`
    ("module:function", run on the decoded original image), else there are none.
    "boxes" are mapped into the resized, centre-cropped image (objects cropped out are
    dropped), "masks" are those boxes rasterised at the data resolution (pixel centres
    inside the box), "object_valid" marks the objects, and "object_token_mask" marks the
    first whole-word occurrence of each object's label in the (completed) caption. With
    key_words "annotations" (the default) folders keep their plain batches.
Each caption kind of `data_config.extra_captions` (name -> "kind[:tokenizer[:max_length]]") adds
"<name>_input_ids" / "<name>_attention_mask", tokenized with its own tokenizer and length: a batch can
carry a short and a narrative caption, or a CLIP and an LLM tokenization of one caption.

Random flips (`data_config.random_flip`, off by default) mirror the image and, on
Shapes, its masks and boxes, and swap the "left" / "right" token ids of the caption
so that spatial relations stay true. Image-folder captions are left as they are:
a flip there can contradict a caption that says "left" or "right".

Determinism: shuffling, random flips and caption object dropout are seeded and
redrawn every epoch (the flip is drawn first, so turning dropout on keeps the flips);
the batch sequence is a function of (data, seed, shard, batch size,
worker_count): Grain worker processes (`worker_count` > 0) each batch their own
interleaved share of the rows, so changing `worker_count` changes the batch
composition (not the rows of an epoch), and iterator states only restore into a
loader with the same `worker_count`. Per-process sharding keeps an equal number
of rows per shard (the remainder of the split is dropped).
"""

from __future__ import annotations

import json
import logging

import grain
import ml_collections
import numpy as np

from t2ijax.data import knowledge, preprocess, shapes
from t2ijax.data.config import CAPTION_KINDS, SHAPES_WORD_LENGTH, default_data_config  # noqa: F401
from t2ijax.data.tfds_builders import prepare
from t2ijax.data.tokenizer import CaptionTokenizer, load_tokenizer, spans_to_token_mask

logger = logging.getLogger(__name__)

# For image folders: the metadata fields tried, in order, for each caption kind.
# SURD layout: "text" is the simple (BLIP) caption, "prompt" the complex user prompt.
FOLDER_CAPTION_FIELDS = {"dense": ("dense", "prompt", "text"), "short": ("short", "text"),
                         "narrative": ("narrative", "text")}


def _validate(cfg, split, batch_size, shard_index, shard_count):
    if cfg.name not in ("shapes", "image_text_folder"):
        raise ValueError(f"unknown dataset name {cfg.name!r}; expected 'shapes' or 'image_text_folder'")
    if cfg.caption not in CAPTION_KINDS:
        raise ValueError(f"data_config.caption must be one of {CAPTION_KINDS}, got {cfg.caption!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
    if cfg.max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {cfg.max_length}")
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split must be 'train', 'validation' or 'test', got {split!r}")
    extra_captions(cfg)
    knowledge_options(cfg)


def knowledge_options(cfg) -> dict:
    """The ERNIE-ViLG 2.0 knowledge fields of ``data`` checked, defaults filled in (configs that predate them
    load as the defaults): key_words, complete_captions, caption_object_dropout, detector."""
    opts = {"key_words": str(cfg.get("key_words", "annotations")),
            "complete_captions": bool(cfg.get("complete_captions", False)),
            "caption_object_dropout": float(cfg.get("caption_object_dropout", 0.0)),
            "detector": str(cfg.get("detector", "") or "")}
    if opts["key_words"] not in knowledge.KEY_WORD_PROVIDERS:
        raise ValueError(f"data.key_words must be one of {knowledge.KEY_WORD_PROVIDERS}, got {opts['key_words']!r}")
    p = opts["caption_object_dropout"]
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"data.caption_object_dropout must be in [0, 1], got {p}")
    if p > 0 and (cfg.name != "shapes" or cfg.caption != "short"):
        raise ValueError("data.caption_object_dropout rebuilds Shapes 'short' captions from the scene graph; it "
                         f"needs name='shapes' and caption='short' (got {cfg.name!r}, {cfg.caption!r})")
    if opts["detector"] and cfg.name != "image_text_folder":
        raise ValueError("data.detector applies to image_text_folder only (Shapes objects come from the scene graph)")
    if (cfg.name == "image_text_folder" and cfg.with_regions and opts["key_words"] == "annotations"
            and (opts["complete_captions"] or opts["detector"])):
        raise ValueError("data.key_words='annotations': image folders have no key-word annotations; set "
                         "key_words='heuristic' (or 'spacy') for their key_token_mask, or with_regions=False")
    return opts


def extra_captions(cfg) -> dict[str, tuple[str, str, int]]:
    """``data.extra_captions`` parsed: name -> (caption kind, tokenizer, max_length), defaults filled in."""
    out = {}
    for name, spec in dict(cfg.get("extra_captions", {}) or {}).items():
        parts = str(spec).split(":")
        kind, tokenizer = parts[0], parts[1] if len(parts) > 1 and parts[1] else cfg.tokenizer
        max_length = int(parts[2]) if len(parts) > 2 and parts[2] else int(cfg.max_length)
        if kind not in CAPTION_KINDS or len(parts) > 3 or max_length < 2:
            raise ValueError(f"data.extra_captions[{name!r}] = {spec!r}: expected 'kind[:tokenizer[:max_length]]' "
                             f"with kind in {CAPTION_KINDS} and max_length >= 2")
        if name in ("image", "input", "attention", "record", "index"):
            raise ValueError(f"data.extra_captions name {name!r} would collide with a batch field")
        if cfg.get("random_flip") and tokenizer != cfg.tokenizer:
            raise ValueError(f"data.extra_captions[{name!r}] uses another tokenizer; random_flip swaps the main "
                             "tokenizer's 'left'/'right' ids only: turn random_flip off")
        out[name] = (kind, tokenizer, max_length)
    return out


class _ExtraCaptions:
    """The extra caption kinds of a row, each with its own tokenization (``data.extra_captions``)."""

    def __init__(self, cfg, swap):
        self.encoders = {name: (kind, CaptionTokenizer(load_tokenizer(tok, length), length))
                         for name, (kind, tok, length) in extra_captions(cfg).items()}
        self.swap = swap

    def __call__(self, caption_of, flip: bool) -> dict:
        out = {}
        for name, (kind, encode) in self.encoders.items():
            tok = encode(caption_of(kind))
            ids = tok["input_ids"]
            if flip and self.swap is not None:
                left, right = self.swap
                ids = np.where(ids == left, right, np.where(ids == right, left, ids))
            out[f"{name}_input_ids"], out[f"{name}_attention_mask"] = ids.astype(np.int32), tok["attention_mask"]
        return out


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def folder_caption(fields: dict, kind: str) -> str:
    for name in FOLDER_CAPTION_FIELDS[kind]:
        if fields.get(name):
            return fields[name]
    return ""


def left_right_token_ids(tokenizer) -> tuple[int, int]:
    """Ids of "left" and "right" when each is a single token (needed to flip Shapes captions)."""
    ids = tokenizer(["left", "right"], add_special_tokens=False)["input_ids"]
    if any(len(x) != 1 for x in ids):
        raise ValueError("random_flip on Shapes swaps the 'left'/'right' tokens of the caption, but this tokenizer "
                         f"splits them into {ids}; turn random_flip off")
    return ids[0][0], ids[1][0]


class _ShapesTransform:
    """Shapes row -> batch element. A flipped image gets "left" and "right" swapped in its token ids so that the
    caption stays true (both are single tokens, so spans and token masks are unchanged).

    `rng` (from `random_map`, after the flip draw) draws the objects that `caption_object_dropout` leaves out."""

    def __init__(self, cfg, tokenizer):
        self.cfg, self.encode = cfg, CaptionTokenizer(tokenizer, cfg.max_length)
        self.swap = left_right_token_ids(tokenizer) if cfg.random_flip else None
        self.extras = _ExtraCaptions(cfg, self.swap)
        self.opts = knowledge_options(cfg)
        if cfg.with_regions and self.opts["key_words"] == "spacy":
            knowledge.spacy_pipeline()  # fail at loader creation when spaCy or its model is missing

    def _drop_objects(self, graph: dict, n: int, rng):
        """The short caption of the objects that survive `caption_object_dropout`: (text, key spans, object spans
        with [0, 0] for the left-out objects)."""
        if rng is None:
            raise ValueError("caption_object_dropout needs the random_map rng (make_loader passes it)")
        keep = rng.random(n) >= self.opts["caption_object_dropout"]
        if not keep.any():
            keep[int(rng.integers(n))] = True
        scene = shapes.Scene.from_graph(graph)
        kept = [i for i in range(n) if keep[i]]
        built = shapes.short_caption(shapes.Scene(scene.resolution, tuple(scene.objects[i] for i in kept), ()))
        spans = built.spans(len(kept))
        objects = [[0, 0] for _ in range(n)]
        for j, i in enumerate(kept):
            objects[i] = spans["objects"][j]
        return built.text, spans["key"], objects

    def __call__(self, record: dict, flip: bool, rng=None) -> dict:
        cfg, opts = self.cfg, self.opts
        caption = _text(record[cfg.caption])
        n = int(record["num_objects"])
        completing, dropping = opts["complete_captions"], opts["caption_object_dropout"] > 0
        key_spans, object_spans, appended_keys = None, None, []
        if cfg.with_regions or completing or dropping:
            graph = json.loads(_text(record["scene_graph"]))
            spans = graph["spans"][cfg.caption]
            key_spans, object_spans = spans["key"], [list(s) for s in spans["objects"][:n]]
            if dropping:
                caption, key_spans, object_spans = self._drop_objects(graph, n, rng)
            if completing:
                labels = [f"{o['colour']} {o['shape']}" for o in graph["objects"][:n]]
                caption, appended = knowledge.complete_caption(caption, labels)
                for span in appended:  # "<colour> <shape>": two key words
                    appended_keys += [[s, e, kind] for (s, e), kind in
                                      zip(knowledge.word_spans(caption, span), ("colour", "shape"))]
                for i, label in enumerate(labels):
                    if object_spans[i][1] <= object_spans[i][0]:
                        found = knowledge.find_phrase(caption, label)
                        object_spans[i] = list(found) if found else [0, 0]
        tok = self.encode(caption, return_offsets=cfg.with_regions)
        image = record["image"][:, ::-1] if flip else record["image"]
        input_ids = tok["input_ids"]
        if flip:
            left, right = self.swap
            input_ids = np.where(input_ids == left, right, np.where(input_ids == right, left, input_ids))
        out = {
            "image": preprocess.to_unit_range(image),
            "input_ids": input_ids.astype(np.int32),
            "attention_mask": tok["attention_mask"],
            "record": np.int32(record["_record"]),
            "index": np.int32(record["index"]),
            **self.extras(lambda kind: _text(record[kind]), flip),
        }
        if cfg.with_regions:
            offsets = tok["offsets"]
            object_tokens = np.zeros((shapes.MAX_OBJECTS, cfg.max_length), np.float32)
            for i, span in enumerate(object_spans):
                object_tokens[i] = spans_to_token_mask(offsets, [span])
            key_spans = knowledge.key_spans(caption, opts["key_words"], key_spans) + appended_keys
            masks, boxes = record["masks"], record["boxes"]
            out.update({
                "boxes": preprocess.flip_boxes(boxes) if flip else boxes.astype(np.float32),
                "masks": (masks[:, :, ::-1] if flip else masks).astype(np.float32),
                "object_valid": (np.arange(shapes.MAX_OBJECTS) < n).astype(np.float32),
                "key_token_mask": spans_to_token_mask(offsets, key_spans),
                "object_token_mask": object_tokens,
            })
        return out


def crop_boxes(boxes: np.ndarray, height: int, width: int, resolution: int) -> np.ndarray:
    """Normalised (N, 4) boxes of a (height, width) image -> normalised boxes in its
    `preprocess.preprocess_image` view (shorter side resized to `resolution`, centre crop), clipped to [0, 1]."""
    if min(height, width) == resolution:
        new_w, new_h = width, height
    else:
        scale = resolution / min(height, width)
        new_w, new_h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    x = (boxes[:, 0::2] * new_w - left) / resolution
    y = (boxes[:, 1::2] * new_h - top) / resolution
    return np.clip(np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=-1), 0.0, 1.0).astype(np.float32)


class _FolderTransform:
    """Image-folder row -> batch element; with `with_regions` and a key-word provider other than "annotations",
    or with `complete_captions`, also the row's objects (metadata "objects", else the detector)."""

    def __init__(self, cfg, tokenizer):
        self.cfg, self.encode = cfg, CaptionTokenizer(tokenizer, cfg.max_length)
        self.extras = _ExtraCaptions(cfg, None)
        self.opts = knowledge_options(cfg)
        self.regions = bool(cfg.with_regions) and self.opts["key_words"] != "annotations"
        if cfg.with_regions and not self.regions:
            logger.warning("image_text_folder: with_regions gives no region fields with key_words='annotations' "
                           "(folders have no key-word annotations); set key_words='heuristic' or 'spacy'")
        if self.regions and self.opts["key_words"] == "spacy":
            knowledge.spacy_pipeline()  # fail at loader creation when spaCy or its model is missing
        self.detector = knowledge.load_detector(self.opts["detector"]) if self.opts["detector"] else None

    def objects(self, fields: dict, image: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """The row's objects as (label, box in the preprocessed image's frame), at most MAX_OBJECTS, in order:
        the metadata "objects" when the row has that field, else the detector's, else none; objects that the
        centre crop cuts away are dropped."""
        if "objects" in fields:
            found = knowledge.parse_objects(fields["objects"], f"metadata 'objects' of {fields.get('file_name')!r}")
        elif self.detector is not None:
            found = knowledge.parse_objects(self.detector(image), f"data.detector {self.opts['detector']!r} output")
        else:
            return []
        if not found:
            return []
        boxes = crop_boxes(np.stack([b for _, b in found]), image.shape[0], image.shape[1], int(self.cfg.resolution))
        inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return [(label, box) for (label, _), box, ok in zip(found, boxes, inside) if ok][:shapes.MAX_OBJECTS]

    def __call__(self, record: dict, flip: bool, rng=None) -> dict:
        cfg, opts = self.cfg, self.opts
        fields = json.loads(_text(record["fields"]))
        caption = folder_caption(fields, cfg.caption)
        image = preprocess.decode_image(record["image_bytes"])
        objects, appended = [], []
        if self.regions or opts["complete_captions"]:
            objects = self.objects(fields, image)
            if opts["complete_captions"]:
                caption, appended = knowledge.complete_caption(caption, [label for label, _ in objects])
        tok = self.encode(caption, return_offsets=self.regions)
        out = {
            "image": preprocess.preprocess_image(image, int(cfg.resolution), flip=flip),
            "input_ids": tok["input_ids"],
            "attention_mask": tok["attention_mask"],
            "record": np.int32(record["_record"]),
            "index": np.int32(record["index"]),
            **self.extras(lambda kind: folder_caption(fields, kind), flip),
        }
        if self.regions:
            offsets, res = tok["offsets"], int(cfg.resolution)
            boxes = np.zeros((shapes.MAX_OBJECTS, 4), np.float32)
            object_tokens = np.zeros((shapes.MAX_OBJECTS, cfg.max_length), np.float32)
            for i, (label, box) in enumerate(objects):
                boxes[i] = box
                found = knowledge.find_phrase(caption, label)
                if found is not None:
                    object_tokens[i] = spans_to_token_mask(offsets, [found])
            masks = knowledge.rasterise_boxes(boxes, res)
            valid = (np.arange(shapes.MAX_OBJECTS) < len(objects)).astype(np.float32)
            masks *= valid[:, None, None]
            key = knowledge.key_spans(caption, opts["key_words"])
            key += [[s, e, "word"] for span in appended for s, e in knowledge.word_spans(caption, span)]
            out.update({
                "boxes": preprocess.flip_boxes(boxes) if flip else boxes,
                "masks": np.ascontiguousarray(masks[:, :, ::-1]) if flip else masks,
                "object_valid": valid,
                "key_token_mask": spans_to_token_mask(offsets, key),
                "object_token_mask": object_tokens,
            })
        return out


class _Source:
    """Random-access view over a TFDS data source that tags each row with its position."""

    def __init__(self, source):
        self._source = source

    def __len__(self):
        return len(self._source)

    def __getitem__(self, i):
        row = dict(self._source[int(i)])
        row["_record"] = int(i)
        return row


class Loader:
    """Iterator of numpy batches with checkpointable state (wraps a Grain DatasetIterator)."""

    def __init__(self, cfg, dataset: grain.IterDataset, source: _Source, num_rows: int):
        self.config = cfg
        self.source = source
        self.num_rows = num_rows  # rows in this shard per epoch
        self.iterator = iter(dataset)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self.iterator)

    def get_state(self) -> dict:
        return self.iterator.get_state()

    def set_state(self, state: dict) -> None:
        self.iterator.set_state(state)

    def example(self, record: int) -> dict:
        """The stored row (strings decoded) at position `record` of the split."""
        row = self.source[int(record)]
        return {k: _text(v) if isinstance(v, bytes) and k != "image_bytes" else v for k, v in row.items()}

    def caption(self, record: int, kind: str | None = None) -> str:
        """The caption (of `kind`, default the configured one) of row `record`."""
        kind = kind or self.config.caption
        row = self.example(record)
        if self.config.name == "shapes":
            return row[kind]
        return folder_caption(json.loads(row["fields"]), kind)

    def scene_graph(self, record: int) -> dict:
        """Shapes only: the scene graph (objects, relations, counts, spans) of row `record`."""
        if self.config.name != "shapes":
            raise ValueError("scene graphs exist only for the shapes dataset")
        return json.loads(self.example(record)["scene_graph"])


def load_split(data_config, split: str):
    """Prepare the dataset if needed and return the TFDS random-access source of `split`."""
    builder = prepare(data_config)
    if split not in builder.info.splits:
        raise ValueError(f"split {split!r} not in dataset {builder.name}; available: {sorted(builder.info.splits)}")
    return builder.as_data_source(split=split)


def make_loader(data_config, *, split: str, batch_size: int, seed: int, shard_index: int = 0,
                shard_count: int = 1, num_epochs: int | None = None, shuffle: bool = True,
                drop_remainder: bool = True) -> Loader:
    """A deterministic, checkpointable iterator of preprocessed, tokenized batches (see module doc).

    The dataset is built on first use. With several processes sharing `data_dir`,
    build it once first (`t2ijax.data.prepare(data_config)` on process 0, then a
    barrier): TFDS builds are deterministic but not safe to run concurrently.
    """
    cfg = data_config
    _validate(cfg, split, batch_size, shard_index, shard_count)
    source = _Source(load_split(cfg, split))
    per_shard = len(source) // shard_count
    if per_shard == 0:
        raise ValueError(f"split {split!r} has {len(source)} rows, fewer than shard_count={shard_count}")
    if drop_remainder and per_shard < batch_size:
        raise ValueError(f"shard has {per_shard} rows, fewer than batch_size={batch_size}")
    tokenizer = load_tokenizer(cfg.tokenizer, int(cfg.max_length))
    if cfg.name == "shapes" and cfg.tokenizer == "shapes_word" and cfg.max_length < SHAPES_WORD_LENGTH[cfg.caption]:
        logger.warning("max_length=%d truncates the longest Shapes %s captions (up to %d tokens)",
                       cfg.max_length, cfg.caption, SHAPES_WORD_LENGTH[cfg.caption])
    transform = (_ShapesTransform if cfg.name == "shapes" else _FolderTransform)(cfg, tokenizer)

    ds = grain.MapDataset.source(source)[: per_shard * shard_count][shard_index::shard_count]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    flip = bool(cfg.random_flip)
    if flip or knowledge_options(cfg)["caption_object_dropout"] > 0:
        # The flip is drawn first: configs that only flip keep their exact batches.
        ds = ds.random_map(lambda r, rng: transform(r, bool(rng.integers(2)) if flip else False, rng), seed=seed + 1)
    else:
        ds = ds.map(lambda r: transform(r, False))
    read_options = grain.ReadOptions(num_threads=int(cfg.read_threads),
                                     prefetch_buffer_size=int(cfg.prefetch_buffer_size))
    ds = ds.to_iter_dataset(read_options).batch(batch_size, drop_remainder=drop_remainder)
    if cfg.worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # Grain workers read absl flags; outside absl.app.run none are parsed
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(cfg.worker_count)))
    return Loader(cfg, ds, source, per_shard)
