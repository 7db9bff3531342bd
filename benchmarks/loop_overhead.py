"""Overhead of the full train loop (data, metrics, EMA, async checkpoints) over the bare jitted step.

    .venv/bin/python benchmarks/loop_overhead.py [--steps 300] [--repeats 3]

Model: the toy MLP denoiser (t2ijax/methods/toy.py) on synthetic data, sized so one step
takes a few milliseconds on CPU. Columns:
  bare jit step    the AOT-compiled step over pre-built device batches, no host work
  full loop        t2ijax.train.loop.train: loader + prefetch thread + global-batch assembly +
                   EMA + metrics every 50 steps (JSONL + TensorBoard), no checkpoint inside the window
  full, ckpt/N     the same with an async Orbax checkpoint every N steps (far more often than a
                   real run: it measures the cost of one save)
  torch eager      the same MLP + AdamW step in PyTorch (CPU), for reference
The full-loop time is measured in steady state, from its sixth step to its last one
(so not the end-of-run checkpoint). Wall time is what a user sees; CPU time (of this
process, all threads) is the work each variant does, which stays meaningful on a
machine shared with other jobs.
"""

import argparse
import os
import sys
import tempfile
import time

import jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from t2ijax import sharding as shd  # noqa: E402
from t2ijax.config_utils import import_sibling  # noqa: E402
from t2ijax.train import loop  # noqa: E402

common = import_sibling(os.path.join(REPO, "configs", "common.py"), "common")


def make_config(steps, checkpoint_every=None):
    c = common.toy_config(total_steps=steps, batch_size=32, log_every=50, checkpoint_every=checkpoint_every or steps,
                          keep_last=2, progress=False, ema_decay=0.999)
    c.data.resolution = 16
    c.model.update(width=64, hidden=512, depth=2)
    return c


def bare_steps_per_s(config, steps):
    s = loop.setup(config)
    loader = loop.make_loader(config, split="train", batch_size=config.batch_size, seed=0)
    batches = [shd.global_batch(next(loader), s.shard_config) for _ in range(8)]
    compiled, _ = loop.compile_step(s, batches[0])
    state = s.state
    for i in range(5):
        state, m = compiled(state, s.frozen, batches[i % 8])
    jax.block_until_ready(state)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(steps):
        state, m = compiled(state, s.frozen, batches[i % 8])
    jax.block_until_ready((state, m))
    return steps / (time.perf_counter() - t0), 1000 * (time.process_time() - c0) / steps


def full_steps_per_s(config, steps):
    with tempfile.TemporaryDirectory() as workdir:
        marks = {}

        def on_batch(step, _):
            if step == 5:
                marks["t0"], marks["c0"] = time.perf_counter(), time.process_time()
            if step == steps - 1:  # steady state: stop the clock before the last step and the final save
                marks["t1"], marks["c1"] = time.perf_counter(), time.process_time()
        loop.train(config, workdir, batch_callback=on_batch)
        n = steps - 1 - 5
        return n / (marks["t1"] - marks["t0"]), 1000 * (marks["c1"] - marks["c0"]) / n


def param_bytes(config):
    r, w, h, d = config.data.resolution, config.model.width, config.model.hidden, config.model.depth
    pixels = r * r * 3
    n = config.data.vocab_size * w + (pixels + 2 * w + 1) * h + d * (h + 1) * h + (h + 1) * pixels
    return 4 * n


def torch_steps_per_s(config, steps):
    import torch
    torch.manual_seed(0)
    r, w, h = config.data.resolution, config.model.width, config.model.hidden
    pixels = r * r * 3
    emb = torch.nn.Embedding(config.data.vocab_size, w)
    layers = torch.nn.ModuleList([torch.nn.Linear(pixels + 2 * w, h)] +
                                 [torch.nn.Linear(h, h) for _ in range(config.model.depth)] +
                                 [torch.nn.Linear(h, pixels)])
    params = list(emb.parameters()) + list(layers.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    b = config.batch_size
    x = torch.randn(b, pixels)
    ids = torch.randint(0, config.data.vocab_size, (b, config.data.max_length))
    temb = torch.randn(b, w)

    def step():
        text = emb(ids).mean(1)
        hdn = layers[0](torch.cat([x, text, temb], -1))
        for layer in layers[1:-1]:
            hdn = hdn + layer(torch.nn.functional.silu(hdn))
        loss = ((layers[-1](torch.nn.functional.silu(hdn)) - x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    for _ in range(5):
        step()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t0), 1000 * (time.process_time() - c0) / steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint_every", type=int, default=50, help="cadence of the frequent-checkpoint row")
    args = parser.parse_args()
    config = make_config(args.steps)
    frequent = make_config(args.steps, checkpoint_every=args.checkpoint_every)
    bare, full, full_ckpt, torch_rate = [], [], [], []
    for _ in range(args.repeats):
        bare.append(bare_steps_per_s(config, args.steps))
        full.append(full_steps_per_s(config, args.steps))
        full_ckpt.append(full_steps_per_s(frequent, args.steps))
        torch_rate.append(torch_steps_per_s(config, args.steps))
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; toy MLP, batch {config.batch_size}, "
          f"{args.steps} steps, best of {args.repeats}")
    print(f"{'variant':<18}{'steps/s (wall)':>16}{'ms/step (wall)':>16}{'CPU ms/step':>14}")
    rows = (("bare jit step", bare), ("full loop", full), (f"full, ckpt/{args.checkpoint_every}", full_ckpt),
            ("torch eager", torch_rate))
    best = {}
    for name, runs in rows:
        rate, cpu = max(r[0] for r in runs), min(r[1] for r in runs)
        best[name] = (rate, cpu)
        print(f"{name:<18}{rate:>16.1f}{1000 / rate:>16.2f}{cpu:>14.2f}")
    (bw, bc), (fw, fc) = best["bare jit step"], best["full loop"]
    cc = best[f"full, ckpt/{args.checkpoint_every}"][1]
    print(f"full-loop overhead vs bare step: wall {100 * (bw / fw - 1):.1f}%, CPU time {100 * (fc / bc - 1):.1f}%")
    saves = args.steps // args.checkpoint_every
    print(f"one async checkpoint of params+opt+EMA ({4 * param_bytes(config) / 2**20:.1f} MiB) costs about "
          f"{(cc - fc) * (args.steps - 6) / max(saves - 1, 1):.0f} CPU ms")
    print("all repeats (steps/s wall, CPU ms/step):", {name: [(round(w, 1), round(c, 2)) for w, c in runs]
                                                       for name, runs in rows})

if __name__ == "__main__":
    main()
