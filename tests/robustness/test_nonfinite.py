"""Non-finite losses and gradients (issue 17, numerics): detected inside the jitted step; config.nonfinite "skip"
leaves the state as it was and counts the step, "stop" names the step and the batch's example ids."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2ijax.config_utils import load_module
from t2ijax.methods import register_method
from t2ijax.methods.toy import ToyMethod
from t2ijax.train import loop

common = load_module(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "common.py"))
POISONED_STEP = 2


class PoisonedToy(ToyMethod):
    """The toy denoiser whose loss is NaN at step POISONED_STEP (the loop passes the step)."""

    def loss(self, params, frozen, batch, rng, step=0):
        loss, aux = super().loss(params, frozen, batch, rng)
        return jnp.where(step == POISONED_STEP, jnp.nan, loss), aux


register_method("toy_poisoned", PoisonedToy)


def _config(**overrides):
    c = common.toy_config(method="toy_poisoned", total_steps=4, checkpoint_every=4, log_every=4, tensorboard=False,
                          progress=False, async_checkpointing=False, ema_decay=0.5)
    for k, v in overrides.items():
        c[k] = v
    return c


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_skip_leaves_the_state_as_it_was_and_counts_the_step(tmp_path):
    before = loop.train(_config(total_steps=POISONED_STEP), str(tmp_path / "before"))
    after = loop.train(_config(total_steps=POISONED_STEP + 1, checkpoint_every=POISONED_STEP + 1,
                               log_every=POISONED_STEP + 1), str(tmp_path / "after"))
    assert int(after.step) == POISONED_STEP + 1  # the step (and the data) moved on
    for name in ("params", "opt_state", "ema"):
        for a, b in zip(_leaves(getattr(before, name)), _leaves(getattr(after, name))):
            np.testing.assert_array_equal(a, b, err_msg=name)  # nothing else changed: no NaN got in
    with open(tmp_path / "after" / "metrics.jsonl") as f:
        logged = [json.loads(line) for line in f]
    assert logged[-1][loop.NONFINITE] == 1
    full = loop.train(_config(), str(tmp_path / "full"))  # training goes on after the skipped step
    assert all(np.isfinite(x).all() for x in _leaves(full.params))


def test_stop_names_the_step_and_the_batch(tmp_path):
    with pytest.raises(FloatingPointError, match=rf"at step {POISONED_STEP} .*example ids: \[\d+(, \d+)*\]"):
        loop.train(_config(nonfinite="stop"), str(tmp_path / "run"))


def test_an_unknown_policy_is_refused_before_compute(tmp_path):
    with pytest.raises(ValueError, match="config.nonfinite='ignore'; choose one of"):
        loop.train(_config(nonfinite="ignore"), str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
