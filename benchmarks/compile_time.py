"""Compile time of the tiny configs' training step (issue #12 target: under 20 s each), each in a fresh
process so that no compilation cache is shared; the persistent compilation cache is off.

For each config: build the run (`t2ijax.train.loop.setup`), draw one batch from its loader, and time
`compile_step` (lower + XLA compile of the jitted, donated, sharded step) - what `t2ijax train` prints as
"compile time". Medians of --repeats fresh processes.

    python benchmarks/compile_time.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import harness  # noqa: E402

CONFIGS = ["configs/txt2img_shapes.py:tiny", "configs/demo_shapes.py:tiny", "configs/ella_sd15.py:tiny",
           "configs/shapes_judge.py:tiny"]
TARGET_S = 20.0


def compile_once(spec: str) -> float:
    """In this process: seconds to compile `spec`'s training step."""
    from t2ijax.config_utils import load_config
    from t2ijax.train.loop import compile_step, make_loader, setup

    config = load_config(spec)
    s = setup(config)
    loader = make_loader(config, split="train", batch_size=int(config.batch_size), seed=0)
    if callable(getattr(s.method, "wrap_loader", None)):
        loader = s.method.wrap_loader(loader, "train")
    batch = next(iter(loader))
    _, seconds = compile_step(s, batch)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_arguments(parser, repeats=3)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"seconds": compile_once(args.child)}))
        return
    check = harness.MachineCheck(wait_s=args.wait)
    report = harness.Report("compile_time", args, "python benchmarks/compile_time.py", check)
    env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false")
    samples = {spec: [] for spec in CONFIGS}
    for _ in range(args.repeats):  # configs interleaved, like every other benchmark's sides
        for spec in CONFIGS:
            out = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True,
                                 env=env, check=True)
            samples[spec].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
        check.between()
    for spec in CONFIGS:
        seconds = harness.median(samples[spec])
        report.value_row(f"training-step compile, `{spec}` (target < {TARGET_S:g} s: "
                         f"{'met' if seconds < TARGET_S else 'not met'})", seconds, "s", jax_samples=samples[spec])
    report.finish()


if __name__ == "__main__":
    main()
