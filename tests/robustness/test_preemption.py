"""Preemption (issue 17): SIGTERM / SIGINT checkpoint at the next step boundary and exit 0 with a resume hint; the
resumed run ends bit-identical to an uninterrupted one."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from t2ijax.config_utils import load_module
from t2ijax.train import loop
from t2ijax.train.checkpoint import Checkpointer

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
common = load_module(os.path.join(ROOT, "configs", "common.py"))
STEPS = 400


def _config():
    return common.toy_config(total_steps=STEPS, checkpoint_every=10_000, log_every=1, tensorboard=False,
                             progress=False, async_checkpointing=False)


SCRIPT = textwrap.dedent(f"""
    import os, sys
    sys.path.insert(0, {os.path.abspath(os.path.join(ROOT, "configs"))!r})
    import common
    from t2ijax.train import loop
    steps, every = (int(a) for a in sys.argv[2:4]) if len(sys.argv) > 2 else ({STEPS}, 10_000)
    config = common.toy_config(total_steps=steps, checkpoint_every=every, log_every=1, tensorboard=False,
                               progress=False, async_checkpointing=False)
    loop.train(config, sys.argv[1])
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_at_the_next_step_and_the_resumed_run_equals_a_straight_one(tmp_path, sig):
    workdir = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, workdir], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=ROOT)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # wait for a few logged steps
        if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 6:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the signal: make STEPS larger"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert f"stopped by {sig.name} at step" in out and "run the same command to resume" in out, out
    stopped = Checkpointer(os.path.join(workdir, "checkpoints")).latest_step()
    assert 0 < stopped < STEPS
    resumed = loop.train(_config(), workdir)
    straight = loop.train(_config(), str(tmp_path / "straight"))
    assert int(resumed.step) == int(straight.step) == STEPS
    for a, b in zip(jax.tree.leaves((resumed.params, resumed.opt_state, resumed.ema)),
                    jax.tree.leaves((straight.params, straight.opt_state, straight.ema))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_kill_9_at_ten_moments_then_resume_ends_bit_identical(tmp_path):
    """SIGKILL at 10 moments spread over the run (some inside a checkpoint save): every restart resumes from the
    newest complete checkpoint and the run ends with the uninterrupted run's parameters, bit for bit."""
    workdir = str(tmp_path / "run")
    steps, every = 4000, 25  # enough steps that 10 kills land before the end (each restart moves the run on)
    rng = np.random.default_rng(0)
    kills = 0
    for attempt in range(40):
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT, workdir, str(steps), str(every)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        if kills < 10:
            start = time.time()
            logged = os.path.join(workdir, "metrics.jsonl")
            lines = sum(1 for _ in open(logged)) if os.path.exists(logged) else 0
            # once the step runs (a new metrics line), wait a random 0-0.6 s: steps and saves interleave
            while proc.poll() is None and time.time() - start < 300:
                if os.path.exists(logged) and sum(1 for _ in open(logged)) > lines:
                    break
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.6))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        proc.wait(timeout=600)
        if kills == 10 or (proc.returncode == 0 and
                           Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() == steps):
            break
    assert kills == 10, f"only {kills} kills landed before the run finished"
    config = _config()
    config.total_steps, config.checkpoint_every = steps, every
    # the same run goes on a little past its newest checkpoint (not to the end: 4,000 steps twice cost minutes)
    end = (Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() or 0) + every + 7
    resumed = loop.train(config, workdir, stop_after=end)
    config.checkpoint_every = 10_000  # saving does not touch the state; the straight run needs none
    straight = loop.train(config, str(tmp_path / "straight"), stop_after=end)
    assert int(resumed.step) == int(straight.step) == end
    for a, b in zip(jax.tree.leaves((resumed.params, resumed.opt_state, resumed.ema)),
                    jax.tree.leaves((straight.params, straight.opt_state, straight.ema))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
