"""Compile time of the tiny configs' training step (issue #12 target: under 20 s each), each in a fresh
process so that no compilation cache is shared; the persistent compilation cache is off.

For each config: build the run (`t2ijax.train.loop.setup`), draw one batch from its loader, and time
`compile_step` (lower + XLA compile of the jitted, donated, sharded step) - what `t2ijax train` prints as
"compile time", split into tracing + lowering to StableHLO (`lower_step`) and XLA's compilation. Medians
of --repeats fresh processes.

    python benchmarks/compile_time.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import harness  # noqa: E402

CONFIGS = ["configs/txt2img_shapes.py:tiny", "configs/demo_shapes.py:tiny", "configs/ella_sd15.py:tiny",
           "configs/shapes_judge.py:tiny"]
TARGET_S = 20.0


def compile_once(spec: str) -> dict:
    """In this process: seconds to trace + lower and to XLA-compile `spec`'s training step."""
    from t2ijax.config_utils import load_config
    from t2ijax.train.loop import lower_step, make_loader, setup

    config = load_config(spec)
    s = setup(config)
    loader = make_loader(config, split="train", batch_size=int(config.batch_size), seed=0)
    if callable(getattr(s.method, "wrap_loader", None)):
        loader = s.method.wrap_loader(loader, "train")
    batch = next(iter(loader))
    t0 = time.perf_counter()
    lowered = lower_step(s, batch)
    t1 = time.perf_counter()
    with s.shard_config.active():
        lowered.compile()
    return dict(lower=t1 - t0, xla=time.perf_counter() - t1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_arguments(parser, repeats=3)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(compile_once(args.child)))
        return
    check = harness.MachineCheck(wait_s=args.wait)
    report = harness.Report("compile_time", args, "python benchmarks/compile_time.py", check)
    env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false")
    samples = {spec: [] for spec in CONFIGS}
    for _ in range(args.repeats):  # configs interleaved, like every other benchmark's sides
        for spec in CONFIGS:
            out = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True,
                                 env=env, check=True)
            samples[spec].append(json.loads(out.stdout.strip().splitlines()[-1]))
        check.between()
    for spec in CONFIGS:
        total = [s["lower"] + s["xla"] for s in samples[spec]]
        seconds = harness.median(total)
        lower, xla = (harness.median([s[k] for s in samples[spec]]) for k in ("lower", "xla"))
        report.value_row(f"training-step compile, `{spec}`: trace + lower {lower:.1f} s, XLA {xla:.1f} s "
                         f"(target < {TARGET_S:g} s: {'met' if seconds < TARGET_S else 'not met'})", seconds, "s",
                         jax_samples=total)
    report.finish()


if __name__ == "__main__":
    main()
