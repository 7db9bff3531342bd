"""U-Net training step and forward pass: t2ijax (JAX) vs diffusers (PyTorch), same weights, same machine, same run.

The model is the ~18M-parameter SD-structured U-Net below (float32), batch 8 of 32x32x4 latents with a
77x256 context. The training step is MSE(noise prediction, target) + AdamW on both sides.
FLOPs come from XLA's cost analysis of the compiled JAX programs (`jitted.lower(...).compile().cost_analysis()`),
and the same FLOP count is used to express PyTorch's rate.

    python benchmarks/unet_step.py --steps 5 --warmup 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

CONFIG = dict(sample_size=32, in_channels=4, out_channels=4, block_out_channels=[64, 128, 256], layers_per_block=2,
              attention_head_dim=8, cross_attention_dim=256,
              down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
              up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])
BATCH, SIZE, CONTEXT = 8, 32, (77, 256)
LR, WEIGHT_DECAY = 1e-4, 1e-2


def _time(fn, steps: int, warmup: int) -> float:
    """Median seconds per call of `fn` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def bench_jax(path, inputs, steps, warmup):
    from t2ijax.weights import load_unet

    module, params = load_unet(path)
    sample, timesteps, context, target = (jnp.asarray(a) for a in inputs)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)
    opt_state = tx.init(params)

    def loss_fn(p):
        pred = module.apply({"params": p}, sample, timesteps, context)
        return jnp.mean((pred - target) ** 2)

    def train_step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    forward = jax.jit(lambda p: module.apply({"params": p}, sample, timesteps, context))
    t0 = time.perf_counter()
    step_c = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state).compile()
    fwd_c = forward.lower(params).compile()
    compile_s = time.perf_counter() - t0

    state = {"p": params, "s": opt_state}

    def run_step():
        state["p"], state["s"], loss = step_c(state["p"], state["s"])
        loss.block_until_ready()

    step_s = _time(run_step, steps, warmup)
    fwd_s = _time(lambda: fwd_c(state["p"]).block_until_ready(), steps, warmup)
    return dict(params=n_params, step=step_s, fwd=fwd_s, step_flops=_flops(step_c), fwd_flops=_flops(fwd_c),
                compile=compile_s)


def bench_torch(ref, inputs, steps, warmup):
    import torch

    torch.set_num_threads(os.cpu_count())
    sample, timesteps, context, target = (torch.from_numpy(np.ascontiguousarray(a)) for a in inputs)
    sample = sample.permute(0, 3, 1, 2).contiguous()
    target = target.permute(0, 3, 1, 2).contiguous()
    ref.train()
    opt = torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    def run_step():
        opt.zero_grad(set_to_none=True)
        loss = torch.mean((ref(sample, timesteps, context).sample - target) ** 2)
        loss.backward()
        opt.step()

    step_s = _time(run_step, steps, warmup)
    ref.eval()

    def run_fwd():
        with torch.no_grad():
            ref(sample, timesteps, context)

    fwd_s = _time(run_fwd, steps, warmup)
    return dict(step=step_s, fwd=fwd_s)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed iterations (median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations before timing")
    parser.add_argument("--attention", default=None, help="t2ijax attention impl (xla, matmul, fused; default: "
                                                          "the backend's)")
    args = parser.parse_args()
    if args.attention:
        from t2ijax.models.attention import set_attention_impl

        set_attention_impl(args.attention)

    import diffusers
    import torch

    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**CONFIG)
    rng = np.random.default_rng(0)
    inputs = (rng.standard_normal((BATCH, SIZE, SIZE, 4), np.float32),
              rng.integers(0, 1000, (BATCH,)).astype(np.int64),
              rng.standard_normal((BATCH, *CONTEXT), np.float32),
              rng.standard_normal((BATCH, SIZE, SIZE, 4), np.float32))
    with tempfile.TemporaryDirectory() as path:
        ref.save_pretrained(path)
        j = bench_jax(path, inputs, args.steps, args.warmup)
    t = bench_torch(ref, inputs, args.steps, args.warmup)
    torch_params = sum(p.numel() for p in ref.parameters())

    print(f"\nU-Net: {j['params'] / 1e6:.2f}M parameters (PyTorch {torch_params / 1e6:.2f}M); batch {BATCH}, "
          f"{SIZE}x{SIZE}x4 latents, {CONTEXT[0]}x{CONTEXT[1]} context, float32, {jax.devices()[0].platform}, "
          f"{os.cpu_count()} CPU cores; JAX compile {j['compile']:.1f} s; attention "
          f"{__import__('t2ijax.models.attention', fromlist=['x']).attention_impl()}")
    print("FLOPs: XLA cost analysis of the compiled JAX programs "
          f"(step {j['step_flops'] / 1e9:.1f} GFLOP, forward {j['fwd_flops'] / 1e9:.1f} GFLOP)\n")
    print("| pass | JAX s | PyTorch s | JAX img/s | PyTorch img/s | JAX GFLOP/s | PyTorch GFLOP/s "
          "| JAX/PyTorch speed |")
    print("|---|---|---|---|---|---|---|---|")
    for name, key, flops in (("AdamW train step", "step", j["step_flops"]), ("forward", "fwd", j["fwd_flops"])):
        print(f"| {name} | {j[key]:.3f} | {t[key]:.3f} | {BATCH / j[key]:.2f} | {BATCH / t[key]:.2f} | "
              f"{flops / j[key] / 1e9:.1f} | {flops / t[key] / 1e9:.1f} | {t[key] / j[key]:.2f}x |")


if __name__ == "__main__":
    main()
