"""Data and evaluation throughput: Grain loaders vs a PyTorch DataLoader, and the Shapes judge.

    .venv/bin/python benchmarks/data_eval.py [--batches 30] [--batch-size 64] [--folder-images 256]
    .venv/bin/python benchmarks/data_eval.py --judges-only     # the two Shapes judges alone

Datasets: Shapes at 32 and 64 (ArrayRecord -> tokenized float batches with
regions), and an image folder of 320x256 JPEGs (decode, resize, centre crop,
[-1, 1], tokenize) at 64. For each:
  torch DataLoader   the same rows and transform through torch.utils.data.DataLoader
                     (num_workers=0, default collate to torch tensors): the PyTorch reference
  grain sync         make_loader with read_threads=0, then jax.device_put of the batch:
                     one core, directly comparable with the row above
  grain 16 threads   make_loader defaults (reader threads overlap decode with the consumer)
judge rR             programmatic judge: detection + all scene-graph questions per image, one image at a time.
CNN judge rR         CNN judge: the network on batches of MAX_BATCH images, then the same questions.

No worker processes anywhere (Grain worker_count=0, DataLoader num_workers=0).
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time

import numpy as np


def _time_batches(iterator, batches: int, batch_size: int, to_device=None) -> float:
    next(iterator)  # warm-up: file handles, tokenizer, first decode
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        if to_device is not None:
            to_device(batch)
    return batches * batch_size / (time.perf_counter() - start)


def _median(values) -> float:
    return float(np.median(values))


def _jax_put():
    import jax

    def put(batch):
        jax.block_until_ready(jax.device_put({k: v for k, v in batch.items()}))
    return put


def _torch_loader(grain_loader, batch_size: int, transform):
    import torch
    from torch.utils.data import DataLoader, Dataset

    class Records(Dataset):
        def __len__(self):
            return len(grain_loader.source)

        def __getitem__(self, i):
            return {k: torch.from_numpy(np.asarray(v)) for k, v in transform(grain_loader.source[i], False).items()}

    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(Records(), batch_size=batch_size, shuffle=True, num_workers=0, drop_last=True,
                        generator=generator)

    def forever():
        while True:
            yield from loader
    return forever()


def _write_folder(root: str, n: int, size=(320, 256)):
    import json

    from PIL import Image

    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "metadata.jsonl"), "w") as f:
        for i in range(n):
            # smooth random images so JPEG sizes are realistic
            small = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
            Image.fromarray(small).resize(size, Image.BICUBIC).save(os.path.join(root, f"{i}.jpg"), quality=90)
            f.write(json.dumps({"file_name": f"{i}.jpg", "text": f"a photo number {i}"}) + "\n")


def _loader_rows(args) -> list:
    """Grain loaders (synchronous, threaded) against a PyTorch DataLoader on the same rows."""
    from t2ijax.data import pipeline
    from t2ijax.data.tfds_builders import prepare

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        configs = []
        for res in (32, 64):
            cfg = pipeline.default_data_config(data_dir=os.path.join(tmp, "tfds"), resolution=res,
                                               num_train=args.shapes_scenes, num_val=8, num_test=8, max_length=96)
            configs.append((f"shapes r{res}", cfg, pipeline._ShapesTransform))
        folder = os.path.join(tmp, "folder")
        _write_folder(folder, args.folder_images)
        cfg = pipeline.default_data_config(name="image_text_folder", folder=folder, data_dir=os.path.join(tmp, "tfds"),
                                           resolution=64, caption="short", max_length=32)
        configs.append(("folder r64 (320x256 JPEG)", cfg, pipeline._FolderTransform))
        for name, cfg, transform in configs:
            t0 = time.perf_counter()
            prepare(cfg)
            build = time.perf_counter() - t0
            # PyTorch reference and synchronous Grain alternate (median of --repeats runs) with no Grain reader
            # thread alive beside them; the threaded loader is measured afterwards.
            sync_cfg = cfg.copy_and_resolve_references()
            sync_cfg.read_threads = 0
            loader = pipeline.make_loader(sync_cfg, split="train", batch_size=args.batch_size, seed=0)
            torch_it = _torch_loader(loader, args.batch_size, transform(cfg, _tokenizer(cfg)))
            torch_rates, grain_rates = [], []
            for _ in range(args.repeats):
                torch_rates.append(_time_batches(torch_it, args.batches, args.batch_size))
                grain_rates.append(_time_batches(loader, args.batches, args.batch_size, _jax_put()))
            rows.append((f"torch DataLoader / {name}", _median(torch_rates), "num_workers=0, same rows + transform"))
            rows.append((f"grain sync / {name}", _median(grain_rates),
                         f"read_threads=0, + device_put; dataset build {build:.1f}s"))
            del loader, torch_it
            gc.collect()
            loader = pipeline.make_loader(cfg, split="train", batch_size=args.batch_size, seed=0)
            rates = [_time_batches(loader, args.batches, args.batch_size, _jax_put()) for _ in range(args.repeats)]
            rows.append((f"grain 16 threads / {name}", _median(rates),
                         "default read_threads=16 (2 cores shared), + device_put"))
            del loader
            gc.collect()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--folder-images", type=int, default=256)
    parser.add_argument("--judge-images", type=int, default=400)
    parser.add_argument("--shapes-scenes", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="loader rates are the median of this many runs")
    parser.add_argument("--judges-only", action="store_true", help="skip the loaders, time the two Shapes judges")
    args = parser.parse_args()

    from t2ijax.data import shapes
    from t2ijax.eval import cnn_judge, judge
    from t2ijax.eval.dpg import shapes_questions

    rows = [] if args.judges_only else _loader_rows(args)

    for res in (32, 64):
        examples = [shapes.make_example(0, "test", i, res) for i in range(args.judge_images)]
        questions = [[q.query for q in shapes_questions(ex.scene.to_graph()).questions] for ex in examples]
        rates, correct, total = [], 0, 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            for ex, qs in zip(examples, questions):
                answers = judge.judge(ex.image, qs)
                correct += sum(answers)
                total += len(answers)
            rates.append(len(examples) / (time.perf_counter() - start))
        rows.append((f"judge r{res}", _median(rates), f"{total / len(examples) / args.repeats:.1f} questions/image, "
                                                      f"accuracy {100 * correct / total:.2f}%"))
        model = cnn_judge.load()
        images = np.stack([ex.image for ex in examples])
        model.detect_batch(images[:cnn_judge.MAX_BATCH])  # compile
        rates, correct, total = [], 0, 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            for found, qs in zip(model.detect_batch(images), questions):
                answers = [judge.answer(q, found) for q in qs]
                correct += sum(answers)
                total += len(answers)
            rates.append(len(examples) / (time.perf_counter() - start))
        rows.append((f"CNN judge r{res}", _median(rates), f"batches of {cnn_judge.MAX_BATCH}, "
                                                          f"accuracy {100 * correct / total:.2f}%"))

    print(f"\n{'benchmark':<46} {'images/s':>10}  notes")
    print("-" * 100)
    for name, rate, note in rows:
        print(f"{name:<46} {rate:>10.1f}  {note}")


def _tokenizer(cfg):
    from t2ijax.data.tokenizer import load_tokenizer

    return load_tokenizer(cfg.tokenizer, int(cfg.max_length))


if __name__ == "__main__":
    main()
