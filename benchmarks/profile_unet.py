"""Per-op profile of the U-Net training step and forward of benchmarks/unet_step.py (issue #12).

Runs the compiled programs under `jax.profiler`, reads the XSpace trace back (`jax.profiler.ProfileData`),
and charges every executed XLA op (thunk) to
  - a kind: 3x3 / 1x1 / other (backward) convolution, dot, reduction fusion, elementwise fusion, copy/transpose;
  - a role, from the op's source path: self- or cross-attention, resnet, norms, feed-forward, ... and
    forward or backward (`transpose(jvp(...))`).
An op's time is its traced duration (work it hands to other threads is not added on top), so the
tables rank where the step's time goes; how busy the cores were comes separately from the process's CPU
time over (wall time x cores) while the calls ran untraced.

    python benchmarks/profile_unet.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import harness  # noqa: E402
import unet_step  # noqa: E402

_INSTRUCTION = re.compile(r"\s+(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\(")
_ROLES = [("attn1", "self-attention"), ("attn2", "cross-attention"), ("/ff/", "feed-forward"),
          ("proj_in", "attention proj_in/out"), ("proj_out", "attention proj_in/out"),
          ("time_emb", "time embedding"), ("samplers", "up/down-sampling conv"), ("conv_in", "conv_in/out"),
          ("conv_out", "conv_in/out"), ("resnets", "resnet convs and norms"), ("norm", "norms"),
          ("attentions", "transformer norms and glue")]


class HloIndex:
    """Instruction name -> (opcode, ops of its fused computation, source path), from the compiled HLO text."""

    def __init__(self, text: str):
        self.computations: dict[str, list[str]] = {}
        self.instructions: dict[str, tuple[str, str | None, str, str]] = {}
        current = None
        for line in text.splitlines():
            if line and not line.startswith(" ") and line.rstrip().endswith("{"):
                current = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
                self.computations[current] = []
                continue
            m = _INSTRUCTION.match(line)
            if m and current is not None:
                self.computations[current].append(line)
                calls = re.search(r"calls=%?([\w.\-]+)", line)
                source = re.search(r'op_name="([^"]+)"', line)
                self.instructions[m.group(1)] = (m.group(2), calls and calls.group(1),
                                                 source.group(1) if source else "", line)

    def classify(self, name: str) -> tuple[str, str]:
        if name not in self.instructions:
            return "runtime (loops, copies)", "runtime"
        opcode, calls, source, own_line = self.instructions[name]
        body = self.computations.get(calls, []) if calls else [own_line]
        ops = [_INSTRUCTION.match(line).group(2) for line in body]
        if "convolution" in ops:
            conv = next(line for line in body if "convolution(" in line)
            backward = "transpose(jvp" in source
            size = "3x3" if "size=3x3" in conv else "1x1" if "size=1x1" in conv else "other"
            kind = f"convolution {size}" + (" (backward)" if backward else "")
        elif "dot" in ops:
            kind = "dot"
        elif "reduce" in ops:
            kind = "reduction fusion"
        elif set(ops) <= {"copy", "transpose", "bitcast", "parameter"}:
            kind = "copy/transpose"
        else:
            kind = "elementwise fusion"
        role = next((r for key, r in _ROLES if key in source), "optimizer and other")
        if "group_norm" in source or "GroupNorm" in source:
            role = "group norm"
        return kind, role + (" (bwd)" if "transpose(jvp" in source else "")


def profile(compiled, call, calls: int, trace_dir: str):
    """{kind: ns}, {role: ns}, summed op ns, untraced wall s per call, share of the cores the process kept busy."""
    index = HloIndex(compiled.as_text())
    call()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
        call()
    wall, cpu = (time.perf_counter() - wall0) / calls, (time.process_time() - cpu0) / calls
    jax.profiler.start_trace(trace_dir)
    for _ in range(calls):
        call()
    jax.profiler.stop_trace()
    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    data = jax.profiler.ProfileData.from_file(path)
    kinds, roles = collections.Counter(), collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name and "PjRtCpuClient" not in line.name:
                continue
            for event in line.events:
                if "Execute" in event.name or "Await" in event.name:
                    continue
                kind, role = index.classify(event.name)
                kinds[kind] += event.duration_ns
                roles[role] += event.duration_ns
    return kinds, roles, sum(kinds.values()), wall, cpu / (wall * os.cpu_count())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_arguments(parser, repeats=3)
    args = parser.parse_args()
    import diffusers
    import torch

    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**unet_step.CONFIG)
    rng = np.random.default_rng(0)
    inputs = (rng.standard_normal((unet_step.BATCH, unet_step.SIZE, unet_step.SIZE, 4), np.float32),
              rng.integers(0, 1000, (unet_step.BATCH,)).astype(np.int64),
              rng.standard_normal((unet_step.BATCH, *unet_step.CONTEXT), np.float32),
              rng.standard_normal((unet_step.BATCH, unet_step.SIZE, unet_step.SIZE, 4), np.float32))
    with tempfile.TemporaryDirectory() as path:
        ref.save_pretrained(path)
        sample_inputs = (inputs[0], inputs[2], np.zeros_like(inputs[2]))  # sampling is not profiled
        fns, info, compiled = unet_step.jax_side(path, inputs, sample_inputs, 1, with_compiled=True)
    check = harness.MachineCheck(wait_s=args.wait)
    report = harness.Report("unet_profile", args, "python benchmarks/profile_unet.py", check)
    cores = os.cpu_count()
    for name in ("step", "forward"):
        with tempfile.TemporaryDirectory() as trace_dir:
            kinds, roles, total, wall, busy = profile(compiled[name], fns[name], args.repeats, trace_dir)
        calls = args.repeats
        top = ", ".join(f"{key} {ns / total:.0%}" for key, ns in roles.most_common(3))
        report.value_row(f"{name}: cores busy (process CPU time / (wall x {cores} cores)), untraced "
                         f"{wall:.2f} s per call; op time by role: {top}", 100 * busy, "%", wall_s=wall)
        for table, counter in (("kind", kinds), ("role", roles)):
            for key, ns in counter.most_common():
                report.value_row(f"{name}, by {table}: {key}", ns / calls / 1e6, f"ms per call ({ns / total:.1%})",
                                 detail=True)
        report.info[f"{name}_wall_s"] = wall
    report.finish()


if __name__ == "__main__":
    main()
