"""Data and evaluation throughput: Grain loaders vs a PyTorch DataLoader, and the two Shapes judges.

    python benchmarks/data_eval.py [--batches 30] [--batch-size 64] [--folder-images 256] [--shapes-scenes 1024]
                                   [--judge-images 400] [--repeats 5] [--warmup 1] [--wait 120] [--json out.json]
    python benchmarks/data_eval.py --judges-only     # the two Shapes judges alone

Datasets: Shapes at 32 and 64 (ArrayRecord -> tokenized float batches with
regions), and an image folder of 320x256 JPEGs (decode, resize, centre crop,
[-1, 1], tokenize) at 64. For each, one call reads --batches batches of --batch-size:
  grain sync vs torch DataLoader   make_loader with read_threads=0, then jax.device_put of the batch
                     (JAX column), against the same rows and transform through torch.utils.data.DataLoader
                     (num_workers=0, default collate to torch tensors; PyTorch column): one core each,
                     alternated, with no Grain reader thread alive beside them
  grain threads      make_loader defaults (reader threads overlap decode with the consumer), + device_put;
                     measured on its own afterwards (its threads would otherwise read ahead while the
                     others are timed), no PyTorch counterpart
Judges (no PyTorch counterpart; the two alternate with each other), per resolution, one call = every image:
  judge rR           programmatic judge: detection + all scene-graph questions per image, one image at a time
  CNN judge rR       CNN judge: the network on batches of MAX_BATCH images, then the same questions
                     (its compilation happens in the --warmup rounds)

No worker processes anywhere (Grain worker_count=0, DataLoader num_workers=0).
Timing goes through benchmarks/harness.py: a machine check (idle CPUs, calibration matmul) before timing
and between rounds; alternated variants, one call each per round, after --warmup untimed rounds; rows report
the median of --repeats rounds as images/s (every sample kept in the JSON).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import harness  # noqa: E402

SCRIPT = "python benchmarks/data_eval.py"



def _batches_fn(iterator, batches: int, to_device=None):
    """A callable that reads `batches` batches from `iterator` (and puts each on the device)."""
    def run():
        for _ in range(batches):
            batch = next(iterator)
            if to_device is not None:
                to_device(batch)
    return run


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


def _loader_rows(args, report, check) -> None:
    """Grain loaders (synchronous, threaded) against a PyTorch DataLoader on the same rows."""
    from t2ijax.data import pipeline
    from t2ijax.data.tfds_builders import prepare

    images = args.batches * args.batch_size
    read = f"{args.batches} batches of {args.batch_size} per call"
    build_s = report.info.setdefault("dataset_build_s", {})
    with tempfile.TemporaryDirectory() as tmp:
        configs = []
        for res in (32, 64):
            cfg = pipeline.default_data_config(data_dir=os.path.join(tmp, "tfds"), resolution=res,
                                               num_train=args.shapes_scenes, num_val=8, num_test=8, max_length=96)
            configs.append((f"Shapes r{res} ({args.shapes_scenes} scenes, ArrayRecord -> tokenized batches "
                            f"with regions)", f"shapes r{res}", cfg, pipeline._ShapesTransform))
        folder = os.path.join(tmp, "folder")
        _write_folder(folder, args.folder_images)
        cfg = pipeline.default_data_config(name="image_text_folder", folder=folder, data_dir=os.path.join(tmp, "tfds"),
                                           resolution=64, caption="short", max_length=32)
        configs.append((f"image folder r64 ({args.folder_images} 320x256 JPEGs: decode, resize, crop, tokenize)",
                        "folder r64", cfg, pipeline._FolderTransform))
        for what, key, cfg, transform in configs:
            t0 = time.perf_counter()
            prepare(cfg)
            build_s[key] = round(time.perf_counter() - t0, 2)
            # PyTorch reference and synchronous Grain alternate with no Grain reader thread alive beside them;
            # the threaded loader is measured afterwards.
            sync_cfg = cfg.copy_and_resolve_references()
            sync_cfg.read_threads = 0
            loader = pipeline.make_loader(sync_cfg, split="train", batch_size=args.batch_size, seed=0)
            torch_it = _torch_loader(loader, args.batch_size, transform(cfg, _tokenizer(cfg)))
            times = harness.alternate({"jax": _batches_fn(loader, args.batches, _jax_put()),
                                       "torch": _batches_fn(torch_it, args.batches)},
                                      args.repeats, args.warmup, check)
            report.time_row(f"{what}: Grain sync loader (read_threads=0) + device_put vs torch DataLoader "
                            f"(num_workers=0, same rows + transform), one core, {read}",
                            times["jax"], times["torch"], per=images, per_unit="img/s", target=None)
            del loader, torch_it
            gc.collect()
            loader = pipeline.make_loader(cfg, split="train", batch_size=args.batch_size, seed=0)
            times = harness.alternate({"jax": _batches_fn(loader, args.batches, _jax_put())},
                                      args.repeats, args.warmup, check)
            report.time_row(f"{what}: Grain loader with its default {int(cfg.read_threads)} reader threads "
                            f"(on {os.cpu_count()} cores) + device_put, {read}, measured alone (no PyTorch "
                            f"counterpart)", times["jax"], None, per=images, per_unit="img/s", target=None,
                            read_threads=int(cfg.read_threads))
            del loader
            gc.collect()


def _judge_rows(args, report, check) -> None:
    """The programmatic and the CNN Shapes judge, alternated with each other, per resolution."""
    from t2ijax.data import shapes
    from t2ijax.eval import cnn_judge, judge
    from t2ijax.eval.dpg import shapes_questions

    model = cnn_judge.load()
    for res in (32, 64):
        examples = [shapes.make_example(0, "test", i, res) for i in range(args.judge_images)]
        questions = [[q.query for q in shapes_questions(ex.scene.to_graph()).questions] for ex in examples]
        images = np.stack([ex.image for ex in examples])
        counts = {"judge": [0, 0], "cnn": [0, 0]}  # correct, total answers over every call

        def tally(name, answers):
            counts[name][0] += sum(answers)
            counts[name][1] += len(answers)

        def run_judge():
            for ex, qs in zip(examples, questions):
                tally("judge", judge.judge(ex.image, qs))

        def run_cnn():
            for found, qs in zip(model.detect_batch(images), questions):
                tally("cnn", [judge.answer(q, found) for q in qs])

        times = harness.alternate({"judge": run_judge, "cnn": run_cnn}, args.repeats, args.warmup, check)
        per_image = sum(map(len, questions)) / len(examples)
        scenes = f"{len(examples)} Shapes test-split renders at {res}x{res}, {per_image:.1f} questions/image"
        for name, what in (("judge", f"programmatic Shapes judge r{res}: detection + all scene-graph questions, "
                                     f"one image at a time, {scenes}"),
                           ("cnn", f"CNN Shapes judge r{res}: the network on batches of {cnn_judge.MAX_BATCH} "
                                   f"images, then the same questions, {scenes}")):
            correct, total = counts[name]
            report.time_row(what, times[name], None, per=len(examples), per_unit="img/s", target=None,
                            questions_per_image=round(per_image, 2), accuracy_pct=round(100 * correct / total, 2))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=30, help="batches per timed call of a loader")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--folder-images", type=int, default=256)
    parser.add_argument("--judge-images", type=int, default=400)
    parser.add_argument("--shapes-scenes", type=int, default=1024)
    parser.add_argument("--judges-only", action="store_true", help="skip the loaders, time the two Shapes judges")
    harness.add_arguments(parser, repeats=5)
    args = parser.parse_args()

    import torch

    check = harness.MachineCheck(wait_s=args.wait)
    report = harness.Report("data_eval", args, harness.command_line(SCRIPT, parser, args), check)
    report.info.update(processes="one: Grain worker_count=0, DataLoader num_workers=0",
                       torch_threads=torch.get_num_threads(), judge_images=args.judge_images)
    if not args.judges_only:
        report.info.update(batches_per_call=args.batches, batch_size=args.batch_size,
                           shapes_scenes=args.shapes_scenes, folder_images=args.folder_images)
        _loader_rows(args, report, check)
    _judge_rows(args, report, check)
    report.finish()


def _tokenizer(cfg):
    from t2ijax.data.tokenizer import load_tokenizer

    return load_tokenizer(cfg.tokenizer, int(cfg.max_length))


if __name__ == "__main__":
    main()
