"""Sampling-loop cost: t2ijax's compiled loop vs diffusers' Python loop, in the same run.

Both sides run the same cheap elementwise "denoiser" with classifier-free guidance on SD
latents (batch x 4 x 64 x 64), so the numbers measure the sampler + guidance + loop
machinery (scheduler arithmetic, CFG batching, per-step dispatch), not a U-Net. JAX: one
jitted program (``t2ijax.diffusion.sample``, ``lax.scan`` over the steps); PyTorch: the
diffusers pipeline recipe (``scale_model_input`` / model / CFG / ``scheduler.step``).
Outputs are compared too (float32 on both sides).

  .venv/bin/python benchmarks/sampling_loop.py [--batch 2] [--steps 25] [--iters 5] [--torch-threads 1]

Prints the median wall time of a full sampling run after one warm-up (compile) run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from t2ijax.diffusion import DDIM, DiscreteSchedule, DPMSolverPlusPlus, Euler, Heun, sample  # noqa: E402

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
GUIDANCE = 7.5


def toy_model(x, t, cond, xp):
    """Elementwise stand-in for a U-Net (same formula in jnp and torch)."""
    t = t.reshape((-1,) + (1,) * (x.ndim - 1))
    return xp.tanh(0.7 * x + cond) * xp.cos(t / 500.0) + 0.1 * x


def jax_denoise(params, x, t, cond):
    return toy_model(x, t, cond, jnp)


def median_time(fn, iters):
    start = time.perf_counter()
    fn()  # warm-up (compilation for JAX)
    first = time.perf_counter() - start
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def main():
    import diffusers
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="intra-op threads for PyTorch (on a loaded shared CPU, 2 threads made each "
                             "elementwise op ~100x slower than 1 because of thread contention)")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)

    rng = np.random.default_rng(0)
    shape = (args.batch, 4, 64, 64)
    noise = rng.standard_normal(shape).astype(np.float32)
    cond = rng.standard_normal(shape).astype(np.float32)
    uncond = np.zeros(shape, np.float32)
    schedule = DiscreteSchedule(**SD)
    pairs = {
        "DDIM": (DDIM(schedule=schedule, steps_offset=1), diffusers.DDIMScheduler(**SD, clip_sample=False, steps_offset=1)),
        "Euler": (Euler(schedule=schedule), diffusers.EulerDiscreteScheduler(**SD)),
        "Heun": (Heun(schedule=schedule), diffusers.HeunDiscreteScheduler(**SD)),
        "DPM-Solver++(2M)": (DPMSolverPlusPlus(schedule=schedule), diffusers.DPMSolverMultistepScheduler(**SD)),
    }

    print(f"batch {args.batch}, latents {shape[1:]}, {args.steps} steps, CFG {GUIDANCE}, "
          f"device {jax.devices()[0]}, torch threads {args.torch_threads}")
    header = f"{'sampler':<18} {'evals':>5} {'jax compile s':>13} {'jax ms':>8} {'torch ms':>9} {'speedup':>8} {'rel err':>8}"
    print(header)
    print("-" * len(header))
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

        compile_s, jax_s = median_time(run_jax, args.iters)
        _, torch_s = median_time(run_torch, args.iters)
        a, b = run_jax(), run_torch()
        err = np.abs(a - b).max() / np.abs(b).max()
        evals = ours.plan(args.steps).num_evals
        print(f"{name:<18} {evals:>5} {compile_s:>13.2f} {jax_s * 1e3:>8.1f} {torch_s * 1e3:>9.1f} "
              f"{torch_s / jax_s:>7.2f}x {err:>8.1e}")


if __name__ == "__main__":
    main()
