"""Nothing is fetched from the network at run time (issue 17, safety): training, sampling and the SUR / ELLA
methods' set-up run with every socket connection refused."""

import os
import socket
import warnings

import numpy as np
import pytest

from t2ijax.config_utils import load_config, load_module

common = load_module(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "common.py"))


@pytest.fixture()
def no_network(monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted at run time")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert not attempts, f"network access attempted: {attempts[:3]}"


def test_train_and_sample_without_network(no_network, tmp_path):
    from t2ijax.methods.sur import SURMethod
    from t2ijax.train import loop

    config = common.toy_config(total_steps=2, checkpoint_every=2, log_every=1, tensorboard=False, progress=False,
                               async_checkpointing=False)
    assert int(loop.train(config, str(tmp_path / "toy")).step) == 2
    sur = load_config("configs/sur_shapes.py:tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method = SURMethod(sur)
        frozen = method.frozen(sur, training=False)
    import jax

    params = method.init(jax.random.PRNGKey(0), sur)
    images = method.sample(params, frozen, ["a red circle"], seeds=[0])
    assert images.shape == (1, 32, 32, 3) and images.dtype == np.uint8
