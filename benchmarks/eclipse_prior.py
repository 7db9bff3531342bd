"""ECLIPSE prior training throughput at the REAL size: t2ijax (JAX, jit) vs the released module in PyTorch, same run.

The Kandinsky 2.2 prior (34,193,152 parameters: 16 heads x 32, 10 layers, E=1280, 77 text tokens) takes one
AdamW step on the ECLIPSE loss (projection MSE + 0.2 x the contrastive loss at tau 0.01) for a batch of B random
CLIP features (default B=32), float32. Both frameworks start from the same weights: the PyTorch rendering of the
release (tests/torch_eclipse_prior.py, eager, all cores) is saved with `save_pretrained` and loaded through
`t2ijax.weights.load_eclipse_prior`; the forward outputs are compared (max relative error).

  python benchmarks/eclipse_prior.py [--batch 32] [--dim 1280] [--repeats 5] [--warmup 1] [--wait 120] [--json F]

Timing goes through benchmarks/harness.py (idle check, alternated rounds, medians); target JAX >= 1.2x PyTorch.
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
import optax

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)

import harness  # noqa: E402

from t2ijax.methods.eclipse import contrastive_loss, projection_loss  # noqa: E402
from t2ijax.weights import load_eclipse_prior  # noqa: E402

SCRIPT = "python benchmarks/eclipse_prior.py"
LAMBDA, TAU, LR = 0.2, 0.01, 5e-5


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dim", type=int, default=1280)
    harness.add_arguments(parser, repeats=5)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from torch_eclipse_prior import EclipsePriorTorch

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    ref = EclipsePriorTorch(num_attention_heads=16, attention_head_dim=32, num_layers=10, embedding_dim=args.dim)
    n_params = sum(p.numel() for p in ref.parameters())
    rng = np.random.default_rng(0)
    b, e = args.batch, args.dim
    noise = rng.standard_normal((b, e)).astype(np.float32)
    text = rng.standard_normal((b, e)).astype(np.float32)
    states = rng.standard_normal((b, 77, e)).astype(np.float32)
    mask = (np.arange(77)[None] < rng.integers(5, 78, (b, 1))).astype(np.int64)
    image = rng.standard_normal((b, e)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        module, params = load_eclipse_prior(tmp)
    n_ours = sum(x.size for x in jax.tree.leaves(params))

    tx = optax.adamw(LR, weight_decay=0.01)

    def loss_fn(p, batch):
        n, t, s, m, z = batch
        pred = module.apply({"params": p}, n, t, s, m)
        return projection_loss(pred, z) + LAMBDA * contrastive_loss(pred, t, 1.0 / TAU)[0]

    def step(p, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(p, batch)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    batch = tuple(jnp.asarray(a) for a in (noise, text, states, mask, image))
    state = {"p": params, "o": tx.init(params)}
    forward = np.asarray(jax.jit(lambda p: module.apply({"params": p}, *batch[:4]))(params))
    t0 = time.perf_counter()
    state["p"], state["o"], _ = jax.block_until_ready(step(state["p"], state["o"], batch))
    compile_s = time.perf_counter() - t0

    t_batch = tuple(torch.from_numpy(a) for a in (noise, text, states, mask, image))
    opt = torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=0.01)
    with torch.no_grad():
        out_ref = ref(*t_batch[:4]).numpy()
    err = float(np.max(np.abs(forward - out_ref)) / np.max(np.abs(out_ref)))
    labels = torch.arange(b)

    def run_torch():
        n, t, s, m, z = t_batch
        pred = ref(n, t, s, m)
        logits = F.normalize(pred, dim=-1) @ F.normalize(t, dim=-1).T / TAU
        loss = F.mse_loss(pred, z) + LAMBDA * F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def run_jax():
        state["p"], state["o"], loss = step(state["p"], state["o"], batch)
        jax.block_until_ready(loss)

    print(f"prior params: t2ijax {n_ours:,}  reference {n_params:,}; batch {b}, E={e}, 77 tokens; float32; "
          f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(f"forward max|ours - ref| / max|ref| = {err:.2e}; JAX compile (first step) {compile_s:.1f}s")

    check = harness.MachineCheck(wait_s=args.wait)
    times = harness.alternate({"jax": run_jax, "torch": run_torch}, args.repeats, args.warmup, check)
    report = harness.Report("eclipse_prior", args, harness.command_line(SCRIPT, parser, args), check)
    report.info.update(params_t2ijax=int(n_ours), params_reference=int(n_params), forward_max_rel_err=err,
                       jax_compile_s=round(compile_s, 2), jax_platform=jax.devices()[0].platform,
                       torch_threads=torch.get_num_threads())
    report.time_row(f"ECLIPSE prior ({n_params / 1e6:.1f}M params, E={e}) AdamW step on the ECLIPSE loss, batch {b} "
                    f"x 77 tokens, float32; t2ijax (jit) vs the released module in PyTorch (eager)",
                    times["jax"], times["torch"], per=b, per_unit="ex/s", target=1.2)
    report.finish()


if __name__ == "__main__":
    main()
