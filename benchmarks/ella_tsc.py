"""TSC training throughput at the REAL ELLA-SD1.5 size: t2ijax (JAX, jit) vs the PyTorch reference, same run.

The released TSC (66,820,608 parameters: width 768, 6 blocks, 64 latents, input 2048) runs
forward + backward (gradient of a mean-square loss of its output w.r.t. all parameters) on a
batch of B samples of N T5-XL-width text tokens (default B=8, N=128) and random timesteps.
Both frameworks use the same weights: the PyTorch reference (tests/test_ella.py's `RefELLA`,
a transcription of upstream `model.py`) is saved with safetensors and loaded through
`t2ijax.weights.load_ella`; the forward outputs are compared.

  .venv/bin/python benchmarks/ella_tsc.py [--batch 8] [--tokens 128] [--iters 3]

Prints examples/s (median over --iters timed steps after one warm-up / compilation step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from t2ijax.weights import load_ella  # noqa: E402


def median_time(fn, iters):
    fn()  # warm-up / compilation
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()

    import torch
    from safetensors.torch import save_file
    from test_ella import RefELLA

    torch.manual_seed(0)
    ref = RefELLA()
    n_params = sum(p.numel() for p in ref.parameters())
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((args.batch, args.tokens, 2048)).astype(np.float32)
    steps = rng.integers(0, 1000, args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tsc.safetensors")
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
        module, params = load_ella(path)
    n_ours = sum(x.size for x in jax.tree.leaves(params))

    def loss_fn(p, x, t):
        return jnp.mean(module.apply({"params": p}, x, t).astype(jnp.float32) ** 2)

    grad_step = jax.jit(jax.value_and_grad(loss_fn))
    x, t = jnp.asarray(feats), jnp.asarray(steps, jnp.int32)
    t0 = time.perf_counter()
    jax.block_until_ready(grad_step(params, x, t))
    compile_s = time.perf_counter() - t0
    jax_s = median_time(lambda: jax.block_until_ready(grad_step(params, x, t)), args.iters)

    tx, tt = torch.from_numpy(feats), torch.from_numpy(steps)

    def torch_step():
        ref.zero_grad(set_to_none=True)
        loss = ref(tx, tt).pow(2).mean()
        loss.backward()

    torch_s = median_time(torch_step, args.iters)
    with torch.no_grad():
        out_ref = ref(tx, tt).numpy()
    out = np.asarray(jax.jit(lambda p: module.apply({"params": p}, x, t))(params))
    err = float(np.max(np.abs(out - out_ref)) / np.max(np.abs(out_ref)))

    print(f"TSC params: t2ijax {n_ours:,}  reference {n_params:,}; batch {args.batch} x {args.tokens} tokens x 2048; "
          f"float32; jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(f"forward max|ours - ref| / max|ref| = {err:.2e}; JAX compile (first step) {compile_s:.1f}s")
    print()
    print("| framework | fwd+bwd step (s) | examples/s |")
    print("|---|---|---|")
    print(f"| t2ijax (JAX, jit) | {jax_s:.3f} | {args.batch / jax_s:.2f} |")
    print(f"| PyTorch reference (eager) | {torch_s:.3f} | {args.batch / torch_s:.2f} |")


if __name__ == "__main__":
    main()
