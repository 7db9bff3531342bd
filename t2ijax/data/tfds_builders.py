"""TFDS builders that write ArrayRecord files, with no TensorFlow install.

TFDS's `Image` feature needs TensorFlow to encode, so images are stored as raw
uint8 `Tensor`s (Shapes: small, fixed size, no decode cost) or as the original
encoded file bytes (image folders: decoded in the loader).

  t2ijax_shapes             procedural Shapes scenes (see `t2ijax.data.shapes`)
  t2ijax_image_text_folder  a folder of images plus `captions.jsonl` or
                            `metadata.jsonl` (Hugging Face ImageFolder / SURD
                            layout: `file_name`, `text`, optional extra fields
                            such as `prompt`; an optional `objects` list of
                            {"label", "box": [x0, y0, x1, y1] normalised} is kept
                            too: precomputed detections for ERNIE-ViLG 2.0 regions and
                            caption completion). Unreadable images are skipped,
                            counted and reported in `ingest_report.json`.

`prepare(data_config)` builds the dataset once (idempotent) and returns the builder.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from t2ijax.data import knowledge, shapes

logger = logging.getLogger(__name__)

FILE_FORMAT = "array_record"
CAPTION_FILES = ("captions.jsonl", "metadata.jsonl")
SPLIT_DIRS = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}
INGEST_REPORT = "ingest_report.json"


class _LocalBuilder(tfds.core.GeneratorBasedBuilder):
    """Base builder that pins `code_path` to this file.

    TFDS's default `code_path` probes `importlib_resources`, a package it does
    not declare as a dependency; these builders download nothing and need no
    checksums file, so the lookup is skipped.
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return epath.Path(__file__)


class ShapesConfig(tfds.core.BuilderConfig):
    def __init__(self, *, resolution: int, num_train: int, num_val: int, num_test: int, seed: int):
        super().__init__(name=f"r{resolution}_s{seed}_n{num_train}-{num_val}-{num_test}")
        self.resolution, self.seed = resolution, seed
        self.num_examples = {"train": num_train, "validation": num_val, "test": num_test}


class T2ijaxShapes(_LocalBuilder):
    """Procedural Shapes scenes with dense / short / narrative captions, scene graphs, boxes and masks."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = []

    def _info(self):
        r = self.builder_config.resolution
        return tfds.core.DatasetInfo(
            builder=self,
            description=shapes.__doc__,
            features=tfds.features.FeaturesDict({
                "index": tfds.features.Scalar(np.int32),
                "image": tfds.features.Tensor(shape=(r, r, 3), dtype=np.uint8),
                "masks": tfds.features.Tensor(shape=(shapes.MAX_OBJECTS, r, r), dtype=np.uint8),
                "boxes": tfds.features.Tensor(shape=(shapes.MAX_OBJECTS, 4), dtype=np.float32),
                "num_objects": tfds.features.Scalar(np.int32),
                "dense": tfds.features.Text(),
                "short": tfds.features.Text(),
                "narrative": tfds.features.Text(),
                "scene_graph": tfds.features.Text(),
            }),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, n) for split, n in self.builder_config.num_examples.items()}

    def _generate_examples(self, split, num_examples):
        cfg = self.builder_config
        for i in range(num_examples):
            yield i, shapes.make_example(cfg.seed, split, i, cfg.resolution).record()


class FolderConfig(tfds.core.BuilderConfig):
    def __init__(self, *, folder: str):
        folder = os.path.abspath(os.path.expanduser(folder))
        digest = hashlib.sha1(folder.encode()).hexdigest()[:10]
        safe = "".join(ch if ch.isalnum() else "_" for ch in os.path.basename(folder.rstrip("/")))[:40]
        super().__init__(name=f"{safe or 'folder'}_{digest}")
        self.folder = folder


class T2ijaxImageTextFolder(_LocalBuilder):
    """Images plus a captions.jsonl / metadata.jsonl, stored as encoded bytes and all caption fields."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "'fields' also keeps the metadata's 'objects' list (precomputed detections)."}
    BUILDER_CONFIGS = []

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.skipped: dict[str, list[dict]] = {}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "index": tfds.features.Scalar(np.int32),
                "image_bytes": tfds.features.Tensor(shape=(), dtype=np.object_),
                "file_name": tfds.features.Text(),
                "text": tfds.features.Text(),
                "fields": tfds.features.Text(),  # JSON of every string field of the metadata record + "objects"
            }),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, d) for split, d in folder_splits(self.builder_config.folder).items()}

    def _generate_examples(self, split, split_dir):
        from PIL import Image

        skipped = self.skipped.setdefault(split, [])
        for index, record in enumerate(read_caption_records(split_dir)):
            path = os.path.join(split_dir, record["file_name"])
            try:
                with open(path, "rb") as f:
                    data = f.read()
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
            except Exception as err:  # any unreadable image is skipped, never fatal
                skipped.append({"file_name": record["file_name"], "error": f"{type(err).__name__}: {err}"})
                logger.warning("skipping unreadable image %s: %s", path, err)
                continue
            fields = {k: v for k, v in record.items() if isinstance(v, str) or k == "objects"}
            yield index, {
                "index": index, "image_bytes": data, "file_name": record["file_name"],
                "text": record.get("text", ""), "fields": json.dumps(fields, sort_keys=True),
            }


def folder_splits(folder: str) -> dict[str, str]:
    """{split: directory holding the caption file}: the folder itself as "train", or train/validation/test subfolders."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image_text_folder: {folder!r} is not a directory")
    if _caption_file(folder):
        return {"train": folder}
    found = {}
    for split, names in SPLIT_DIRS.items():
        for name in names:
            d = os.path.join(folder, name)
            if os.path.isdir(d) and _caption_file(d):
                found[split] = d
                break
    if not found:
        raise FileNotFoundError(
            f"image_text_folder: no {' or '.join(CAPTION_FILES)} in {folder!r} or in its train/validation/test subfolders"
        )
    return found


def _caption_file(directory: str) -> str | None:
    for name in CAPTION_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def _check_inside(directory: str, file_name, where: str) -> None:
    """Ingestion never reads outside the split's folder: no absolute paths, no "..", no symlink leading out."""
    if not isinstance(file_name, str) or not file_name:
        raise ValueError(f"{where}: 'file_name' must be a non-empty string, got {file_name!r}")
    root = os.path.realpath(directory)
    target = os.path.realpath(os.path.join(directory, file_name))
    if os.path.isabs(file_name) or os.path.commonpath([root, target]) != root:
        raise ValueError(f"{where}: file_name {file_name!r} points outside the dataset folder {directory} "
                         "(absolute path, '..' or a symlink leading out); image paths must stay inside it")


def read_caption_records(directory: str) -> list[dict]:
    """Parse the caption file of `directory`; each line must be a JSON object with "file_name" and "text"."""
    path = _caption_file(directory)
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({err})") from None
            if not isinstance(record, dict) or "file_name" not in record:
                raise ValueError(f"{path}:{line_no}: each record needs a 'file_name' field")
            _check_inside(directory, record["file_name"], f"{path}:{line_no}")
            if not isinstance(record.get("text", ""), str):
                raise ValueError(f"{path}:{line_no}: 'text' must be a string")
            if "objects" in record:
                knowledge.parse_objects(record["objects"], f"{path}:{line_no}: 'objects'")
            records.append(record)
    return records


def make_builder(data_config):
    """The (not yet prepared) TFDS builder that `data_config` names."""
    data_dir = os.path.expanduser(data_config.data_dir)
    if data_config.name == "shapes":
        cfg = ShapesConfig(resolution=int(data_config.resolution), num_train=int(data_config.num_train),
                           num_val=int(data_config.num_val), num_test=int(data_config.num_test),
                           seed=int(data_config.seed))
        return T2ijaxShapes(config=cfg, data_dir=data_dir, file_format=FILE_FORMAT)
    if data_config.name == "image_text_folder":
        if not data_config.get("folder"):
            raise ValueError("image_text_folder needs data_config.folder (the folder of images and captions)")
        return T2ijaxImageTextFolder(config=FolderConfig(folder=data_config.folder), data_dir=data_dir,
                                     file_format=FILE_FORMAT)
    raise ValueError(f"unknown dataset name {data_config.name!r}; expected 'shapes' or 'image_text_folder'")


def prepare(data_config):
    """Build the dataset if it is not there yet; returns the prepared builder."""
    builder = make_builder(data_config)
    report_path = os.path.join(builder.data_dir, INGEST_REPORT)
    if not os.path.exists(os.path.join(builder.data_dir, "dataset_info.json")):
        builder.download_and_prepare()
        if isinstance(builder, T2ijaxImageTextFolder):
            report = {split: {"num_skipped": len(v), "skipped": v} for split, v in builder.skipped.items()}
            with open(report_path, "w") as f:
                json.dump(report, f, indent=1)
            total = sum(len(v) for v in builder.skipped.values())
            if total:
                logger.warning("image_text_folder: skipped %d unreadable image(s); see %s", total, report_path)
    return builder


def ingest_report(builder) -> dict:
    """{split: {"num_skipped", "skipped": [{"file_name", "error"}]}} for a prepared image_text_folder builder."""
    path = os.path.join(builder.data_dir, INGEST_REPORT)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)
