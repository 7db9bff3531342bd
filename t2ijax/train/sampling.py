"""Load a method's trainable params for inference: latest checkpoint of a workdir (EMA by default) or random."""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from t2ijax import sharding as shd
from t2ijax.methods import get_method
from t2ijax.train.checkpoint import Checkpointer
from t2ijax.train.method import check_method, trainable_item


def config_from_workdir(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run saved as ``<workdir>/config.json``."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: pass --config, or a workdir written by `t2ijax train`")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_for_inference(config, workdir: str | None = None, *, random_init: bool = False, ema: bool = True,
                       step: int | None = None, devices=None):
    """(method, params, frozen, shard_config). Params come from the latest (or `step`) checkpoint of
    `workdir`, using the EMA copy when `ema` and the checkpoint has one, else a fresh init."""
    shard_config = shd.ShardConfig.from_config(config, devices=devices)
    method = get_method(config.method, config)
    check_method(method, config.method)
    init_key = jax.random.split(jax.random.PRNGKey(int(config.seed)))[0]
    with shard_config.active():
        if random_init:
            params, _, _ = shd.init_sharded(lambda r: method.init(r, config), init_key, shard_config)
        else:
            if workdir is None:
                raise ValueError("give a workdir with checkpoints, or random_init=True")
            abstract, specs = shd.abstract_with_specs(lambda r: method.init(r, config), init_key)
            target = shd.with_shardings(abstract, shard_config.tree_shardings(specs, abstract))
            ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), trainable_item=trainable_item(method))
            step = ckpt.latest_step() if step is None else step
            if step is None:
                raise FileNotFoundError(f"no checkpoint under {ckpt.directory}; train first or use random_init")
            use_ema = ema and "ema" in ckpt.saved_items(step)
            params = ckpt.restore_params(target, step, ema=use_ema)
            ckpt.close()
        frozen, _ = shd.place(method.frozen(config), shard_config)
    return method, params, frozen, shard_config
