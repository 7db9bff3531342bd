"""Honest timing for every benchmark script (issue #12).

A benchmark on a loaded machine lies: a 1.04x row measured next to eight other jobs was 0.41x idle.
So every script here
  - checks the machine before it starts (`MachineCheck`): the CPU share other processes use over one
    second, from /proc/stat minus this process's own time (a load average would still show the previous
    benchmark for a minute), and a calibration matmul; it waits up to `--wait` seconds for the machine
    to go quiet and marks every row "LOADED" if it does not;
  - re-checks between repeats (other processes' CPU share while it ran, calibration slowdown) and marks
    rows measured while the machine was busy;
  - runs the JAX and PyTorch sides alternately, one timed call each per round (`alternate`), so drift
    and bursts of load hit both;
  - reports medians of at least MIN_REPEATS rounds, with every sample kept in the JSON (`Report`).

`python benchmarks/run_all.py` runs every script this way and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from typing import Callable

import numpy as np

MIN_REPEATS = 3
OTHER_LOAD_MAX = 0.10  # share of all cores other processes (or the hypervisor's other guests) may take
# The calibration matmul swings up to ~2x between single calls even on an idle VM, so only a sustained
# slowdown counts: the median over the run's calibrations below 1/1.5 of the best one.
CALIBRATION_SLOWDOWN_MAX = 1.5



def _busy_jiffies() -> tuple[int, int]:
    """(busy jiffies of the whole machine, jiffies of this process, its threads and its finished children).

    Busy includes "steal", the time the hypervisor gave this VM's CPUs to other guests."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user..steal minus idle and iowait (guest time is in user)
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    return busy, sum(int(x) for x in own[11:15])  # utime, stime, cutime, cstime


class CpuWatch:
    """Share of the machine's cores that other processes kept busy between start() and share()."""

    def start(self):
        self._t0, (self._busy0, self._own0) = time.monotonic(), _busy_jiffies()
        return self

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def share(self) -> float:
        busy, own = _busy_jiffies()
        ticks = os.sysconf("SC_CLK_TCK") * max(time.monotonic() - self._t0, 1e-3) * os.cpu_count()
        return max(0.0, ((busy - self._busy0) - (own - self._own0)) / ticks)


def other_cpu_share(window: float = 1.0) -> float:
    watch = CpuWatch().start()
    time.sleep(window)
    return watch.share()


def calibration_gflops(n: int = 384, reps: int = 7) -> float:
    """Best-of-`reps` float32 matmul rate, single call of numpy's BLAS: a load-sensitive yardstick."""
    a = np.random.default_rng(0).standard_normal((n, n), np.float32)
    a @ a  # the first call pays for BLAS's thread start-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def copy_gbps(mib: int = 64, reps: int = 5) -> float:
    """Best-of-`reps` memory bandwidth of a large array copy (read + write): a yardstick for the other guests
    of a VM's host, whose memory traffic no CPU counter of this guest shows; bandwidth-bound XLA ops (big
    attention logits) slow down with it while cache-resident kernels do not."""
    a = np.ones(mib * 2**18, np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best / 1e9


class MachineCheck:
    """Idle check before the run, and re-checks between rounds; `notes` says what was wrong, if anything."""

    def __init__(self, wait_s: float = 120.0, verbose: bool = True):
        self.problems: list[str] = []
        self.calibrations: list[float] = []
        self.round_shares: list[float] = []
        waited, share = 0.0, other_cpu_share()
        while share > OTHER_LOAD_MAX and waited < wait_s:
            if verbose:
                print(f"[harness] other processes use {share:.0%} of the CPUs; waiting for an idle machine")
            time.sleep(4.0)
            waited += 5.0
            share = other_cpu_share()
        self.start_share = share
        if share > OTHER_LOAD_MAX:
            self.problems.append(f"other processes used {share:.0%} of the CPUs at the start")
        self.calibrations.append(calibration_gflops())
        self.bandwidths = [copy_gbps()]
        self.load_average = os.getloadavg()[0]
        self._watch = CpuWatch().start()

    def between(self):
        """Call between rounds: records other processes' CPU share since the last record (over at least a
        second: a clock tick is 10 ms, so shorter windows are noise), and the two yardsticks."""
        if self._watch.elapsed() >= 1.0:
            self.round_shares.append(self._watch.share())
            self._watch = CpuWatch().start()
        self.calibrations.append(calibration_gflops())
        self.bandwidths.append(copy_gbps())

    @property
    def notes(self) -> str:
        problems = list(self.problems)
        busy = [s for s in self.round_shares if s > OTHER_LOAD_MAX]
        if busy:
            problems.append(f"other processes used up to {max(busy):.0%} of the CPUs in {len(busy)} of "
                            f"{len(self.round_shares)} rounds")
        slow = max(self.calibrations) / statistics.median(self.calibrations)
        if slow > CALIBRATION_SLOWDOWN_MAX:
            problems.append(f"calibration matmul ran {slow:.2f}x below its best (median of the run)")
        slow = max(self.bandwidths) / statistics.median(self.bandwidths)
        if slow > CALIBRATION_SLOWDOWN_MAX:
            problems.append(f"memory copy ran {slow:.2f}x below its best (median of the run)")
        return "; ".join(problems)

    @property
    def loaded(self) -> bool:
        return bool(self.notes)

    def summary(self) -> dict:
        return dict(start_other_cpu_share=round(self.start_share, 3), load_average_1min=round(self.load_average, 2),
                    round_other_cpu_shares=[round(s, 3) for s in self.round_shares],
                    calibration_gflops=[round(c, 1) for c in self.calibrations],
                    copy_gbps=[round(b, 1) for b in self.bandwidths], loaded=self.loaded, notes=self.notes)


def alternate(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
              check: MachineCheck | None = None) -> dict[str, list[float]]:
    """Seconds per call of each fn, measured round-robin: round r times every fn once, in a rotating order.

    Each fn must block until its result is ready. `warmup` untimed rounds go first (compilation).
    (A pause between calls, against worker threads still spinning from the other side, changed nothing
    measurable: attention 1024x77 fwd+bwd 46.8 ms alternated without a pause, 49.4 ms with 0.3 s pauses.)
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
        if check is not None:
            check.between()
    return times


def median(samples: list[float]) -> float:
    return float(statistics.median(samples))


def versions() -> dict:
    out = {}
    for name in ("jax", "jaxlib", "flax", "torch", "diffusers", "transformers", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is just not listed
            pass
    return out


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return dict(cpu=model, cores=os.cpu_count(), memory_gib=round(mem, 1), system=platform.platform())


def command_line(script: str, parser: argparse.ArgumentParser, args) -> str:
    """The command that reproduces this run: `script` plus every option that differs from its default."""
    parts = [script]
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "json"):
            continue
        value = getattr(args, action.dest)
        if value != action.default:
            parts.append(action.option_strings[-1] if action.nargs == 0 else f"{action.option_strings[-1]} {value}")
    return " ".join(parts)


def add_arguments(parser: argparse.ArgumentParser, repeats: int = 5) -> None:
    parser.add_argument("--repeats", type=int, default=repeats, help=f"timed rounds, medians reported "
                                                                      f"(at least {MIN_REPEATS} for a result)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (compilation)")
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for an idle machine")
    parser.add_argument("--json", default=None, help="write the rows and every sample here")


class Report:
    """Rows of one benchmark script; printed as a markdown table and written as JSON for run_all.py.

    A row: what was measured, JAX and PyTorch medians (seconds per call, or a rate with `unit`), the ratio
    as JAX's speed over PyTorch's, and every sample.
    """

    def __init__(self, name: str, args, command: str, check: MachineCheck | None):
        self.name, self.args, self.command, self.check = name, args, command, check
        self.rows: list[dict] = []
        self.info: dict = {}

    def time_row(self, what: str, jax_s: list[float], torch_s: list[float] | None = None, *, per: float = 1.0,
                 per_unit: str = "", target: float | None = None, **extra) -> dict:
        """A row from seconds per call; `per` items per call turn it into a rate (e.g. images/s)."""
        row = dict(what=what, jax_s=median(jax_s), jax_samples=jax_s, target=target, **extra)
        if torch_s is not None:
            row.update(torch_s=median(torch_s), torch_samples=torch_s, ratio=median(torch_s) / median(jax_s))
        if per_unit:
            row.update(per=per, per_unit=per_unit)
        self.rows.append(row)
        return row

    def value_row(self, what: str, value: float, unit: str, **extra) -> dict:
        row = dict(what=what, value=value, unit=unit, **extra)
        self.rows.append(row)
        return row

    def status(self, row: dict) -> str:
        if "value" in row and not row.get("jax_samples"):
            return "derived (not a timing)"
        repeats = len(row.get("jax_samples", [])) or self.args.repeats
        if repeats < MIN_REPEATS:
            return f"not a result: {repeats} repeat(s) < {MIN_REPEATS}"
        if self.check is not None and self.check.loaded:
            return "LOADED: " + self.check.notes
        return "ok"

    def finish(self) -> dict:
        out = dict(name=self.name, command=self.command, date=datetime.datetime.now().isoformat(timespec="seconds"),
                   machine=machine(), versions=versions(), check=self.check.summary() if self.check else None,
                   info=self.info, rows=[dict(r, status=self.status(r)) for r in self.rows])
        self.print(out)
        if self.args.json:
            with open(self.args.json, "w") as f:
                json.dump(out, f, indent=1)
        return out

    @staticmethod
    def print(out: dict) -> None:
        print(f"\n{out['name']} - {out['date']} - {out['machine']['cpu']}, {out['machine']['cores']} cores")
        if out["check"]:
            print(f"machine check: {out['check']}")
        print("| what | JAX | PyTorch | JAX/PyTorch speed | status |\n|---|---|---|---|---|")
        for r in out["rows"]:
            print(f"| {r['what']} | {fmt_jax(r)} | {fmt_torch(r)} | {fmt_ratio(r)} | {r['status']} |")


def _fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _fmt(r: dict, key: str) -> str:
    s = r.get(f"{key}_s")
    if s is None:
        return "-"
    text = _fmt_time(s)
    if r.get("per_unit"):
        text += f" ({r['per'] / s:,.1f} {r['per_unit']})"
    return text


def fmt_jax(r: dict) -> str:
    if "value" in r:
        return f"{r['value']:,.4g} {r['unit']}"
    return _fmt(r, "jax")


def fmt_torch(r: dict) -> str:
    return _fmt(r, "torch")


def fmt_ratio(r: dict) -> str:
    if "ratio" not in r:
        return "-"
    text = f"**{r['ratio']:.2f}x**"
    if r.get("target"):
        text += f" (target {r['target']:g}x: {'met' if r['ratio'] >= r['target'] else 'not met'})"
    return text
