"""Damaged checkpoints (issue 17): a latest checkpoint with a file cut short is detected, moved aside with a
warning naming its step, and the run resumes from the previous one and ends bit-identical to an undamaged run;
an intact checkpoint that does not fit the config is an error, never "damage"."""

import os
import shutil

import jax
import numpy as np
import pytest

from t2ijax.config_utils import load_module
from t2ijax.train import loop

common = load_module(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "common.py"))


def _config(total_steps=30, **overrides):
    c = common.toy_config(total_steps=total_steps, checkpoint_every=10, log_every=10, tensorboard=False,
                          progress=False, async_checkpointing=False, keep_last=3)
    for k, v in overrides.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    loop.train(_config(total_steps=20), str(root / "at20"))
    straight = loop.train(_config(), str(root / "straight"))
    return root, straight


def _largest_file(folder):
    files = [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names]
    return max(files, key=os.path.getsize)


@pytest.mark.parametrize("item", ["params", "opt_state", "train_meta", "data_iter"])
def test_a_file_cut_short_falls_back_to_the_previous_checkpoint(runs, tmp_path, capsys, item):
    root, straight = runs
    workdir = tmp_path / "run"
    shutil.copytree(root / "at20", workdir)
    victim = _largest_file(workdir / "checkpoints" / "20" / item)
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    state = loop.train(_config(), str(workdir))
    out = capsys.readouterr().out
    assert "checkpoint step 20 is damaged" in out and "resuming from the previous checkpoint" in out, out
    assert os.path.isdir(workdir / "checkpoints" / "20.damaged")  # kept for inspection, never deleted
    assert int(state.step) == 30
    for a, b in zip(jax.tree.leaves((state.params, state.opt_state, state.ema)),
                    jax.tree.leaves((straight.params, straight.opt_state, straight.ema))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_an_intact_checkpoint_of_another_config_is_an_error_not_damage(runs, tmp_path):
    root, _ = runs
    workdir = tmp_path / "run"
    shutil.copytree(root / "at20", workdir)
    wider = _config()
    wider.model.hidden = 48
    with pytest.raises(Exception, match="hidden|shape|48"):
        loop.train(wider, str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]


def test_sample_eval_and_convert_skip_a_damaged_latest_checkpoint(runs, tmp_path, capsys):
    """`load_for_inference` (behind sample, eval and convert) reads the newest intact step, read-only."""
    from t2ijax.train.checkpoint import Checkpointer
    from t2ijax.train.sampling import load_for_inference

    root, _ = runs
    workdir = tmp_path / "run"
    shutil.copytree(root / "at20", workdir)
    victim = _largest_file(workdir / "checkpoints" / "20" / "params")
    with open(victim, "r+b") as f:
        f.seek(0)
        f.write(b"\0" * 16)  # tampered, same size
    _, params, _, _ = load_for_inference(_config(), str(workdir), ema=False)
    assert "checkpoint step 20" in capsys.readouterr().out
    ckpt = Checkpointer(str(workdir / "checkpoints"))
    want = ckpt.restore_params(None, 10)
    ckpt.close()
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]  # nothing moved by a read-only command


def test_a_full_disk_during_a_save_says_the_previous_checkpoint_is_intact(runs, tmp_path, monkeypatch):
    """The write fails with ENOSPC (simulated at Orbax's manager: this container cannot fill a disk safely):
    the error names the step and the intact previous checkpoint, from which the run then resumes exactly."""
    import errno

    import orbax.checkpoint as ocp

    root, straight = runs
    workdir = tmp_path / "run"
    shutil.copytree(root / "at20", workdir)
    real_save = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        if step == 30:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    with pytest.raises(OSError, match=r"saving checkpoint step 30 .* failed \(No space left on device\); the previous "
                                      r"checkpoint \(step 20\) is intact"):
        loop.train(_config(), str(workdir))
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    state = loop.train(_config(), str(workdir))
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(straight.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_size_only_manifest_catches_cuts_without_reading_the_files(runs, tmp_path):
    from t2ijax.train.checkpoint import MANIFEST, Checkpointer

    root, _ = runs
    workdir = tmp_path / "run"
    shutil.copytree(root / "at20", workdir)
    for step in ("10", "20"):
        os.remove(workdir / "checkpoints" / step / MANIFEST)
    ckpt = Checkpointer(str(workdir / "checkpoints"), digest="size")
    ckpt.write_manifests()
    victim = _largest_file(workdir / "checkpoints" / "20" / "params")
    size = os.path.getsize(victim)
    with open(victim, "r+b") as f:
        f.write(b"\0" * 16)  # same size: not seen without SHA-256 (the documented price of "size")
    assert ckpt.damage(20) is None
    with open(victim, "r+b") as f:
        f.truncate(size // 2)
    assert f"({size // 2} of {size} bytes)" in ckpt.damage(20)
    ckpt.close()
    with pytest.raises(ValueError, match=r"config.checkpoint_digest='md5'; choose one of \('sha256', 'size'\)"):
        Checkpointer(str(workdir / "checkpoints"), digest="md5")
