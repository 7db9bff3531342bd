"""Attention alone, forward + backward, float32: each t2ijax implementation vs PyTorch's SDPA, alternated.

Shapes are the 18M U-Net's of benchmarks/unet_step.py (batch 8, 8 heads; self-attention at 32x32, 16x16
and 8x8 latents, cross-attention to 77 tokens) plus larger ones that place the CPU crossover between the
batched-einsum ("xla") and per-head ("matmul") forms (t2ijax.models.attention.MATMUL_MIN_LOGITS).
The loss is sum(out * g) for a fixed random g; gradients w.r.t. q, k and v.

    python benchmarks/attention.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import harness  # noqa: E402
from t2ijax.models import attention as attention_module  # noqa: E402

# (Lq, Lk, head dim): the U-Net's, then the crossover probes and the lead (1024 tokens x 32)
SHAPES = [(1024, 1024, 8), (256, 256, 16), (64, 64, 32), (1024, 77, 8), (256, 77, 16), (64, 77, 32),
          (512, 512, 8), (1024, 256, 8), (4096, 77, 8), (1024, 1024, 32)]
BATCH, HEADS = 8, 8


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_arguments(parser, repeats=5)
    parser.add_argument("--shapes", type=int, default=len(SHAPES), help="time only the first N shapes")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count())
    check = harness.MachineCheck(wait_s=args.wait)
    report = harness.Report("attention", args, "python benchmarks/attention.py", check)
    report.info = dict(batch=BATCH, heads=HEADS, matmul_min_logits=attention_module.MATMUL_MIN_LOGITS,
                       torch_threads=torch.get_num_threads())
    for lq, lk, d in SHAPES[:args.shapes]:
        rng = np.random.default_rng(0)
        q, g = (rng.standard_normal((BATCH, lq, HEADS, d), np.float32) for _ in range(2))
        k, v = (rng.standard_normal((BATCH, lk, HEADS, d), np.float32) for _ in range(2))
        jq, jk, jv, jg = map(jnp.asarray, (q, k, v, g))
        default = "matmul" if lq * lk >= attention_module.MATMUL_MIN_LOGITS else "xla"
        fns = {}
        for impl in ("xla", "matmul"):
            # the per-head form is forced here for every shape: its dispatcher would send small ones to "xla"
            core = attention_module._matmul_core if impl == "matmul" else None

            def loss(q, k, v, core=core):
                if core is None:
                    out = attention_module.attention(q, k, v, impl="xla")
                else:
                    heads_first = attention_module._heads_first
                    out = attention_module._heads_last(
                        core(heads_first(q), heads_first(k), heads_first(v), d ** -0.5), BATCH, HEADS)
                return jnp.sum(out * jg)

            grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
            fns[impl] = lambda grad=grad: jax.block_until_ready(grad(jq, jk, jv))
        tq, tk, tv, tg = (torch.from_numpy(x).permute(0, 2, 1, 3).contiguous().requires_grad_() for x in (q, k, v, g))

        def torch_step():
            for t in (tq, tk, tv):
                t.grad = None
            (torch.nn.functional.scaled_dot_product_attention(tq, tk, tv) * tg).sum().backward()

        fns["torch"] = torch_step
        times = harness.alternate(fns, args.repeats, args.warmup, check)
        what = f"{lq}x{lk} tokens, head dim {d}, fwd+bwd"
        row = report.time_row(f"{what}: default (`{default}`)", times[default], times["torch"])
        other = "xla" if default == "matmul" else "matmul"
        row.update(other_impl=other, other_s=harness.median(times[other]),
                   default_over_other_speed=harness.median(times[other]) / harness.median(times[default]))
        report.time_row(f"{what}: `{other}`", times[other], times["torch"], detail=True)
    report.finish()


if __name__ == "__main__":
    main()
