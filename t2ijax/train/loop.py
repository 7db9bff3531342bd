"""The one train loop. Every method plugs in through `t2ijax.train.method`.

    state = train(config, workdir)

builds the mesh from the config, creates the state born sharded (or resumes from the
latest checkpoint in ``<workdir>/checkpoints``, restoring the data iterator too),
AOT-compiles the step (compile time printed), then runs it with metrics to
``<workdir>/metrics.jsonl`` + TensorBoard and async checkpoints every
``config.checkpoint_every`` steps and at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging
import os
import queue
import signal
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from t2ijax import sharding as shd
from t2ijax.config_utils import config_to_dict
from t2ijax.data.procedural import ProceduralLoader
from t2ijax.methods import get_method
from t2ijax.train import metrics as mt
from t2ijax.train.checkpoint import Checkpointer
from t2ijax.train.method import accepts, check_method, frozen_models, trainable_item
from t2ijax.train.optim import make_optimizer
from t2ijax.train.state import TrainState, create_state, param_count, with_params

log = logging.getLogger(__name__)


# Procedural data (``config.data.name``) -> the module whose ``make_loader`` builds it; any other name is a
# `t2ijax.data.pipeline` dataset.
PROCEDURAL_LOADERS = {"synthetic": "t2ijax.train.synthetic", "shapes_judge": "t2ijax.eval.cnn_judge_data",
                      "feature_cache": "t2ijax.data.feature_cache"}


def make_loader(config, *, split: str, batch_size: int, seed: int, shard_index: int = 0, shard_count: int = 1):
    """The data loader named by ``config.data.name`` (`PROCEDURAL_LOADERS` or a `t2ijax.data.pipeline` dataset)."""
    if config.data.name in PROCEDURAL_LOADERS:
        factory = importlib.import_module(PROCEDURAL_LOADERS[config.data.name]).make_loader
    else:
        try:
            from t2ijax.data.pipeline import make_loader as factory
        except ImportError as e:
            raise ImportError(f"config.data.name={config.data.name!r} needs t2ijax.data.pipeline, which failed "
                              f"to import ({e}); use data.name='synthetic' for a dataset-free run") from e
    return factory(config.data, split=split, batch_size=batch_size, seed=seed, shard_index=shard_index,
                   shard_count=shard_count)


class Prefetcher:
    """Reads batches and puts them on the mesh in a background thread, `depth` batches ahead.

    Yields (local numpy batch, global batch, loader state after this batch): the state travels
    with its batch, so a checkpoint records exactly the data consumed by the steps it covers,
    however far the thread has read ahead. depth=0 reads synchronously.
    """

    def __init__(self, loader, shard_config: shd.ShardConfig, depth: int = 2):
        self.loader, self.shard_config, self.depth = loader, shard_config, depth
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        if depth > 0:
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._fill, name="t2ijax-prefetch", daemon=True)
            self._thread.start()

    def _read(self):
        local = next(self.loader)
        return local, shd.global_batch(local, self.shard_config), self.loader.get_state()

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _fill(self):
        try:
            while not self._stop.is_set():
                self._put(self._read())
        except BaseException as e:  # handed to the consumer, re-raised there
            self._put(e)

    def __next__(self):
        if self._queue is None:
            return self._read()
        item = self._queue.get()
        if isinstance(item, StopIteration):
            raise RuntimeError("the data loader ran out of batches before config.total_steps") from item
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        """Stop and join the reader thread: a daemon thread left inside a device transfer when the
        interpreter exits aborts the process."""
        self._stop.set()
        if self._queue is not None:
            self._thread.join(timeout=60)


NONFINITE = "nonfinite_steps"  # per step: 1 when the loss or a gradient was not finite (the update was skipped)
NONFINITE_POLICIES = ("skip", "stop")


def make_train_step(method, tx: optax.GradientTransformation, schedule: optax.Schedule, config) -> Callable:
    """step(state, frozen, batch) -> (state, metrics): one micro-batch; with accumulation the
    optimizer (and EMA) update every ``grad_accum_steps`` calls. A step whose loss or gradients are not finite
    changes nothing but the step counter and reports ``nonfinite_steps`` 1 (`config.nonfinite`)."""
    accum = int(config.optim.get("grad_accum_steps", 1))
    decay = float(config.get("ema_decay", 0.0))
    takes_step = accepts(method.loss, "step")

    def step(state: TrainState, frozen, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        frozen = jax.lax.stop_gradient(frozen)

        def loss_fn(params):
            if takes_step:  # e.g. a loss-weight schedule
                return method.loss(params, frozen, batch, rng, step=state.step // accum)
            return method.loss(params, frozen, batch, rng)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema is not None:
            new_ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
            if accum > 1:
                updated = optax.MultiSteps(optax.identity(), accum).has_updated(opt_state)
                new_ema = jax.tree.map(lambda n, e: jnp.where(updated, n, e), new_ema, ema)
            ema = new_ema
        grad_norm = optax.tree.norm(grads)
        # a non-finite loss or gradient leaves params, optimizer state and EMA as they were (both policies; the
        # host stops the run under config.nonfinite="stop"); the step, and so the data, moves on
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), (params, opt_state, ema),
                            (state.params, state.opt_state, state.ema))
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step // accum),
                   NONFINITE: 1 - finite.astype(jnp.int32), **aux}
        params, opt_state, ema = kept
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema), metrics

    return step


@dataclasses.dataclass
class Setup:
    """Everything a run needs, built once (also used by `sample` and the benchmarks)."""
    config: Any
    shard_config: shd.ShardConfig
    method: Any
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    build_state: Callable[[], TrainState]
    state_shardings: TrainState
    abstract_state: TrainState
    frozen: Any
    frozen_shardings: Any

    @functools.cached_property
    def state(self) -> TrainState:
        """The fresh state, built on first use (a resume restores into `abstract_state` and never builds it),
        started from ``config.init_from`` when that is set."""
        state = self.build_state()
        params = init_from(self)
        if params is not None:
            with self.shard_config.active():
                state = jax.jit(functools.partial(with_params, tx=self.tx),
                                out_shardings=self.state_shardings)(state, params)
        return state


def init_from(s: Setup):
    """The trainable params named by ``config.init_from`` for the state of `s` (`params_from_init`)."""
    return params_from_init(s.config, s.method, s.abstract_state.params, s.state_shardings.params)


def params_from_init(config, method, abstract, shardings):
    """The trainable params named by ``config.init_from`` (None when unset), placed on `shardings`:
    a workdir (its latest checkpoint's trainable item, or its EMA with ``config.init_from_ema``; a method's
    ``adapt_init_params(saved, abstract_params)`` hook may reshape it, e.g. copy one model into N experts) or whatever
    the method's ``load_init(path, config, abstract_params)`` hook reads (an upstream folder or file, e.g. a
    released SUR-adapter). Strict: a missing, unexpected or mis-shaped key is an error naming it."""
    path = str(config.get("init_from", "") or "")
    if not path:
        return None
    checkpoints = path if os.path.basename(os.path.normpath(path)) == "checkpoints" else os.path.join(path, "checkpoints")
    if os.path.isdir(checkpoints):
        ckpt = Checkpointer(checkpoints, trainable_item=trainable_item(method), async_save=False)
        try:
            step = ckpt.latest_step()
            if step is None:
                raise FileNotFoundError(f"config.init_from={path!r}: no checkpoint in {checkpoints}")
            ema = bool(config.get("init_from_ema", False))
            adapt = getattr(method, "adapt_init_params", None)
            if callable(adapt):  # e.g. experts started from a single-model parent
                params = adapt(ckpt.restore_params(None, step, ema=ema), abstract)
                shd.check_tree_like(abstract, params, f"config.init_from={path!r} (step {step})")
                return jax.device_put(params, shardings)
            shd.check_tree_like(abstract, ckpt.item_metadata(step, "ema" if ema else ckpt.item),
                                f"config.init_from={path!r} (step {step})")
            return ckpt.restore_params(abstract, step, ema=ema)
        finally:
            ckpt.close()
    load = getattr(method, "load_init", None)
    if not callable(load):
        raise ValueError(f"config.init_from={path!r} is not a workdir (no {checkpoints}) and method "
                         f"{config.method!r} has no load_init hook to read it")
    params = load(path, config, abstract)
    shd.check_tree_like(abstract, params, f"config.init_from={path!r}")
    return jax.device_put(shd.strip_boxes(params), shardings)


def validate(config) -> None:
    """Cheap checks that would otherwise fail deep inside compilation."""
    if int(config.total_steps) <= 0:
        raise ValueError(f"config.total_steps={config.total_steps} must be positive")
    if int(config.batch_size) % jax.process_count():
        raise ValueError(f"config.batch_size={config.batch_size} must divide evenly over {jax.process_count()} "
                         "processes")
    for key in ("log_every", "checkpoint_every"):
        if int(config[key]) <= 0:
            raise ValueError(f"config.{key}={config[key]} must be positive")
    if str(config.get("nonfinite", "skip")) not in NONFINITE_POLICIES:
        raise ValueError(f"config.nonfinite={config.nonfinite!r}; choose one of {NONFINITE_POLICIES}")
    data = config.get("data")
    if data is not None and data.get("name") == "image_text_folder":  # before any model is built or loaded
        folder = os.path.expanduser(str(data.get("folder") or ""))
        if not folder or not os.path.isdir(folder):
            raise FileNotFoundError(f"config.data.folder={data.get('folder')!r} is not a folder: give the local "
                                    "folder of images and captions (metadata.jsonl / captions.jsonl per split)")


def setup(config, *, devices=None) -> Setup:
    """Mesh, method, optimizer, state (born sharded) and frozen sub-models."""
    validate(config)
    shard_config = shd.ShardConfig.from_config(config, devices=devices)
    if int(config.batch_size) % shard_config.batch_size_divisor:
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the batch mesh axes "
                         f"{shard_config.batch_axes} of size {shard_config.batch_size_divisor} (mesh "
                         f"{dict(shard_config.mesh.shape)})")
    method = get_method(config.method, config)
    check_method(method, config.method)
    # a method may build its own (e.g. expert ensembles: per-expert clipping and update masks)
    build_optimizer = getattr(method, "make_optimizer", None)
    tx, schedule = (build_optimizer if callable(build_optimizer) else make_optimizer)(config.optim,
                                                                                      int(config.total_steps))
    with shard_config.active():
        build, shardings, abstract = create_state(method, config, tx, shard_config)
        frozen, frozen_shardings = shd.place(frozen_models(method, config, shard_config), shard_config)
    return Setup(config, shard_config, method, tx, schedule, build, shardings, abstract, frozen, frozen_shardings)


def lower_step(s: Setup, example_batch: dict):
    """Trace and lower the jitted step (donated state, explicit in/out shardings) for `example_batch`."""
    batch_shardings = {k: s.shard_config.batch_sharding() for k in example_batch}
    jitted = jax.jit(make_train_step(s.method, s.tx, s.schedule, s.config),
                     in_shardings=(s.state_shardings, s.frozen_shardings, batch_shardings),
                     out_shardings=(s.state_shardings, s.shard_config.replicated()), donate_argnums=(0,))
    with s.shard_config.active():
        return jitted.lower(s.abstract_state, s.frozen, example_batch)


def compile_step(s: Setup, example_batch: dict) -> tuple[Any, float]:
    """AOT-compile the jitted step (`lower_step`, then XLA). Returns (compiled, seconds)."""
    t0 = time.perf_counter()
    lowered = lower_step(s, example_batch)
    with s.shard_config.active():
        compiled = lowered.compile()
    return compiled, time.perf_counter() - t0


def _memory_summary(compiled) -> str:
    try:
        mem = compiled.memory_analysis()
        gib = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
               - mem.alias_size_in_bytes) / 2**30
        return f" step memory/device={gib:.3g}GiB (temp {mem.temp_size_in_bytes / 2**30:.3g}GiB)"
    except Exception:  # memory analysis is optional per backend
        return ""


class PreemptionWatch:
    """SIGTERM / SIGINT ask the loop to checkpoint at the next step boundary and return (exit status 0).

    The handler only sets a flag (it never touches JAX) and puts the default handler back, so a second signal
    stops the process at once. Several processes must stop at the same step: there the flag is agreed at each
    logging step (`multihost_utils.process_allgather`) and JAX's preemption sync point (TPU maintenance
    notices, when the distributed runtime has a preemption service) is checked every step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.reason: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python installs handlers there only
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.reason = signal.Signals(signum).name
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def should_stop(self, step: int, logging_step: bool) -> bool:
        if jax.process_count() == 1:
            return self.reason is not None
        from jax.experimental import multihost_utils

        try:
            if multihost_utils.reached_preemption_sync_point(step):
                self.reason = self.reason or "a preemption notice"
                return True
        except Exception:  # no preemption service in this distributed runtime
            pass
        if logging_step:
            flags = multihost_utils.process_allgather(np.int32(self.reason is not None))
            if np.any(flags):
                self.reason = self.reason or "a signal to another process"
                return True
        return False


def _mean_metrics(history: list[dict]) -> dict[str, float]:
    """The window's mean of each metric; ``nonfinite_steps`` is summed (skipped steps in the window)."""
    host = shd.to_host(history)
    return {k: float((np.sum if k == NONFINITE else np.mean)([h[k] for h in host])) for k in host[0]}


def _check_finite(policy: str, step: int, metrics: dict, local_batch: dict) -> None:
    """Under config.nonfinite="stop": raise, naming the step and the batch's example ids, when that step's loss or
    gradients were not finite (one device-to-host read per step: a debugging policy)."""
    if policy != "stop" or not int(shd.to_host(metrics[NONFINITE])):
        return
    ids = next((np.asarray(local_batch[k]).tolist() for k in ("index", "record", "example_id") if k in local_batch),
               "unknown (the batch carries no example ids)")
    raise FloatingPointError(f"non-finite loss or gradients at step {step} (loss {float(shd.to_host(metrics['loss']))}, "
                             f"grad norm {float(shd.to_host(metrics['grad_norm']))}); the batch's example ids: {ids}. "
                             "The update was not applied; config.nonfinite='skip' skips such steps and counts them")


def write_config_json(config, workdir: str) -> dict:
    resolved = config_to_dict(config)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(resolved, f, indent=2, sort_keys=True)
    return resolved


def train(config, workdir: str, *, devices=None, stop_after: int | None = None,
          batch_callback: Callable[[int, dict], None] | None = None) -> TrainState:
    """Train ``config.method`` for ``config.total_steps`` steps in `workdir` (resuming if a checkpoint exists).

    `stop_after` ends the run (with a checkpoint) once that step is reached, as a preemption
    would; `batch_callback(step, local_numpy_batch)` sees every batch (tests use it to check
    data order). SIGTERM / SIGINT end it the same way at the next step boundary (`PreemptionWatch`).
    """
    shd.maybe_initialize_distributed()
    if config.get("compilation_cache_dir"):
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(config.compilation_cache_dir))
    s = setup(config, devices=devices)
    resolved = write_config_json(config, workdir)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), trainable_item=trainable_item(s.method),
                        keep_last=int(config.keep_last), keep_period=int(config.get("keep_period", 0)),
                        async_save=bool(config.get("async_checkpointing", True)),
                        digest=str(config.get("checkpoint_digest", "sha256")))
    local_batch = int(config.batch_size) // jax.process_count()
    loader = make_loader(config, split="train", batch_size=local_batch, seed=int(config.seed),
                         shard_index=jax.process_index(), shard_count=jax.process_count())
    if config.get("resume", True) and ckpt.latest_step() is not None:
        # a procedural loader's position is global: it maps onto any process count
        state, iterator_state = ckpt.restore_newest_intact(
            s.abstract_state, with_iterator=bool(config.get("resume_data", True)),
            portable_iterator=isinstance(loader, ProceduralLoader))
        log.info("resumed from step %d of %s", int(state.step), ckpt.directory)
    else:
        state, iterator_state = s.state, None
    start = int(shd.to_host(state.step))

    if callable(getattr(s.method, "wrap_loader", None)):  # e.g. ELLA adds cached text features
        loader = s.method.wrap_loader(loader, "train")
    if iterator_state is not None:
        loader.set_state(iterator_state)
    batches = Prefetcher(loader, s.shard_config, int(config.get("prefetch", 2)))

    total = int(config.total_steps)
    end = min(total, stop_after) if stop_after is not None else total
    if start >= end:
        batches.close()
        ckpt.close()
        return state

    local, batch, data_state = next(batches)
    compiled, compile_s = compile_step(s, batch)
    n_params = param_count(s.abstract_state.params)
    n_dev = s.shard_config.mesh.size
    flops = (s.method.flops_per_example * int(config.batch_size) / n_dev if s.method.flops_per_example
             else mt.compiled_flops(compiled))
    peak = mt.device_peak_flops(s.shard_config.mesh.devices.flat[0].device_kind,
                                float(config.get("peak_tflops_per_device", 0.0)))
    if jax.process_index() == 0:
        print(f"[t2ijax] method={config.method} trainable params={n_params:,} mesh={dict(s.shard_config.mesh.shape)} "
              f"global batch={config.batch_size} step compile time={compile_s:.2f}s "
              f"flops/step/device={flops or 0:.3g}{_memory_summary(compiled)}", flush=True)

    writer = mt.MetricsWriter(workdir, tensorboard=bool(config.get("tensorboard", True)))
    progress = mt.Progress(start, total, enabled=bool(config.get("progress", True)))
    throughput = mt.Throughput(global_batch=int(config.batch_size), flops_per_step_per_device=flops,
                               peak_flops=peak)
    writer.write(start, {"compile_seconds": compile_s, "trainable_params": n_params})
    throughput.start(start)
    history: list[dict] = []
    nonfinite_policy = str(config.get("nonfinite", "skip"))
    step = start
    watch = PreemptionWatch()
    try:
        watch.__enter__()
        while True:
            if batch_callback is not None:
                batch_callback(step, local)
            state, step_metrics = compiled(state, s.frozen, batch)
            _check_finite(nonfinite_policy, step, step_metrics, local)
            history.append(step_metrics)
            step += 1
            if step % int(config.log_every) == 0 or step == end:
                scalars = {**_mean_metrics(history), **throughput.update(step)}
                history = []
                if scalars.get(NONFINITE) and jax.process_index() == 0:
                    log.warning("%d of the last steps up to %d had a non-finite loss or gradients: their updates "
                                "were skipped (config.nonfinite='skip')", int(scalars[NONFINITE]), step)
                writer.write(step, scalars)
                progress.update(step, scalars)
            saved = step % int(config.checkpoint_every) == 0 or step == end
            if saved:
                ckpt.save(state, config_json=resolved, iterator_state=data_state)
            if step >= end:
                break
            if watch.should_stop(step, step % int(config.log_every) == 0):
                if not saved:
                    ckpt.save(state, config_json=resolved, iterator_state=data_state)
                ckpt.wait()
                if jax.process_index() == 0:
                    print(f"[t2ijax] stopped by {watch.reason} at step {step} of {total}: checkpoint saved in "
                          f"{ckpt.directory}; run the same command to resume", flush=True)
                break
            local, batch, data_state = next(batches)
    finally:
        watch.__exit__()
        batches.close()
        ckpt.close()
        writer.close()
        progress.close()
    return state
