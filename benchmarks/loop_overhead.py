"""Overhead of the full train loop (data, metrics, EMA, async checkpoints) over the bare jitted step.

    python benchmarks/loop_overhead.py [--steps 300] [--log_every 50] [--checkpoint_every 50]
                                       [--repeats 5] [--warmup 1] [--wait 120] [--json out.json]

Model: the toy MLP denoiser (t2ijax/methods/toy.py) on synthetic data, 16x16x3 pixels, hidden 512,
depth 2, global batch 32, AdamW + clipping + EMA, sized so one step takes a few milliseconds on CPU.
Variants, each one call of a block of --steps steps:
  bare jit step    the AOT-compiled step over pre-built device batches, no host work (set up and
                   compiled once; each call runs --steps steps and blocks on the result)
  full loop        t2ijax.train.loop.train for --steps steps in a fresh workdir: loader + prefetch thread
                   + global-batch assembly + EMA + metrics every --log_every steps (JSONL + TensorBoard),
                   no checkpoint inside the measured window
  full, ckpt/N     the same with an async Orbax checkpoint every N steps (far more often than a
                   real run: it measures the cost of one save)
  torch eager      the same MLP + AdamW step in PyTorch (CPU, set up once), the PyTorch column of the
                   bare-step row
A full-loop call includes set-up, compilation and the end-of-run checkpoint, so its row reports the
steady-state window inside the call: from the first metrics step (--log_every) to the last one before the
end (per = the steps in between). Both ends are metrics steps, where the loop reads the step's metrics back
to the host and so waits for the device; a window ending anywhere else would time only the asynchronous
dispatch. The whole-call times are kept in the JSON's info. Wall time is what a user sees; CPU time
(time.process_time of this process, all threads) is the work each variant does, reported per step beside
each row (jax_cpu_ms_per_step, torch_cpu_ms_per_step) and in the info.

Timing goes through benchmarks/harness.py: a machine check (idle CPUs, calibration matmul) before
timing and between rounds; the four variants alternate, one call each per round, after --warmup
untimed rounds; rows report the median of --repeats rounds (every sample kept in the JSON).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import harness  # noqa: E402
from t2ijax import sharding as shd  # noqa: E402
from t2ijax.config_utils import import_sibling  # noqa: E402
from t2ijax.train import loop  # noqa: E402

common = import_sibling(os.path.join(REPO, "configs", "common.py"), "common")
SCRIPT = "python benchmarks/loop_overhead.py"


def make_config(steps, log_every, checkpoint_every=None):
    c = common.toy_config(total_steps=steps, batch_size=32, log_every=log_every,
                          checkpoint_every=checkpoint_every or steps,
                          keep_last=2, progress=False, ema_decay=0.999)
    c.data.resolution = 16
    c.model.update(width=64, hidden=512, depth=2)
    return c


def bare_runner(config, steps):
    """(run, cpu_s, compile_s): run() does `steps` AOT-compiled steps over pre-built device batches."""
    s = loop.setup(config)
    loader = loop.make_loader(config, split="train", batch_size=config.batch_size, seed=0)
    batches = [shd.global_batch(next(loader), s.shard_config) for _ in range(8)]
    compiled, compile_s = loop.compile_step(s, batches[0])
    holder, cpu_s = {"state": s.state}, []

    def run():
        state, c0 = holder["state"], time.process_time()
        for i in range(steps):
            state, m = compiled(state, s.frozen, batches[i % 8])
        jax.block_until_ready((state, m))
        cpu_s.append(time.process_time() - c0)
        holder["state"] = state
    return run, cpu_s, compile_s


def window(steps, log_every):
    """First and last step of the full-loop window: metrics steps (host syncs), the last one before the end."""
    return log_every, log_every * ((steps - 1) // log_every)


def full_runner(config, steps):
    """(run, windows): run() is one loop.train of `steps` steps; windows gets its steady-state (wall s, CPU s)."""
    start, end = window(steps, int(config.log_every))
    windows = []

    def run():
        marks = {}

        def on_batch(step, _):  # called before step `step`, after the metrics (a host sync) of the step before
            if step == start:
                marks["t0"], marks["c0"] = time.perf_counter(), time.process_time()
            if step == end:  # before the last steps and the final save
                marks["t1"], marks["c1"] = time.perf_counter(), time.process_time()
        with tempfile.TemporaryDirectory() as workdir:
            loop.train(config, workdir, batch_callback=on_batch)
        windows.append((marks["t1"] - marks["t0"], marks["c1"] - marks["c0"]))
    return run, windows


def param_bytes(config):
    r, w, h, d = config.data.resolution, config.model.width, config.model.hidden, config.model.depth
    pixels = r * r * 3
    n = config.data.vocab_size * w + (pixels + 2 * w + 1) * h + d * (h + 1) * h + (h + 1) * pixels
    return 4 * n


def torch_runner(config, steps):
    """(run, cpu_s): run() does `steps` PyTorch eager steps of the same MLP + AdamW."""
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
    cpu_s = []

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

    def run():
        c0 = time.process_time()
        for _ in range(steps):
            step()
        cpu_s.append(time.process_time() - c0)
    return run, cpu_s



def main():
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="steps per timed call of each variant")
    parser.add_argument("--log_every", type=int, default=50, help="metrics cadence of the full loop (its "
                                                                     "window runs from one metrics step to another)")
    parser.add_argument("--checkpoint_every", type=int, default=50, help="cadence of the frequent-checkpoint row")
    harness.add_arguments(parser, repeats=5)
    args = parser.parse_args()
    start, end = window(args.steps, args.log_every)
    if end <= start:
        parser.error("--steps must be more than 2 x --log_every (the full-loop window runs between metrics steps)")
    config = make_config(args.steps, args.log_every)
    frequent = make_config(args.steps, args.log_every, checkpoint_every=args.checkpoint_every)
    n = end - start  # steps in a full-loop window

    bare, bare_cpu, compile_s = bare_runner(config, args.steps)
    full, full_windows = full_runner(config, args.steps)
    ckpt, ckpt_windows = full_runner(frequent, args.steps)
    eager, eager_cpu = torch_runner(config, args.steps)

    check = harness.MachineCheck(wait_s=args.wait)
    report = harness.Report("loop_overhead", args, harness.command_line(SCRIPT, parser, args), check)
    ck = f"full, ckpt/{args.checkpoint_every}"
    times = harness.alternate({"bare": bare, "full": full, ck: ckpt, "torch": eager}, args.repeats, args.warmup,
                              check)
    w = args.warmup  # the runners also recorded the warm-up calls; keep the timed ones
    bare_cpu, eager_cpu = bare_cpu[w:], eager_cpu[w:]
    full_windows, ckpt_windows = full_windows[w:], ckpt_windows[w:]

    def cpu_ms(cpu_s, per):
        return round(1000 * statistics.median(cpu_s) / per, 3)

    model = (f"toy MLP denoiser 16x16x3, hidden 512, depth 2 ({param_bytes(config) / 4 / 1e6:.2f}M params), "
             f"batch 32, AdamW + clip")
    bare_row = report.time_row(
        f"bare jitted train step (AOT, pre-built device batches, no host work), {model}, {args.steps} steps per "
        f"call, vs the same MLP + AdamW step in PyTorch eager", times["bare"], times["torch"], per=args.steps,
        per_unit="steps/s", target=None, jax_cpu_ms_per_step=cpu_ms(bare_cpu, args.steps),
        torch_cpu_ms_per_step=cpu_ms(eager_cpu, args.steps))
    rows = {}
    for key, windows, what in (
            ("full", full_windows, f"full train loop (loader + prefetch thread + EMA + metrics/JSONL/TensorBoard "
                                   f"every {args.log_every} steps, no checkpoint in the window)"),
            (ck, ckpt_windows, f"full train loop + async Orbax checkpoint every {args.checkpoint_every} steps")):
        rows[key] = report.time_row(
            f"{what}, {model}: steady state, steps {start + 1}-{end} of a {args.steps}-step loop.train",
            [wall for wall, _ in windows], None, per=n, per_unit="steps/s", target=None,
            jax_cpu_ms_per_step=cpu_ms([c for _, c in windows], n))

    bare_step, bare_c = bare_row["jax_s"] / args.steps, bare_row["jax_cpu_ms_per_step"]
    full_step, full_c = rows["full"]["jax_s"] / n, rows["full"]["jax_cpu_ms_per_step"]
    ckpt_c = rows[ck]["jax_cpu_ms_per_step"]
    saves = sum(1 for k in range(start + 1, end + 1) if k % args.checkpoint_every == 0)
    report.info.update(
        devices=f"{jax.device_count()} x {jax.devices()[0].device_kind}", steps_per_call=args.steps,
        full_loop_window=[start, end], log_every=args.log_every, checkpoint_every=args.checkpoint_every,
        step_compile_s=round(compile_s, 3), torch_threads=torch.get_num_threads(),
        cpu_ms_per_step=dict(bare=bare_c, full=full_c, **{ck: ckpt_c}, torch=bare_row["torch_cpu_ms_per_step"]),
        full_loop_overhead_vs_bare_pct=dict(wall=round(100 * (full_step / bare_step - 1), 1),
                                            cpu=round(100 * (full_c / bare_c - 1), 1)),
        checkpoint_mib=round(4 * param_bytes(config) / 2**20, 1),  # params + 2 AdamW moments + EMA
        checkpoint_saves_in_window=saves,
        checkpoint_cpu_ms_each=round((ckpt_c - full_c) * n / saves, 1) if saves else None,
        full_loop_call_s={"full": times["full"], ck: times[ck]},  # whole loop.train calls: set-up, compile, save
    )
    print(f"full-loop overhead vs bare step: {report.info['full_loop_overhead_vs_bare_pct']}; "
          f"CPU ms/step {report.info['cpu_ms_per_step']}")
    report.finish()


if __name__ == "__main__":
    main()
