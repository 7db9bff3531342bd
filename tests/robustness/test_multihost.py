"""Multi-host for real (issue 17, item 6): two processes on localhost, 4 CPU devices each, joined by
jax.distributed with CPU collectives (gloo), train the toy config with per-process data shards, save Orbax
checkpoints together, stop together when one of them gets SIGTERM (the flag is agreed across processes), skip a
damaged newest checkpoint together (moved aside once), resume and end where one process with 8 devices ends: the
same loss at every step and the same final parameters."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from t2ijax.train.checkpoint import decode_iterator_state

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "multihost_worker.py")
STEPS, EVERY = 80, 20


def _env(devices: int, process: int | None = None, port: int | None = None) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(key, None)
    if process is not None:
        env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(process))
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start_pair(workdir, out) -> list[subprocess.Popen]:
    port = _free_port()
    return [subprocess.Popen([sys.executable, WORKER, workdir, str(STEPS), str(EVERY), out], env=_env(4, i, port),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]


def _finish(procs) -> list[str]:
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        outs.append(out)
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-5000:]
    return outs


def _losses(workdir) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_two_processes_stopped_by_one_signal_and_resumed_past_a_damaged_checkpoint_equal_one_process(tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    ref = subprocess.run([sys.executable, WORKER, one, str(STEPS), str(EVERY), str(tmp_path / "one.npz")],
                         env=_env(8), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    assert "PROCESS 0 of 1, 8 devices" in ref.stdout

    procs = _start_pair(two, str(tmp_path / "two.npz"))
    metrics = os.path.join(two, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= EVERY + 4:  # past the first checkpoint
            break
        time.sleep(0.05)
    assert all(p.poll() is None for p in procs), "the run ended before the signal: make STEPS larger"
    procs[1].send_signal(signal.SIGTERM)  # only process 1 is told; both must stop at the same step
    outs = _finish(procs)
    assert "stopped by a signal to another process at step" in outs[0], outs[0][-3000:]
    stopped = int(outs[0].split("stopped by a signal to another process at step ")[1].split()[0])
    assert EVERY < stopped < 2 * EVERY, stopped
    step_dir = os.path.join(two, "checkpoints", str(stopped))
    with open(os.path.join(step_dir, "data_iter", "metadata")) as f:
        saved = json.load(f)
    assert saved == {"processes": [{"state": {"next_batch": stopped}}] * 2}, saved  # each process's position
    victim = max((os.path.join(root, n) for root, _, names in os.walk(os.path.join(step_dir, "params")) for n in names),
                 key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)

    outs = _finish(_start_pair(two, str(tmp_path / "two.npz")))  # the same command resumes
    assert all(f"checkpoint step {stopped} is damaged" in out for out in outs), outs[0][-3000:]
    left = os.listdir(os.path.join(two, "checkpoints"))
    assert [n for n in left if "damaged" in n] == [f"{stopped}.damaged"], left  # moved aside once, not twice
    assert all(f"PROCESS {i} of 2, 8 devices (4 local), step {STEPS}" in out for i, out in enumerate(outs)), outs

    want, got = _losses(one), _losses(two)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    loss_diff = max(abs(got[s] - want[s]) / abs(want[s]) for s in want)
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert sorted(a.files) == sorted(b.files)
    param_diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in a.files)
    print(f"2 processes x 4 devices vs 1 x 8, {STEPS} steps, stopped at {stopped}, that step damaged, resumed from "
          f"{EVERY}: max relative loss "
          f"difference {loss_diff:.2e}, max parameter difference {param_diff:.2e}")
    # the cross-process all-reduce sums in another order than the in-process one: last-bit differences only
    assert loss_diff < 1e-6 and param_diff < 1e-6


def test_a_per_process_data_position_does_not_map_onto_another_process_count():
    saved = {"processes": [{"state": {"pos": 3}}, {"state": {"pos": 5}}]}  # written by 2 processes
    with pytest.raises(ValueError, match=r"saved by 2 process\(es\) and this run has 1.*resume with 2.*resume_data"):
        decode_iterator_state(saved)
    assert decode_iterator_state(saved, portable=True) == {"pos": 3}  # a global position (procedural loaders)
    assert decode_iterator_state({"state": {"pos": 3}}) == {"pos": 3}  # one process's own format


def test_resume_data_false_restores_the_model_and_restarts_the_data_order(tmp_path):
    import sys as _sys

    _sys.path.insert(0, os.path.join(HERE, "..", "..", "configs"))
    import common

    from t2ijax.train import loop

    config = common.toy_config(total_steps=4, checkpoint_every=4, tensorboard=False, progress=False)
    loop.train(config, str(tmp_path))
    seen = []
    config.total_steps, config.resume_data = 6, False
    state = loop.train(config, str(tmp_path), batch_callback=lambda step, batch: seen.append(
        (step, batch["example_id"][0])))
    assert int(state.step) == 6 and seen == [(4, 0), (5, 8)]  # steps go on from 4, data from the first batch
