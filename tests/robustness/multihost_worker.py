"""One process of a training run for test_multihost.py: the toy config on synthetic data.

Usage: python multihost_worker.py WORKDIR STEPS CHECKPOINT_EVERY OUT_NPZ
Multi-process when JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID are set (t2ijax initialises
jax.distributed from them); devices from XLA_FLAGS. Process 0 writes the final params to OUT_NPZ.
"""

import os
import sys

import jax
import numpy as np

from t2ijax import sharding as shd
from t2ijax.config_utils import import_sibling
from t2ijax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
common = import_sibling(os.path.join(ROOT, "configs", "common.py"), "common")

workdir, steps, every, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
config = common.toy_config(total_steps=steps, checkpoint_every=every, log_every=1, tensorboard=False, progress=False)
state = loop.train(config, workdir)
params = shd.to_host(state.params)
print(f"PROCESS {jax.process_index()} of {jax.process_count()}, {jax.device_count()} devices "
      f"({jax.local_device_count()} local), step {int(shd.to_host(state.step))}", flush=True)
if jax.process_index() == 0:
    flat = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(out, **flat)
