"""Runtime checks on 8 simulated CPU devices (run by tests/test_runtime_multidevice.py in a subprocess).

Usage: XLA_FLAGS=--xla_force_host_platform_device_count=8 python check_runtime.py WORKDIR
Prints one "CHECK <name> OK ..." line per passed check; any failure raises.
"""

import os
import sys

import jax
import numpy as np

jax.config.update("jax_threefry_partitionable", True)

from t2ijax import sharding as shd  # noqa: E402
from t2ijax.config_utils import import_sibling  # noqa: E402
from t2ijax.train import loop  # noqa: E402
from t2ijax.train.checkpoint import Checkpointer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
common = import_sibling(os.path.join(REPO, "configs", "common.py"), "common")


def toy_config(mesh, rules=None, **overrides):
    fields = dict(total_steps=4, log_every=2, checkpoint_every=2, progress=False, tensorboard=False)
    c = common.toy_config(**{**fields, **overrides})
    c.mesh = {**dict(data=1, fsdp=1, tensor=1, expert=1), **mesh}
    if rules:
        c.logical_axis_rules.update(rules)
    c.optim.lr = 1e-2
    return c


def run_steps(config, devices, n=2):
    """(losses, final params on host) after `n` steps of the compiled step."""
    s = loop.setup(config, devices=devices)
    loader = loop.make_loader(config, split="train", batch_size=config.batch_size, seed=0)
    batches = [shd.global_batch(next(loader), s.shard_config) for _ in range(n)]
    compiled, _ = loop.compile_step(s, batches[0])
    state, losses = s.state, []
    for b in batches:
        state, m = compiled(state, s.frozen, b)
        losses.append(float(m["loss"]))
    return losses, jax.device_get(state.params), state


def max_diff(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)


def check_sharded_step_matches_single_device():
    ref_losses, ref_params, _ = run_steps(toy_config({}), jax.devices()[:1])
    for mesh in ({"data": 2, "fsdp": 4}, {"data": 2, "tensor": 4}):
        losses, params, state = run_steps(toy_config(mesh), jax.devices())
        kernel = state.params["in_proj"]["kernel"]
        assert len(kernel.sharding.device_set) == 8, kernel.sharding
        dl = max(abs(a - b) for a, b in zip(losses, ref_losses))
        dp = max_diff(params, ref_params)
        assert dl <= 1e-5 and dp <= 1e-5, (mesh, dl, dp)
        print(f"CHECK sharded_step mesh={mesh} OK max|dloss|={dl:.2e} max|dparam|={dp:.2e} "
              f"in_proj.kernel spec={kernel.sharding.spec}", flush=True)


def check_fsdp_memory():
    config = toy_config({"fsdp": 8}, rules={"embed": "fsdp", "mlp": "fsdp", "vocab": "fsdp"})
    s = loop.setup(config, devices=jax.devices())
    tree = (s.state.params, s.state.opt_state)
    total = sum(x.nbytes for x in jax.tree.leaves(tree))
    per_device = shd.per_device_bytes(tree)
    assert per_device <= total / 8 * 1.05, (per_device, total)
    # a dimension that fsdp=8 does not divide is replicated rather than failing
    assert shd.fit_spec(jax.P("fsdp", None), (12, 8), s.shard_config.mesh) == jax.P(None, None)
    print(f"CHECK fsdp_memory OK per-device={per_device}B total={total}B ratio={per_device / total:.4f}", flush=True)


def check_frozen_placed_by_the_method():
    """A frozen model built by the method straight onto its shardings stays FSDP-sharded (not replicated)."""
    rules = {"embed": "fsdp", "mlp": "fsdp", "vocab": "fsdp"}
    config = toy_config({"fsdp": 8}, rules=rules)
    config.model.teacher_hidden = 64
    s = loop.setup(config, devices=jax.devices())
    teacher = s.frozen["teacher"]
    total = sum(x.nbytes for x in jax.tree.leaves(teacher))
    per_device = shd.per_device_bytes(teacher)
    assert per_device <= total / 8 * 1.05, (per_device, total)
    kernel = teacher["in_proj"]["kernel"]
    assert kernel.sharding.spec[0] == "fsdp" and len(kernel.sharding.device_set) == 8, kernel.sharding
    state = loop.train(config, os.path.join(sys.argv[1], "teacher"), devices=jax.devices())
    assert int(state.step) == 4
    print(f"CHECK frozen_placement OK teacher per-device={per_device}B total={total}B "
          f"ratio={per_device / total:.4f}", flush=True)


def check_frozen_unet_loaded_sharded(workdir):
    """ELLA's frozen U-Net, loaded from a diffusers folder, lands FSDP-sharded on the 8 devices (the loader
    puts each tensor straight onto its sharding); the old path (load whole, then place plain arrays)
    replicated it."""
    import warnings

    from t2ijax.config_utils import load_config
    from t2ijax.weights import load_unet, save_unet

    config = load_config(os.path.join(REPO, "configs", "ella_sd15.py") + ":tiny")
    config.mesh = dict(data=1, fsdp=8, tensor=1, expert=1)
    config.batch_size = 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = loop.setup(config, devices=jax.devices())
    folder = os.path.join(workdir, "frozen_unet")
    save_unet(s.method.unet, jax.device_get(s.frozen["unet"]), folder)
    config.model.unet_path = folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = loop.setup(config, devices=jax.devices()).frozen["unet"]
    total = sum(x.nbytes for x in jax.tree.leaves(loaded))
    per_device = shd.per_device_bytes(loaded)
    replicated = shd.per_device_bytes(shd.place(load_unet(folder)[1], s.shard_config)[0])
    assert max_diff(jax.device_get(loaded), jax.device_get(s.frozen["unet"])) == 0.0
    assert per_device <= 0.2 * total and replicated == total, (per_device, replicated, total)
    print(f"CHECK frozen_unet_sharded OK per-device={per_device}B total={total}B ratio={per_device / total:.4f} "
          f"(loaded whole then placed: {replicated}B)", flush=True)


def check_resume_bit_exact(workdir):
    mesh = {"data": 2, "fsdp": 4}
    seen_full, seen_resumed = [], []
    full = loop.train(toy_config(mesh), os.path.join(workdir, "full"),
                      batch_callback=lambda step, b: seen_full.append((step, b["example_id"].tolist())))
    resumed_dir = os.path.join(workdir, "resumed")
    loop.train(toy_config(mesh), resumed_dir, stop_after=2,
               batch_callback=lambda step, b: seen_resumed.append((step, b["example_id"].tolist())))
    assert Checkpointer(os.path.join(resumed_dir, "checkpoints")).latest_step() == 2
    resumed = loop.train(toy_config(mesh), resumed_dir,
                         batch_callback=lambda step, b: seen_resumed.append((step, b["example_id"].tolist())))
    assert int(resumed.step) == int(full.step) == 4
    assert seen_full == seen_resumed, (seen_full, seen_resumed)
    for a, b in zip(jax.tree.leaves(jax.device_get((full.params, full.opt_state, full.ema))),
                    jax.tree.leaves(jax.device_get((resumed.params, resumed.opt_state, resumed.ema)))):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    print(f"CHECK resume OK params/opt/ema bit-equal at step 4, data order identical ({len(seen_full)} batches)",
          flush=True)


def check_restore_on_more_devices(workdir):
    rules = {"embed": "fsdp", "mlp": "fsdp", "vocab": "fsdp"}
    wd = os.path.join(workdir, "four")
    saved = loop.train(toy_config({"fsdp": 4}, rules=rules, total_steps=2), wd, devices=jax.devices()[:4])
    saved_params = jax.device_get(saved.params)
    s8 = loop.setup(toy_config({"fsdp": 8}, rules=rules, total_steps=2), devices=jax.devices())
    state, it = Checkpointer(os.path.join(wd, "checkpoints")).restore(s8.abstract_state)
    kernel = state.params["in_proj"]["kernel"]
    assert len(kernel.sharding.device_set) == 8 and kernel.sharding.spec[0] == "fsdp", kernel.sharding
    assert max_diff(jax.device_get(state.params), saved_params) == 0.0
    assert it == {"next_batch": 2}, it
    # and the 8-device run continues from it
    more = loop.train(toy_config({"fsdp": 8}, rules=rules, total_steps=3), wd, devices=jax.devices())
    assert int(more.step) == 3
    print("CHECK restore_4_to_8 OK params equal, resharded to 8 devices, training continued", flush=True)


if __name__ == "__main__":
    assert jax.device_count() == 8, f"needs 8 devices, got {jax.device_count()}: set XLA_FLAGS"
    work = sys.argv[1]
    # identical step programs (uninterrupted vs resumed runs) then compile once
    jax.config.update("jax_compilation_cache_dir", os.path.join(work, "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    check_sharded_step_matches_single_device()
    check_fsdp_memory()
    check_frozen_placed_by_the_method()
    check_frozen_unet_loaded_sharded(work)
    check_resume_bit_exact(work)
    check_restore_on_more_devices(work)
    print("ALL OK", flush=True)
