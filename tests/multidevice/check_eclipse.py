"""ECLIPSE's contrastive loss over a global batch sharded on 8 simulated CPU devices equals the one-device value
(run by tests/test_eclipse_sharded.py in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8).

Usage: XLA_FLAGS=--xla_force_host_platform_device_count=8 python check_eclipse.py WORKDIR
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
REPO = os.path.dirname(os.path.dirname(HERE))

from t2ijax import sharding as shd  # noqa: E402
from t2ijax.config_utils import load_config  # noqa: E402
from t2ijax.methods.eclipse import contrastive_loss  # noqa: E402
from t2ijax.train import loop  # noqa: E402
from eclipse_fixtures import write_feature_cache  # noqa: E402


def config_for(cache, mesh):
    c = load_config(f"{REPO}/configs/eclipse_kandinsky22.py:variant=tiny",
                    [f"data.path={cache}", "progress=False", "tensorboard=False", "batch_size=16"])
    c.unlock()
    c.mesh = {**dict(data=1, fsdp=1, tensor=1, expert=1), **mesh}
    return c


def run_steps(config, devices, n=3):
    s = loop.setup(config, devices=devices)
    loader = loop.make_loader(config, split="train", batch_size=config.batch_size, seed=0)
    batches = [shd.global_batch(next(loader), s.shard_config) for _ in range(n)]
    compiled, _ = loop.compile_step(s, batches[0])
    state, metrics = s.state, []
    for b in batches:
        state, m = compiled(state, s.frozen, b)
        metrics.append({k: float(v) for k, v in m.items()})
    return metrics, jax.device_get(state.params), batches[0]


def main(work):
    cache = write_feature_cache(os.path.join(work, "train.array_record"), n=64)
    ref, ref_params, _ = run_steps(config_for(cache, {}), jax.devices()[:1])
    for mesh in ({"data": 2, "fsdp": 4},):  # both batch axes at once
        got, params, batch = run_steps(config_for(cache, mesh), jax.devices())
        assert len(batch["text_embeds"].sharding.device_set) == 8, batch["text_embeds"].sharding
        dc = max(abs(a["contrastive_loss"] - b["contrastive_loss"]) for a, b in zip(got, ref))
        dl = max(abs(a["loss"] - b["loss"]) for a, b in zip(got, ref))
        dp = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                 for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)))
        assert dc <= 1e-4 and dl <= 1e-4 and dp <= 1e-5, (mesh, dc, dl, dp)
        # the loss on the sharded global arrays is the loss of the whole batch, not a mean of per-shard losses
        pred, text = batch["image_embeds"], batch["text_embeds"]
        sharded = float(jax.jit(lambda p, t: contrastive_loss(p, t, 100.0)[0])(pred, text))
        whole = float(contrastive_loss(jnp.asarray(np.asarray(pred)), jnp.asarray(np.asarray(text)), 100.0)[0])
        per_shard = np.mean([float(contrastive_loss(jnp.asarray(np.asarray(pred)[i:i + 2]),
                                                    jnp.asarray(np.asarray(text)[i:i + 2]), 100.0)[0])
                             for i in range(0, 16, 2)])
        assert abs(sharded - whole) <= 1e-4 * max(1.0, abs(whole)) and abs(per_shard - whole) > 1e-2
        print(f"CHECK eclipse_contrastive mesh={mesh} OK max|dcontrastive|={dc:.2e} max|dloss|={dl:.2e} "
              f"max|dparam|={dp:.2e}; global {whole:.4f} vs mean of per-device losses {per_shard:.4f}", flush=True)
    print("ALL OK", flush=True)


if __name__ == "__main__":
    assert jax.device_count() == 8, f"needs 8 devices, got {jax.device_count()}: set XLA_FLAGS"
    main(sys.argv[1])
