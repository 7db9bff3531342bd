"""Metrics: JSONL + TensorBoard writers, throughput / MFU accounting, progress display."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Mapping

import jax

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per device (vendor datasheets), matched by substring of `device_kind`.
# Longest match wins, so "TPU v5 lite" is not read as "TPU v5".
PEAK_FLOPS = {
    "TPU v2": 45e12, "TPU v3": 123e12, "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12,
    "TPU v5p": 459e12, "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12, "TPU7x": 2307e12,
    "H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L4": 121e12,
    "B200": 2250e12, "GH200": 989e12, "V100": 125e12,
}


def device_peak_flops(device_kind: str | None = None, override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of one device: the config override if > 0, else the table, else None (e.g. CPU)."""
    if override_tflops and override_tflops > 0:
        return float(override_tflops) * 1e12
    kind = device_kind if device_kind is not None else jax.devices()[0].device_kind
    matches = [k for k in PEAK_FLOPS if k.lower() in kind.lower()]
    return PEAK_FLOPS[max(matches, key=len)] if matches else None


def compiled_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled (per-device SPMD) computation from XLA's cost analysis."""
    try:
        cost = compiled.cost_analysis()
    except Exception as e:  # some backends do not implement cost analysis
        log.warning("XLA cost analysis unavailable: %s", e)
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


class Throughput:
    """Images/s and per-device TFLOP/s / MFU over the window between two `update` calls."""

    def __init__(self, *, global_batch: int, flops_per_step_per_device: float | None, peak_flops: float | None):
        self.global_batch = global_batch
        self.flops = flops_per_step_per_device
        self.peak = peak_flops
        self._t, self._step = None, None

    def start(self, step: int) -> None:
        self._t, self._step = time.perf_counter(), step

    def update(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        steps, dt = step - self._step, now - self._t
        self._t, self._step = now, step
        if steps <= 0 or dt <= 0:
            return {}
        out = {"steps_per_s": steps / dt, "img_per_s": steps * self.global_batch / dt}
        if self.flops:
            out["tflops_per_device"] = self.flops * steps / dt / 1e12
            if self.peak:
                out["mfu"] = self.flops * steps / dt / self.peak
        return out


class MetricsWriter:
    """Appends one JSON object per logged step to ``<workdir>/metrics.jsonl`` and TensorBoard scalars
    to ``<workdir>/tensorboard``. Only process 0 writes."""

    def __init__(self, workdir: str, *, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._file = open(self.path, "a", buffering=1)
            if tensorboard:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        self._file.write(json.dumps({"step": step, **{k: (v if math.isfinite(v) else str(v))
                                                       for k, v in clean.items()}}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._file:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


class Progress:
    """tqdm bar with ETA on a terminal; plain log lines (with ETA) otherwise."""

    def __init__(self, start: int, total: int, *, enabled: bool = True):
        self.total, self.enabled = total, enabled and jax.process_index() == 0
        self._bar = None
        self._t0, self._s0 = time.perf_counter(), start
        if self.enabled and sys.stdout.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items() if k in ("loss", "img_per_s", "mfu")})
            self._bar.refresh()
            return
        elapsed = time.perf_counter() - self._t0
        rate = (step - self._s0) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        body = " ".join(f"{k}={v:.4g}" for k, v in scalars.items() if v or k != "nonfinite_steps")
        print(f"step {step}/{self.total} {body} eta={_fmt_seconds(eta)}", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
