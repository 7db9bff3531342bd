"""SD-1.5-size training on paper (issue #12): FLOPs per image, state memory per device under each mesh layout,
and expected images/s per chip on TPU v5e / v5p and H100 at a stated MFU, next to published numbers.

Everything is derived from t2ijax's own SD-1.5 U-Net (diffusers' config: 320/640/1280/1280 channels,
cross-attention 768, 64x64x4 latents for 512 px) without allocating it:
  - FLOPs: XLA's cost analysis of the lowered forward and AdamW training step (batch 1, einsum attention, so
    no loop hides FLOPs);
  - memory: the abstract parameters sharded by the library's own logical-axis rules on 8 simulated devices
    (one v5p-8 host / one 8-GPU node) for each mesh preset of configs/common.py: fp32 params, AdamW's two
    moments and the EMA (16 bytes/param) plus fp32 gradients while the step runs (4 bytes/param), and a
    frozen text encoder in bfloat16 (CLIP ViT-L/14 text, 123M, or T5-XL encoder, 1.2B; replicated under
    `data`, sharded like the U-Net under `fsdp`);
  - activations per image: XLA's memory analysis of the compiled batch-1 bfloat16 step on the CPU (its
    temporaries; TPU/GPU fusion differs, so read it as an order of magnitude).
Expected images/s per chip = MFU x peak / training FLOPs per image. Measure the real number with
`launch/benchmark_accelerator.py` on the hardware.

    python benchmarks/sd15_scale.py
"""

from __future__ import annotations

import os

if __name__ == "__main__" and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import harness  # noqa: E402

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280, 1280],
                 layers_per_block=2, attention_head_dim=8, cross_attention_dim=768,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
TEXT_ENCODERS = {"CLIP ViT-L/14 text": 123e6, "T5-XL encoder": 1.22e9}
PEAKS = {"TPU v5e": 197e12, "TPU v5p": 459e12, "H100 SXM": 989e12}  # dense bf16 (performance_anchors)
MFU = 0.35  # between PyTorch/XLA's SD2-base on v5p (37%) and MosaicML's SD2 on A100 (31%)
PUBLISHED = ("PyTorch/XLA SD2-base 512 px on v5p-64: 63.4 img/s/chip (about 37% MFU); MosaicML SD2-base 512 px "
             "on A100: 36 img/s/GPU (about 31% MFU); maxdiffusion publishes no SD-1.x/2.x training numbers")


def _cost_flops(lowered) -> float:
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_arguments(parser, repeats=1)
    parser.add_argument("--skip-activations", action="store_true", help="do not compile the bf16 step")
    args = parser.parse_args()
    import ml_collections

    from t2ijax import sharding as shd
    from t2ijax.models.attention import set_attention_impl
    from t2ijax.models.unet import UNet2DConditionModel
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
    import common

    set_attention_impl("xla")
    report = harness.Report("sd15_scale", args, "python benchmarks/sd15_scale.py", None)
    module = UNet2DConditionModel.from_config(SD15_UNET)
    x = jax.ShapeDtypeStruct((1, 64, 64, 4), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    ctx = jax.ShapeDtypeStruct((1, 77, 768), jnp.float32)

    def init(rng):
        return module.init(rng, jnp.zeros(x.shape), jnp.zeros(t.shape, jnp.int32), jnp.zeros(ctx.shape))

    abstract, specs = shd.abstract_with_specs(init, jax.random.key(0))
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract))
    tx = optax.adamw(1e-4)

    def train_step(p, s, x, t, ctx):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean(module.apply({"params": p["params"]}, x, t, ctx) ** 2))(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    fwd_flops = _cost_flops(jax.jit(lambda p, x, t, c: module.apply({"params": p["params"]}, x, t, c))
                            .lower(abstract, x, t, ctx))
    step_flops = _cost_flops(jax.jit(train_step).lower(abstract, jax.eval_shape(tx.init, abstract), x, t, ctx))
    report.info.update(unet_params=n_params, forward_tflop_per_image=fwd_flops / 1e12,
                       train_tflop_per_image=step_flops / 1e12, mfu_assumed=MFU, published=PUBLISHED)
    report.value_row(f"SD-1.5 U-Net ({n_params / 1e6:.1f}M params), forward FLOPs per 512 px image (64x64x4 "
                     f"latents, 77x768 context; XLA cost analysis)", fwd_flops / 1e12, "TFLOP")
    report.value_row("same, AdamW training step per image", step_flops / 1e12,
                     f"TFLOP ({step_flops / fwd_flops:.2f}x forward)")
    for chip, peak in PEAKS.items():
        report.value_row(f"expected training throughput on {chip} ({peak / 1e12:g} TFLOP/s bf16) at {MFU:.0%} MFU "
                         "(published anchors: benchmarks/notes.md)", MFU * peak / step_flops, "img/s/chip")

    devices = jax.devices()
    for preset in ("data", "fsdp", "tensor"):
        config = ml_collections.ConfigDict(dict(mesh=dict(common.MESH_PRESETS[preset]),
                                                logical_axis_rules=dict(common.LOGICAL_AXIS_RULES)))
        shard_config = shd.ShardConfig.from_config(config, devices=devices)
        shardings = shard_config.tree_shardings(specs, abstract)
        per_device = sum(int(np.prod(s.shard_shape(a.shape))) for a, s in
                         zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)))
        mesh = dict(shard_config.mesh.shape)
        sharded = mesh["fsdp"] * mesh["tensor"] if preset != "data" else 1
        for name, count in TEXT_ENCODERS.items():
            text_gib = 2 * count / sharded / 2**30
            gib = (20 * per_device) / 2**30 + text_gib
            report.value_row(f"state per device, mesh `{preset}` {mesh} on 8 devices: U-Net params + AdamW + "
                             f"EMA + grads ({per_device / 1e6:.0f}M params/device x 20 B) + frozen {name} in bf16 "
                             f"({text_gib:.2f} GiB)", gib, "GiB")
    if not args.skip_activations:
        bf16 = UNet2DConditionModel.from_config(SD15_UNET, dtype=jnp.bfloat16)
        t0 = time.perf_counter()
        compiled = jax.jit(lambda p, x, t, c: jax.grad(lambda p: jnp.mean(
            bf16.apply({"params": p["params"]}, x.astype(jnp.bfloat16), t, c.astype(jnp.bfloat16))
            .astype(jnp.float32) ** 2))(p)).lower(abstract, x, t, ctx).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        report.info["activation_compile_s"] = round(time.perf_counter() - t0, 1)
        report.value_row("activations + temporaries per image, bf16 fwd+bwd without remat (XLA:CPU memory "
                         "analysis of the batch-1 step; order of magnitude for TPU/GPU)", temp / 2**30, "GiB")
    report.finish()


if __name__ == "__main__":
    main()
