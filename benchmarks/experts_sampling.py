"""Sampling with N expert U-Nets vs one U-Net of the same size, in the same run (issue 14: overhead <= 5%).

Model: the Shapes experiment's U-Net (configs/experts_shapes.py: 1.03M params, 32x32 pixels, attention at
8x8) under EDM preconditioning, Heun with classifier-free guidance (one conditional and one unconditional
pass per evaluation, batched). JAX: ``t2ijax.diffusion.sample`` with the experts' stacked parameters and the
partition's static expert table (each segment runs only its expert; no switch), vs the same call with one
model. PyTorch: diffusers' UNet2DConditionModel with the same config and the same sequence of evaluations
(a Python loop picking the expert per step), vs one model: the same comparison in the reference framework.

  python benchmarks/experts_sampling.py [--experts 3] [--batch 8] [--steps 12] [--repeats 5] [--json out.json]

Timing goes through benchmarks/harness.py (machine check, alternating rounds, medians of --repeats).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import harness  # noqa: E402

SCRIPT = "python benchmarks/experts_sampling.py"
GUIDANCE = 2.0


def partition_variant(n: int) -> str:
    return {1: "parent", 2: "ediffi2", 3: "ediffi3", 4: "blocks4"}[n]


def main():
    import torch
    from diffusers import UNet2DConditionModel as TorchUNet

    from t2ijax import diffusion
    from t2ijax.config_utils import load_config
    from t2ijax.methods.experts import ExpertsMethod
    from t2ijax.models.experts import expert_params
    from t2ijax.sharding import strip_boxes

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, default=3, choices=(2, 3, 4))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--torch-threads", type=int, default=2)
    harness.add_arguments(parser, repeats=5)
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    warnings.filterwarnings("ignore")

    c = load_config(f"configs/experts_shapes.py:{partition_variant(args.experts)}")
    method = ExpertsMethod(c)
    params = strip_boxes(method.init(jax.random.PRNGKey(0), c))
    stacked = params["unet"]
    single = expert_params(stacked, 0)
    sampler = diffusion.Heun(schedule=method.edm_schedule, prediction_type="sample")
    plan = diffusion.samplers.cached_plan(sampler, args.steps)
    table = method.partition.table(plan)
    r, b = method.resolution, args.batch
    rng = np.random.default_rng(0)
    x_T = jnp.asarray(rng.standard_normal((b, r, r, 3)), jnp.float32)
    width = method.text_encoder.config.hidden_size
    cond = {"context": jnp.asarray(rng.standard_normal((b, method.max_length, width)), jnp.float32)}
    uncond = {"context": jnp.zeros_like(cond["context"])}

    def run_experts():
        return np.asarray(diffusion.sample(method.denoiser, stacked, sampler, x_T, cond, num_steps=args.steps,
                                           uncond=uncond, guidance_scale=GUIDANCE, expert_table=table))

    def run_single():
        return np.asarray(diffusion.sample(method.denoiser, single, sampler, x_T, cond, num_steps=args.steps,
                                           uncond=uncond, guidance_scale=GUIDANCE))

    # the PyTorch reference: diffusers U-Nets with the same config, the same evaluation sequence
    unet_cfg = method.unet.to_config()
    unet_cfg.pop("_class_name", None)
    torch_unets = [TorchUNet(**{k: v for k, v in unet_cfg.items() if not k.startswith("_")}).eval()
                   for _ in range(args.experts)]
    sig = plan.eval_sigmas
    x_t = torch.from_numpy(np.asarray(x_T)).permute(0, 3, 1, 2).contiguous()
    ctx = torch.from_numpy(np.concatenate([np.asarray(uncond["context"]), np.asarray(cond["context"])]))
    sd = method.edm.sigma_data

    def torch_run(expert_of_eval):
        x = x_t * float(plan.init_noise_sigma)
        with torch.no_grad():
            for i, s in enumerate(sig):
                c_in = 1.0 / np.sqrt(s ** 2 + sd ** 2)
                t = torch.full((2 * b,), 0.25 * np.log(max(s, 1e-12)), dtype=torch.float32)
                out = torch_unets[expert_of_eval[i]](torch.cat([x, x]) * c_in, t, ctx).sample
                u, c_ = out.chunk(2)
                x = x + 1e-3 * (u + GUIDANCE * (c_ - u))  # the update arithmetic is negligible next to the U-Net
        return x

    t0 = time.perf_counter()
    a, s1 = run_experts(), run_single()
    compile_s = time.perf_counter() - t0
    check = harness.MachineCheck(wait_s=args.wait)
    report = harness.Report("experts_sampling", args, harness.command_line(SCRIPT, parser, args), check)
    evals = plan.num_evals
    report.info.update(experts=args.experts, partition=method.partition.describe(), table=list(table),
                       batch=b, steps=args.steps, evals=evals, guidance_scale=GUIDANCE, jax_compile_s=round(compile_s, 2),
                       unet_params=int(sum(x.size for x in jax.tree.leaves(single))), torch_threads=args.torch_threads,
                       finite=bool(np.isfinite(a).all() and np.isfinite(s1).all()))
    times = harness.alternate({"jax_single": run_single, "jax_experts": run_experts,
                               "torch_single": lambda: torch_run([0] * evals),
                               "torch_experts": lambda: torch_run(table)}, args.repeats, args.warmup, check)
    what = (f"Heun {args.steps} steps ({evals} evals), CFG {GUIDANCE}, batch {b} of 32x32x3, Shapes U-Net "
            f"({report.info['unet_params'] / 1e6:.2f}M params), float32")
    report.time_row(f"one U-Net: {what}", times["jax_single"], times["torch_single"], per=b, per_unit="images/s")
    report.time_row(f"{args.experts} experts (table {''.join(map(str, table))}): {what}", times["jax_experts"],
                    times["torch_experts"], per=b, per_unit="images/s")
    med = harness.median
    report.value_row(f"JAX overhead of {args.experts} experts over one U-Net (target <= 5%)",
                     100 * (med(times["jax_experts"]) / med(times["jax_single"]) - 1), "%")
    report.value_row(f"PyTorch overhead of {args.experts} experts over one U-Net",
                     100 * (med(times["torch_experts"]) / med(times["torch_single"]) - 1), "%")
    report.finish()


if __name__ == "__main__":
    main()
