"""Sampling-loop cost: t2ijax's compiled loop vs diffusers' Python loop, in the same run.

Both sides run the same cheap elementwise "denoiser" with classifier-free guidance on SD
latents (batch x 4 x 64 x 64), so the numbers measure the sampler + guidance + loop
machinery (scheduler arithmetic, CFG batching, per-step dispatch), not a U-Net. JAX: one
jitted program (``t2ijax.diffusion.sample``, ``lax.scan`` over the steps); PyTorch: the
diffusers pipeline recipe (``scale_model_input`` / model / CFG / ``scheduler.step``).
Outputs are compared too (float32 on both sides).

  python benchmarks/sampling_loop.py [--batch 2] [--steps 25] [--torch-threads 1]
                                     [--repeats 5] [--warmup 1] [--wait 120] [--json out.json]

Timing goes through benchmarks/harness.py: a machine check (idle CPUs, calibration matmul)
before timing and between rounds; per sampler, the JAX and diffusers runs alternate, one
full sampling run each per round, after --warmup untimed rounds; rows report the median of
--repeats rounds (every sample kept in the JSON). The JAX compile time (compile + first run,
untimed by the harness) and the max relative error between the two final samples are in the JSON's info.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import harness  # noqa: E402

from t2ijax.diffusion import DDIM, DiscreteSchedule, DPMSolverPlusPlus, Euler, Heun, sample  # noqa: E402

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
GUIDANCE = 7.5
SCRIPT = "python benchmarks/sampling_loop.py"


def toy_model(x, t, cond, xp):
    """Elementwise stand-in for a U-Net (same formula in jnp and torch)."""
    t = t.reshape((-1,) + (1,) * (x.ndim - 1))
    return xp.tanh(0.7 * x + cond) * xp.cos(t / 500.0) + 0.1 * x


def jax_denoise(params, x, t, cond):
    return toy_model(x, t, cond, jnp)



def main():
    import diffusers
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="intra-op threads for PyTorch (on a loaded shared CPU, 2 threads made each "
                             "elementwise op ~100x slower than 1 because of thread contention)")
    harness.add_arguments(parser, repeats=5)
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)

    rng = np.random.default_rng(0)
    shape = (args.batch, 4, 64, 64)
    noise = rng.standard_normal(shape).astype(np.float32)
    cond = rng.standard_normal(shape).astype(np.float32)
    uncond = np.zeros(shape, np.float32)
    schedule = DiscreteSchedule(**SD)
    pairs = {
        "DDIM": (DDIM(schedule=schedule, steps_offset=1),
                 diffusers.DDIMScheduler(**SD, clip_sample=False, steps_offset=1)),
        "Euler": (Euler(schedule=schedule), diffusers.EulerDiscreteScheduler(**SD)),
        "Heun": (Heun(schedule=schedule), diffusers.HeunDiscreteScheduler(**SD)),
        "DPM-Solver++(2M)": (DPMSolverPlusPlus(schedule=schedule), diffusers.DPMSolverMultistepScheduler(**SD)),
    }

    check = harness.MachineCheck(wait_s=args.wait)
    report = harness.Report("sampling_loop", args, harness.command_line(SCRIPT, parser, args), check)
    report.info.update(batch=args.batch, latents=list(shape[1:]), steps=args.steps, guidance_scale=GUIDANCE,
                       dtype="float32", jax_device=str(jax.devices()[0]), torch_threads=args.torch_threads,
                       model="elementwise stand-in denoiser tanh(0.7x + c) cos(t/500) + 0.1x (no U-Net)",
                       jax_side="t2ijax.diffusion.sample, one jitted lax.scan program",
                       torch_side="diffusers scheduler recipe (scale_model_input / model / CFG / step), eager",
                       jax_compile_s={}, max_rel_err={})
    for name, (ours, ref) in pairs.items():
        x_T, c, u = jnp.asarray(noise), jnp.asarray(cond), jnp.asarray(uncond)

        def run_jax():
            out = sample(jax_denoise, {}, ours, x_T, c, num_steps=args.steps, uncond=u, guidance_scale=GUIDANCE)
            return np.asarray(out.block_until_ready())

        both = torch.from_numpy(np.concatenate([uncond, cond]))

        def run_torch():
            ref.set_timesteps(args.steps)
            x = torch.from_numpy(noise) * ref.init_noise_sigma
            with torch.no_grad():
                for t in ref.timesteps:
                    x_in = ref.scale_model_input(torch.cat([x, x]), t)
                    out = toy_model(x_in, torch.full((2 * args.batch,), float(t)), both, torch)
                    out_u, out_c = out.chunk(2)
                    x = ref.step(out_u + GUIDANCE * (out_c - out_u), t, x).prev_sample
            return x.numpy()

        t0 = time.perf_counter()
        a = run_jax()  # compilation + first run (not a timed sample)
        compile_s = time.perf_counter() - t0
        b = run_torch()
        err = float(np.abs(a - b).max() / np.abs(b).max())
        evals = ours.plan(args.steps).num_evals
        times = harness.alternate({"jax": run_jax, "torch": run_torch}, args.repeats, args.warmup, check)
        report.info["jax_compile_s"][name] = round(compile_s, 3)
        report.info["max_rel_err"][name] = float(f"{err:.2e}")
        report.time_row(f"{name}, {args.steps} steps ({evals} model evals), CFG {GUIDANCE}, batch {args.batch} of "
                        f"4x64x64 SD latents, stand-in elementwise model, float32: one sampling run, t2ijax jitted "
                        f"scan vs diffusers loop (torch threads {args.torch_threads})",
                        times["jax"], times["torch"], target=None, sampler=name, model_evals=evals)
    report.finish()


if __name__ == "__main__":
    main()
