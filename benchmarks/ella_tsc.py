"""TSC training throughput at the REAL ELLA-SD1.5 size: t2ijax (JAX, jit) vs the PyTorch reference, same run.

The released TSC (66,820,608 parameters: width 768, 6 blocks, 64 latents, input 2048) runs
forward + backward (gradient of a mean-square loss of its output w.r.t. all parameters) on a
batch of B samples of N T5-XL-width text tokens (default B=8, N=128), random timesteps, float32.
Both frameworks use the same weights: the PyTorch reference (tests/test_ella.py's `RefELLA`,
a transcription of upstream `model.py`, eager, all cores) is saved with safetensors and loaded
through `t2ijax.weights.load_ella`; the forward outputs are compared (max relative error).

  python benchmarks/ella_tsc.py [--batch 8] [--tokens 128] [--repeats 5] [--warmup 1] [--wait 120] [--json F]

Timing goes through benchmarks/harness.py: a machine check first (waits up to --wait seconds for an
idle machine, re-checks between rounds, marks rows LOADED), then JAX and PyTorch steps alternately,
one timed step each per round, medians of --repeats rounds after --warmup untimed rounds. JAX's
compilation is timed separately before that (reported in info). Prints examples/s and the ratio
(target: JAX >= 1.2x PyTorch).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)

import harness  # noqa: E402

from t2ijax.weights import load_ella  # noqa: E402

SCRIPT = "python benchmarks/ella_tsc.py"



def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    harness.add_arguments(parser, repeats=5)
    args = parser.parse_args()

    import torch
    from safetensors.torch import save_file
    from test_ella import RefELLA

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
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

    tx, tt = torch.from_numpy(feats), torch.from_numpy(steps)

    def run_jax():
        jax.block_until_ready(grad_step(params, x, t))

    def run_torch():
        ref.zero_grad(set_to_none=True)
        loss = ref(tx, tt).pow(2).mean()
        loss.backward()

    # parity of the forward pass (same weights, same inputs)
    with torch.no_grad():
        out_ref = ref(tx, tt).numpy()
    out = np.asarray(jax.jit(lambda p: module.apply({"params": p}, x, t))(params))
    err = float(np.max(np.abs(out - out_ref)) / np.max(np.abs(out_ref)))
    print(f"TSC params: t2ijax {n_ours:,}  reference {n_params:,}; batch {args.batch} x {args.tokens} tokens x 2048; "
          f"float32; jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(f"forward max|ours - ref| / max|ref| = {err:.2e}; JAX compile (first step) {compile_s:.1f}s")

    check = harness.MachineCheck(wait_s=args.wait)
    times = harness.alternate({"jax": run_jax, "torch": run_torch}, args.repeats, args.warmup, check)

    report = harness.Report("ella_tsc", args, harness.command_line(SCRIPT, parser, args), check)
    report.info.update(params_t2ijax=int(n_ours), params_reference=int(n_params), forward_max_rel_err=err,
                       jax_compile_s=round(compile_s, 2), jax_platform=jax.devices()[0].platform,
                       torch_threads=torch.get_num_threads())
    report.time_row(f"ELLA-SD1.5 TSC ({n_params / 1e6:.1f}M params) training step, fwd+bwd of a mean-square loss "
                    f"w.r.t. all parameters, batch {args.batch} x {args.tokens} tokens x 2048, float32; "
                    f"t2ijax (jit) vs PyTorch reference (eager)",
                    times["jax"], times["torch"], per=args.batch, per_unit="ex/s", target=1.2)
    report.finish()


if __name__ == "__main__":
    main()
