"""Per-op profile of a benchmarked JAX program (issue #12): the 18M U-Net's training step and forward of
benchmarks/unet_step.py (`--model unet`), the ELLA TSC's fwd+bwd step of benchmarks/ella_tsc.py (`--model tsc`), or
the ECLIPSE prior's fwd+bwd of benchmarks/eclipse_prior.py (`--model prior`).

Runs the compiled programs under `jax.profiler`, reads the XSpace trace back (`jax.profiler.ProfileData`),
and charges every executed XLA op (thunk) to
  - a kind: 3x3 / 1x1 / other (backward) convolution, dot, reduction fusion, elementwise fusion, copy/transpose;
  - a role, from the op's source path: self- or cross-attention, resnet, norms, feed-forward, ... and
    forward or backward (`transpose(jvp(...))`).
An op's time is its traced duration (work it hands to other threads is not added on top), so the
tables rank where the step's time goes; how busy the cores were comes separately from the process's CPU
time over (wall time x cores) while the calls ran untraced.

    python benchmarks/op_profile.py --model unet [--repeats 3]
    python benchmarks/op_profile.py --model tsc
    python benchmarks/op_profile.py --model prior
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import resource
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
# (substring of the op's source path, role), first match wins
UNET_ROLES = [("attn1", "self-attention"), ("attn2", "cross-attention"), ("/ff/", "feed-forward"),
          ("proj_in", "attention proj_in/out"), ("proj_out", "attention proj_in/out"),
          ("time_emb", "time embedding"), ("samplers", "up/down-sampling conv"), ("conv_in", "conv_in/out"),
          ("conv_out", "conv_in/out"), ("resnets", "resnet convs and norms"), ("norm", "norms"),
          ("attentions", "transformer norms and glue")]
TSC_ROLES = [("/attn/", "attention (projections and softmax)"), ("/mlp/", "squared-ReLU MLP"),
             ("ln_", "adaptive layer norms"), ("gate", "adaptive layer norms"), ("time_embedding", "time embedding"),
             ("time_aware", "time embedding"), ("proj_in", "input projection"), ("proj_out", "output projection"),
             ("norm", "norms")]


class HloIndex:
    """Instruction name -> (opcode, ops of its fused computation, source path), from the compiled HLO text."""

    def __init__(self, text: str, roles):
        self.roles = roles
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
        role = next((r for key, r in self.roles if key in source), "optimizer and other")
        return kind, role + (" (bwd)" if "transpose(jvp" in source else "")


def profile(compiled, call, calls: int, trace_dir: str, roles):
    """{kind: ns}, {role: ns}, summed op ns, and of the untraced calls: wall s per call, share of the cores the
    process kept busy, minor page faults and kernel CPU s per call."""
    index = HloIndex(compiled.as_text(), roles)
    call()
    usage0, wall0, cpu0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), time.process_time()
    for _ in range(calls):
        call()
    wall, cpu = (time.perf_counter() - wall0) / calls, (time.process_time() - cpu0) / calls
    usage = resource.getrusage(resource.RUSAGE_SELF)
    faults, sys_s = (usage.ru_minflt - usage0.ru_minflt) / calls, (usage.ru_stime - usage0.ru_stime) / calls
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
    return kinds, roles, sum(kinds.values()), wall, cpu / (wall * os.cpu_count()), faults, sys_s


def unet_programs():
    """{name: (compiled, blocking call)} of benchmarks/unet_step.py's JAX side."""
    ref, inputs, sample_inputs = unet_step.reference_and_inputs(1)  # sampling is not profiled
    with tempfile.TemporaryDirectory() as path:
        ref.save_pretrained(path)
        fns, _, compiled = unet_step.jax_side(path, inputs, sample_inputs, 1, with_compiled=True)
    return {name: (compiled[name], fns[name]) for name in ("step", "forward")}


def tsc_programs(batch: int = 8, tokens: int = 128):
    """{"step": (compiled, call)}: benchmarks/ella_tsc.py's fwd+bwd of the released-size TSC."""
    import jax.numpy as jnp
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from test_ella import RefELLA

    from t2ijax.weights import load_ella

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tsc.safetensors")
        save_file({k: v.contiguous() for k, v in RefELLA().state_dict().items()}, path)
        module, params = load_ella(path)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, tokens, 2048)).astype(np.float32))
    t = jnp.asarray(rng.integers(0, 1000, batch), jnp.int32)
    grad = jax.jit(jax.grad(lambda p: jnp.mean(module.apply({"params": p}, x, t).astype(jnp.float32) ** 2)))
    compiled = grad.lower(params).compile()
    return {"step": (compiled, lambda: jax.block_until_ready(compiled(params)))}


PRIOR_ROLES = [("/attn1/", "self-attention (projections, softmax)"), ("/ff/", "feed-forward"),
               ("norm", "layer norms"), ("encoder_hidden_states_proj", "input projections"),
               ("embedding_proj", "input projections"), ("proj_in", "input projections"),
               ("proj_to_clip", "output projection"), ("eclipse", "ECLIPSE loss")]


def prior_programs(batch: int = 32, dim: int = 1280):
    """{"step": (compiled, call)}: benchmarks/eclipse_prior.py's fwd+bwd of the ECLIPSE loss, real-size prior."""
    import jax.numpy as jnp

    from t2ijax.methods.eclipse import contrastive_loss, projection_loss
    from t2ijax.models.prior import PriorTransformer

    module = PriorTransformer.eclipse(dim)
    rng = np.random.default_rng(0)
    noise, text, image = (jnp.asarray(rng.standard_normal((batch, dim)), jnp.float32) for _ in range(3))
    states = jnp.asarray(rng.standard_normal((batch, 77, dim)), jnp.float32)
    mask = jnp.asarray(np.arange(77)[None] < rng.integers(5, 78, (batch, 1)), jnp.int32)
    params = jax.jit(module.init)(jax.random.PRNGKey(0), noise, text, states, mask)["params"]

    def loss(p):
        pred = module.apply({"params": p}, noise, text, states, mask)
        return projection_loss(pred, image) + 0.2 * contrastive_loss(pred, text, 100.0)[0]

    compiled = jax.jit(jax.grad(loss)).lower(params).compile()
    return {"step": (compiled, lambda: jax.block_until_ready(compiled(params)))}


MODELS = {"unet": (unet_programs, UNET_ROLES), "tsc": (tsc_programs, TSC_ROLES),
          "prior": (prior_programs, PRIOR_ROLES)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_arguments(parser, repeats=3)
    parser.add_argument("--model", choices=sorted(MODELS), default="unet")
    args = parser.parse_args()
    build, roles = MODELS[args.model]
    programs = build()
    check = harness.MachineCheck(wait_s=args.wait)
    report = harness.Report(f"{args.model}_profile", args, f"python benchmarks/op_profile.py --model {args.model}",
                            check)
    cores = os.cpu_count()
    for name, (compiled, call) in programs.items():
        with tempfile.TemporaryDirectory() as trace_dir:
            kinds, by_role, total, wall, busy, faults, sys_s = profile(compiled, call, args.repeats, trace_dir, roles)
        calls = args.repeats
        top = ", ".join(f"{key} {ns / total:.0%}" for key, ns in by_role.most_common(3))
        report.value_row(f"{args.model} {name}: cores busy (process CPU time / (wall x {cores} cores)), untraced "
                         f"{wall:.2f} s per call; op time by role: {top}", 100 * busy, "%", wall_s=wall)
        for table, counter in (("kind", kinds), ("role", by_role)):
            for key, ns in counter.most_common():
                report.value_row(f"{args.model} {name}, by {table}: {key}", ns / calls / 1e6,
                                 f"ms per call ({ns / total:.1%})", detail=True)
        memory = compiled.memory_analysis()
        report.value_row(f"{args.model} {name}: minor page faults per call ({sys_s:.2f} s of kernel CPU time per call; "
                         f"XLA's temporary buffer {memory.temp_size_in_bytes / 2**20:,.0f} MiB is mapped afresh by "
                         f"every call)", faults, "faults")
        report.info[f"{name}_wall_s"] = wall
    report.finish()


if __name__ == "__main__":
    main()
