"""The loop's contract with methods: `init_from`, a resume that builds no fresh state, the step given to
the loss, frozen weights placed by the method (the 8-device checks are in multidevice/check_runtime.py)."""

import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import common  # noqa: E402

from t2ijax.methods import register_method  # noqa: E402
from t2ijax.methods.toy import ToyMethod  # noqa: E402
from t2ijax.train import loop  # noqa: E402
from t2ijax.train.checkpoint import Checkpointer  # noqa: E402


def _config(**overrides):
    c = common.toy_config(total_steps=4, checkpoint_every=2, log_every=1, tensorboard=False, progress=False,
                          async_checkpointing=False)
    for k, v in overrides.items():
        c[k] = v
    return c


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_init_from_a_workdir_starts_from_its_params(tmp_path):
    source = loop.train(_config(), str(tmp_path / "source"))
    started = loop.setup(_config(init_from=str(tmp_path / "source"))).state
    fresh = loop.setup(_config()).state
    assert int(started.step) == 0  # a new run: step, optimizer and data start over
    for a, b in zip(_leaves(started.params), _leaves(source.params)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(started.ema), _leaves(source.params)):
        np.testing.assert_array_equal(a, b)  # EMA restarts from the loaded params
    assert any(np.abs(a - b).max() > 0 for a, b in zip(_leaves(started.params), _leaves(fresh.params)))
    ema = loop.setup(_config(init_from=str(tmp_path / "source"), init_from_ema=True)).state
    for a, b in zip(_leaves(ema.params), _leaves(source.ema)):
        np.testing.assert_array_equal(a, b)
    # training from it runs and resumes as usual
    state = loop.train(_config(init_from=str(tmp_path / "source")), str(tmp_path / "child"))
    assert int(state.step) == 4


def test_init_from_is_strict(tmp_path):
    loop.train(_config(), str(tmp_path / "source"))
    wider = _config(init_from=str(tmp_path / "source"))
    wider.model.hidden = 48
    with pytest.raises(ValueError, match=r"mis-shaped: .*in_proj/kernel: expected \(\d+, 48\), got \(\d+, 32\)"):
        loop.setup(wider).state
    deeper = _config(init_from=str(tmp_path / "source"))
    deeper.model.depth = 2
    with pytest.raises(ValueError, match=r"missing keys: hidden\.1/"):
        loop.setup(deeper).state
    with pytest.raises(ValueError, match="not a workdir .* no load_init hook"):
        loop.setup(_config(init_from=str(tmp_path / "nowhere"))).state


def test_init_from_an_upstream_file_through_the_method_hook(tmp_path):
    reference = loop.setup(_config(seed=7)).state.params
    seen = {}

    class Upstream(ToyMethod):
        def load_init(self, path, config, abstract_params):
            seen["path"] = path
            return jax.tree.map(lambda x: np.asarray(x) + 1.0, reference)

    register_method("toy_upstream", Upstream)
    state = loop.setup(_config(method="toy_upstream", init_from="upstream.safetensors")).state
    assert seen["path"] == "upstream.safetensors"
    for a, b in zip(_leaves(state.params), _leaves(reference)):
        np.testing.assert_array_equal(a, b + 1.0)

    class Wrong(ToyMethod):
        def load_init(self, path, config, abstract_params):
            return {"in_proj": {"kernel": np.zeros((2, 2))}}

    register_method("toy_wrong", Wrong)
    with pytest.raises(ValueError, match="missing keys"):
        loop.setup(_config(method="toy_wrong", init_from="x")).state


def test_resume_builds_no_fresh_state(tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    loop.train(_config(), workdir, stop_after=2)
    built = []
    original = loop.setup

    def counting_setup(config, **kwargs):
        s = original(config, **kwargs)
        build = s.build_state
        s.build_state = lambda: built.append(1) or build()
        return s

    monkeypatch.setattr(loop, "setup", counting_setup)
    state = loop.train(_config(), workdir)
    assert int(state.step) == 4 and built == []  # restored straight into the abstract state
    loop.train(_config(), str(tmp_path / "fresh"))
    assert built == [1]


def test_loss_receives_the_step(tmp_path):
    steps = []

    class Recording(ToyMethod):
        def loss(self, params, frozen, batch, rng, step=None):
            jax.debug.callback(lambda s: steps.append(int(s)), step)
            return super().loss(params, frozen, batch, rng, step=step)

    register_method("toy_recording", Recording)
    loop.train(_config(method="toy_recording"), str(tmp_path / "run"))
    assert steps == [0, 1, 2, 3]
    # with gradient accumulation the loss sees optimizer steps
    steps.clear()
    config = _config(method="toy_recording", total_steps=4)
    config.optim.grad_accum_steps = 2
    loop.train(config, str(tmp_path / "accum"))
    assert steps == [0, 0, 1, 1]


def test_frozen_teacher_placed_by_the_method(tmp_path):
    config = _config()
    config.model.teacher_hidden = 24
    s = loop.setup(config)
    teacher = s.frozen["teacher"]
    assert teacher["in_proj"]["kernel"].shape[-1] == 24
    state = loop.train(config, str(tmp_path / "run"))
    assert int(state.step) == 4
    ckpt = Checkpointer(str(tmp_path / "run" / "checkpoints"), async_save=False)
    assert "teacher" not in str(ckpt.saved_items(4))  # frozen weights are never checkpointed
    ckpt.close()
