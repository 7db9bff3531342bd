"""U-Net training step, forward pass and 50-step CFG sampling: t2ijax (JAX) vs diffusers (PyTorch), same
weights, same machine, same run, the two sides alternated (benchmarks/harness.py).

The model is the ~18M-parameter SD-structured U-Net below (float32): the step and the forward take batch 8
of 32x32x4 latents with a 77x256 context; the training step is MSE(noise prediction, target) + AdamW on both
sides. Sampling is DDIM, 50 steps, classifier-free guidance 7.5, 4 images (a batch-8 U-Net call per step):
JAX runs the whole loop as one compiled program (`t2ijax.diffusion.sample`), PyTorch runs diffusers'
pipeline recipe (DDIMScheduler, CFG by batch concatenation) under `torch.no_grad`. Outputs are compared.
FLOPs come from XLA's cost analysis of the compiled JAX programs; the same count expresses PyTorch's rate.

    python benchmarks/unet_step.py [--repeats 5] [--sample-repeats 3] [--passes step,forward,sample]
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import harness  # noqa: E402

CONFIG = dict(sample_size=32, in_channels=4, out_channels=4, block_out_channels=[64, 128, 256], layers_per_block=2,
              attention_head_dim=8, cross_attention_dim=256,
              down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
              up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])
BATCH, SIZE, CONTEXT = 8, 32, (77, 256)
LR, WEIGHT_DECAY = 1e-4, 1e-2
SD_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
GUIDANCE = 7.5
TARGETS = dict(step=1.2, forward=1.2, sample=1.5)  # issue #12


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def reference_and_inputs(sample_images: int):
    """The seeded diffusers U-Net, the step/forward inputs (x, t, context, target; NHWC) and the sampling
    inputs (noise, context, empty context) that every U-Net benchmark shares."""
    import diffusers
    import torch

    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**CONFIG)
    rng = np.random.default_rng(0)
    inputs = (rng.standard_normal((BATCH, SIZE, SIZE, 4), np.float32),
              rng.integers(0, 1000, (BATCH,)).astype(np.int64),
              rng.standard_normal((BATCH, *CONTEXT), np.float32),
              rng.standard_normal((BATCH, SIZE, SIZE, 4), np.float32))
    n = sample_images
    sample_inputs = (rng.standard_normal((n, SIZE, SIZE, 4), np.float32),
                     rng.standard_normal((n, *CONTEXT), np.float32), np.zeros((n, *CONTEXT), np.float32))
    return ref, inputs, sample_inputs


def jax_side(path, inputs, sample_inputs, sample_steps, with_compiled=False):
    """Compiled JAX callables {pass: fn} (each blocks) and facts about them (and the compiled step and
    forward, for benchmarks/op_profile.py)."""
    from t2ijax.diffusion import DDIM, DiscreteSchedule, sample
    from t2ijax.weights import load_unet

    module, params = load_unet(path)
    x, timesteps, context, target = (jnp.asarray(a) for a in inputs)
    tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)

    def loss_fn(p):
        return jnp.mean((module.apply({"params": p}, x, timesteps, context) - target) ** 2)

    def train_step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    t0 = time.perf_counter()
    step_c = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, tx.init(params)).compile()
    fwd_c = jax.jit(lambda p: module.apply({"params": p}, x, timesteps, context)).lower(params).compile()
    info = dict(params=int(sum(a.size for a in jax.tree_util.tree_leaves(params))),
                compile_step_and_forward_s=round(time.perf_counter() - t0, 1),
                step_gflop=_flops(step_c) / 1e9, forward_gflop=_flops(fwd_c) / 1e9)
    # the step donates its inputs: it trains a copy, so the forward and sampling keep the loaded weights
    state = {"p": jax.tree_util.tree_map(jnp.copy, params), "s": tx.init(params)}

    def run_step():
        state["p"], state["s"], loss = step_c(state["p"], state["s"])
        loss.block_until_ready()

    def denoise(p, x_in, t, cond):
        return module.apply({"params": p}, x_in, t, cond)

    noise, cond, uncond = (jnp.asarray(a) for a in sample_inputs)
    sampler = DDIM(schedule=DiscreteSchedule(**SD_SCHEDULE), steps_offset=1)

    def run_sample():
        return np.asarray(sample(denoise, params, sampler, noise, cond, num_steps=sample_steps, uncond=uncond,
                                 guidance_scale=GUIDANCE))

    fns = dict(step=run_step, forward=lambda: fwd_c(params).block_until_ready(), sample=run_sample)
    return (fns, info, dict(step=step_c, forward=fwd_c)) if with_compiled else (fns, info)


def torch_side(ref, inputs, sample_inputs, sample_steps):
    import diffusers
    import torch

    torch.set_num_threads(os.cpu_count())
    x, timesteps, context, target = (torch.from_numpy(np.ascontiguousarray(a)) for a in inputs)
    x, target = (a.permute(0, 3, 1, 2).contiguous() for a in (x, target))
    train_ref = diffusers.UNet2DConditionModel(**CONFIG)  # the step trains a copy, as on the JAX side
    train_ref.load_state_dict(ref.state_dict())
    train_ref.train()
    ref.eval()
    opt = torch.optim.AdamW(train_ref.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    def run_step():
        opt.zero_grad(set_to_none=True)
        loss = torch.mean((train_ref(x, timesteps, context).sample - target) ** 2)
        loss.backward()
        opt.step()

    def run_forward():
        with torch.no_grad():
            ref(x, timesteps, context)

    noise, cond, uncond = (torch.from_numpy(np.ascontiguousarray(a)) for a in sample_inputs)
    noise = noise.permute(0, 3, 1, 2).contiguous()
    both = torch.cat([uncond, cond])
    scheduler = diffusers.DDIMScheduler(**SD_SCHEDULE, clip_sample=False, steps_offset=1)

    def run_sample():  # the diffusers pipeline's denoising loop
        scheduler.set_timesteps(sample_steps)
        latents = noise * scheduler.init_noise_sigma
        with torch.no_grad():
            for t in scheduler.timesteps:
                model_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
                out_u, out_c = ref(model_in, t, both).sample.chunk(2)
                latents = scheduler.step(out_u + GUIDANCE * (out_c - out_u), t, latents).prev_sample
        return latents.permute(0, 2, 3, 1).numpy()

    return dict(step=run_step, forward=run_forward, sample=run_sample)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_arguments(parser, repeats=5)
    parser.add_argument("--passes", default="step,forward,sample", help="which of step, forward, sample to time")
    parser.add_argument("--sample-repeats", type=int, default=3, help="timed rounds for the sampling pass")
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--sample-images", type=int, default=4)
    parser.add_argument("--attention", default=None, help="t2ijax attention impl (xla, matmul, fused; default: "
                                                          "the backend's)")
    args = parser.parse_args()
    passes = args.passes.split(",")
    from t2ijax.models.attention import attention_impl, set_attention_impl

    if args.attention:
        set_attention_impl(args.attention)

    import torch

    ref, inputs, sample_inputs = reference_and_inputs(args.sample_images)
    n = args.sample_images
    with tempfile.TemporaryDirectory() as path:
        ref.save_pretrained(path)
        jax_fns, info = jax_side(path, inputs, sample_inputs, args.sample_steps)
    torch_fns = torch_side(ref, inputs, sample_inputs, args.sample_steps)
    info.update(attention=attention_impl(), torch_threads=torch.get_num_threads(),
                torch_params=int(sum(p.numel() for p in ref.parameters())))
    if "sample" in passes:
        t0 = time.perf_counter()
        ours = jax_fns["sample"]()
        info["compile_and_first_sample_s"] = round(time.perf_counter() - t0, 1)
        theirs = torch_fns["sample"]()
        info["sample_max_rel_err"] = float(np.abs(ours - theirs).max() / np.abs(theirs).max())

    check = harness.MachineCheck(wait_s=args.wait)
    command = "python benchmarks/unet_step.py" + (f" --attention {args.attention}" if args.attention else "")
    report = harness.Report("unet_step", args, command, check)
    report.info = info
    model = (f"{info['params'] / 1e6:.2f}M SD-structured U-Net, fp32, attention `{info['attention']}`")
    whats = dict(step=f"AdamW train step, {model}, batch {BATCH}, {SIZE}x{SIZE}x4 latents, 77x256 context",
                 forward=f"forward, same U-Net and batch",
                 sample=f"{args.sample_steps}-step DDIM, CFG {GUIDANCE}, {n} images (one compiled loop vs "
                        f"diffusers' pipeline loop), same U-Net")
    for name in passes:
        repeats = args.sample_repeats if name == "sample" else args.repeats
        warmup = 0 if name == "sample" else args.warmup  # sampling was compiled and run once above
        times = harness.alternate({"jax": jax_fns[name], "torch": torch_fns[name]}, repeats, warmup, check)
        per, unit = (n, "img/s") if name == "sample" else (BATCH, "img/s")
        row = report.time_row(whats[name], times["jax"], times["torch"], per=per, per_unit=unit, target=TARGETS[name])
        if name != "sample":
            row["jax_gflops_per_s"] = info[f"{name}_gflop"] / row["jax_s"]
            row["torch_gflops_per_s"] = info[f"{name}_gflop"] / row["torch_s"]
    report.finish()


if __name__ == "__main__":
    main()
