"""Training throughput of an SD-size U-Net on the GPUs/TPUs of this host (issue #12), in bfloat16 with fused attention.

Builds the U-Net of `--model` (SD-1.5 by default: 860M parameters, 64x64x4 latents for 512 px, 77x768
context) born sharded over a mesh of all local devices (`--mesh data` replicates the parameters,
`--mesh fsdp` shards them), and times the jitted, donated AdamW step on random latents and context:
step time, images/s per chip, TFLOP/s per chip from XLA's cost analysis, and MFU against the chip's dense
bf16 peak (t2ijax.train.metrics). Compare with benchmarks/sd15_scale.py's expectation and the published
anchors in benchmarks/notes.md. Medians of --steps timed steps after --warmup.

    python launch/benchmark_accelerator.py                          # SD-1.5, batch 8 per chip, data parallel
    python launch/benchmark_accelerator.py --mesh fsdp --per-chip-batch 16 --remat
    python launch/benchmark_accelerator.py --model tiny --steps 3   # a smoke run that fits a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))

import common  # noqa: E402

from t2ijax import sharding as shd  # noqa: E402
from t2ijax.models.attention import attention_impl, set_attention_impl  # noqa: E402
from t2ijax.models.unet import UNet2DConditionModel  # noqa: E402
from t2ijax.train.metrics import device_peak_flops  # noqa: E402

MODELS = {
    "sd15": dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280, 1280],
                 layers_per_block=2, attention_head_dim=8, cross_attention_dim=768,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3),
    "tiny": dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=[32, 64], layers_per_block=1,
                 attention_head_dim=4, cross_attention_dim=64, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], norm_num_groups=8),
}
CONTEXT_LEN = 77


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="sd15")
    parser.add_argument("--per-chip-batch", type=int, default=8)
    parser.add_argument("--mesh", choices=sorted(common.MESH_PRESETS), default="data")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--attention", default=None, help="attention impl (default: the backend's; e.g. cudnn)")
    parser.add_argument("--remat", action="store_true", help="rematerialise each block in the backward pass")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args()
    if args.attention:
        set_attention_impl(args.attention)
    cfg = MODELS[args.model]
    devices = jax.devices()
    config = ml_collections.ConfigDict(dict(mesh=dict(common.MESH_PRESETS[args.mesh]),
                                            logical_axis_rules=dict(common.LOGICAL_AXIS_RULES)))
    shard_config = shd.ShardConfig.from_config(config, devices=devices)
    batch = args.per_chip_batch * len(devices)
    size, ctx_dim = cfg["sample_size"], cfg["cross_attention_dim"]
    module = UNet2DConditionModel.from_config(cfg, dtype=jnp.dtype(args.dtype), remat=args.remat)

    def init(rng):
        return module.init(rng, jnp.zeros((1, size, size, 4)), jnp.zeros((1,), jnp.int32),
                           jnp.zeros((1, CONTEXT_LEN, ctx_dim)))

    with shard_config.active():
        params, _, _ = shd.init_sharded(init, jax.random.key(0), shard_config)
    tx = optax.adamw(1e-4, weight_decay=1e-2)
    opt_state = jax.jit(tx.init)(params)
    rng = np.random.default_rng(0)
    data = shard_config.batch_sharding()
    x, target = (jax.device_put(rng.standard_normal((batch, size, size, 4), np.float32), data) for _ in range(2))
    context = jax.device_put(rng.standard_normal((batch, CONTEXT_LEN, ctx_dim), np.float32), data)
    t = jax.device_put(rng.integers(0, 1000, (batch,)).astype(np.int32), data)

    def train_step(p, s, x, t, context, target):
        def loss_fn(p):
            pred = module.apply(p, x, t, context)
            return jnp.mean((pred.astype(jnp.float32) - target) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    t0 = time.perf_counter()
    with shard_config.active():
        compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state, x, t, context, target).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost).get("flops", float("nan")))
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        params, opt_state, loss = compiled(params, opt_state, x, t, context, target)
        loss.block_until_ready()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    peak = device_peak_flops(devices[0].device_kind)
    # cost analysis is per device for an SPMD program
    result = dict(model=args.model, params=n_params, devices=len(devices), device_kind=devices[0].device_kind,
                  mesh=dict(shard_config.mesh.shape), dtype=args.dtype, attention=attention_impl(), remat=args.remat,
                  per_chip_batch=args.per_chip_batch, compile_s=round(compile_s, 1), step_s=step,
                  img_per_s_per_chip=args.per_chip_batch / step, tflops_per_chip=flops / step / 1e12,
                  mfu=(flops / step / peak) if peak else None, loss=float(loss), step_samples=times)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
