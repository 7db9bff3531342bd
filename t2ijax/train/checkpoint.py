"""Orbax checkpoints: one async CheckpointManager holding a Composite of named items.

Items of a step:
  <trainable item>  trainable params (``method.trainable_item``, default "params")
  opt_state         optimizer state
  ema               EMA params (absent when EMA is off)
  train_meta        {"step", "rng"}
  config            the resolved config (JSON)
  data_iter         the data iterator's state (JSON), so a resumed run sees exactly the data
                    an uninterrupted run would; several processes save ``{"processes": [state of each]}``
                    (gathered to process 0, which writes JSON items)

Restores always build explicit ``ShapeDtypeStruct(..., sharding=...)`` targets from the
CURRENT mesh, so a checkpoint written on one topology restores onto another. Restore
failures raise, except that `restore_newest_intact` (what a resuming run calls) moves a DAMAGED step (a file cut
short or unreadable: the step does not even restore as saved) aside to ``<step>.damaged``, warns naming it, and
falls back to the previous step; a step that is intact but does not fit the target (another config) raises.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from t2ijax.sharding import process_allgather_json, to_host
from t2ijax.train.state import TrainState

_BYTES_TAG = "__bytes_b64__"
MANIFEST = "t2ijax_manifest.json"  # {relative path: [size, sha256 or null]} of a finished step's files
DIGESTS = ("sha256", "size")  # "size": no re-read of each checkpoint after saving (multi-GB states); catches cuts only
log = logging.getLogger(__name__)


def encode_iterator_state(state: Any) -> dict:
    """JSON-safe form of a data iterator state (grain DataLoader iterators return bytes)."""
    if isinstance(state, (bytes, bytearray)):
        return {_BYTES_TAG: base64.b64encode(bytes(state)).decode("ascii")}
    return {"state": state}


def decode_iterator_state(blob: dict, *, portable: bool = False) -> Any:
    """This process's data-iterator state from a saved `data_iter` item. States saved by another number of
    processes are refused unless `portable` (the loader's position is global, e.g. procedural loaders)."""
    states = blob["processes"] if "processes" in blob else [blob]
    if len(states) == jax.process_count():
        chosen = states[jax.process_index()]
    elif portable:
        chosen = states[0]
    else:
        raise ValueError(f"the checkpoint's data-iterator state was saved by {len(states)} process(es) and this run "
                         f"has {jax.process_count()}: per-process positions in a sharded dataset do not map onto "
                         f"another process count; resume with {len(states)} process(es), or set "
                         "config.resume_data=False to restart the data order (the model state is restored)")
    if _BYTES_TAG in chosen:
        return base64.b64decode(chosen[_BYTES_TAG])
    return chosen["state"]


class Checkpointer:
    """Save / restore `TrainState` + config + data-iterator state under ``<workdir>/checkpoints``.

    `keep_last` most recent steps are kept, plus every step divisible by `keep_period` (0: none).
    """

    def __init__(self, directory: str, *, trainable_item: str = "params", keep_last: int = 3,
                 keep_period: int = 0, async_save: bool = True, digest: str = "sha256"):
        policies = [pp.LatestN(n=keep_last)]
        if keep_period:
            policies.append(pp.EveryNSteps(keep_period))
        options = ocp.CheckpointManagerOptions(
            create=True, enable_async_checkpointing=async_save,
            preservation_policy=pp.AnyPreservationPolicy(policies))
        if digest not in DIGESTS:
            raise ValueError(f"config.checkpoint_digest={digest!r}; choose one of {DIGESTS}")
        self.directory = os.path.abspath(directory)
        self.item, self.digest = trainable_item, digest
        handlers = {name: ocp.StandardCheckpointHandler()
                    for name in (trainable_item, "opt_state", "ema", "train_meta")}
        handlers.update(config=ocp.JsonCheckpointHandler(), data_iter=ocp.JsonCheckpointHandler())
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def saved_items(self, step: int) -> set[str]:
        step_dir = os.path.join(self.directory, str(step))
        if not os.path.isdir(step_dir):
            raise FileNotFoundError(f"checkpoint step {step} not found in {self.directory} "
                                    f"(steps present: {self.all_steps()})")
        return {name for name in os.listdir(step_dir) if os.path.isdir(os.path.join(step_dir, name))}

    def save(self, state: TrainState, *, config_json: dict, iterator_state: Any = None) -> bool:
        self.write_manifests()  # of the steps finished since the last call (an async save finishes later)
        step = int(to_host(state.step))
        items = {
            self.item: ocp.args.StandardSave(state.params),
            "opt_state": ocp.args.StandardSave(state.opt_state),
            "train_meta": ocp.args.StandardSave({"step": state.step, "rng": state.rng}),
            "config": ocp.args.JsonSave(config_json),
        }
        if state.ema is not None:
            items["ema"] = ocp.args.StandardSave(state.ema)
        if iterator_state is not None:
            blob = encode_iterator_state(iterator_state)
            if jax.process_count() > 1:  # each process's position in its shard (process 0 writes JSON items)
                blob = {"processes": process_allgather_json(blob)}
            items["data_iter"] = ocp.args.JsonSave(blob)
        with self._failure_says_what_is_intact(step):
            return self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    @contextlib.contextmanager
    def _failure_says_what_is_intact(self, step: int | None):
        """A failed write (disk full, quota, permissions) names the step and the newest complete checkpoint, which
        Orbax's write-then-rename leaves untouched."""
        try:
            yield
        except OSError as e:
            self.manager.reload()
            intact = [s for s in self.all_steps() if s != step]
            where = f"step {max(intact)}" if intact else "none yet"
            raise OSError(e.errno, f"saving checkpoint {'step ' + str(step) if step is not None else ''} in "
                                   f"{self.directory} failed ({e.strerror or e}); the previous checkpoint ({where}) "
                                   "is intact: free space (or fix the cause) and rerun the same command to resume "
                                   "from it") from e

    def restore(self, abstract: TrainState, step: int | None = None, *, with_iterator: bool = True,
                portable_iterator: bool = False) -> tuple[TrainState, Any]:
        """(state, this process's data-iterator state or None). `abstract` carries the target shardings;
        `portable_iterator`: see `decode_iterator_state`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        saved = self.saved_items(step)
        items = {
            self.item: ocp.args.StandardRestore(abstract.params),
            "opt_state": ocp.args.StandardRestore(abstract.opt_state),
            "train_meta": ocp.args.StandardRestore({"step": abstract.step, "rng": abstract.rng}),
        }
        if abstract.ema is not None:
            items["ema"] = ocp.args.StandardRestore(abstract.ema)
        if with_iterator and "data_iter" in saved:
            items["data_iter"] = ocp.args.JsonRestore()
        missing = sorted(set(items) - saved)
        if missing:
            raise ValueError(f"checkpoint step {step} in {self.directory} lacks items {missing} "
                             f"(it has {sorted(saved)}); was it written by a different method or EMA setting?")
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        state = TrainState(step=out["train_meta"]["step"], params=out[self.item], opt_state=out["opt_state"],
                           ema=out["ema"] if abstract.ema is not None else None, rng=out["train_meta"]["rng"])
        iterator_state = (decode_iterator_state(out["data_iter"], portable=portable_iterator) if "data_iter" in items
                          else None)
        return state, iterator_state

    def restore_newest_intact(self, abstract: TrainState, *, with_iterator: bool = True,
                              portable_iterator: bool = False) -> tuple[TrainState, Any]:
        """`restore` of the newest step that is intact. A step whose files differ from its manifest, or that fails
        to restore and also fails to read as saved (no target), is damaged: it is renamed ``<step>.damaged`` (kept
        for inspection), a warning names it, and the previous step is tried. A failure on an intact step (e.g. a
        config whose shapes differ) is raised as it is. Several processes take process 0's list of steps and its
        reading of the manifests, and agree on every failure, so that they all restore the same step."""
        for step in _from_process_0(sorted(self.all_steps(), reverse=True)):
            why = _from_process_0(self.damage(step) if jax.process_index() == 0 else None)  # one reader
            if why is None:
                error = None
                try:
                    restored = self.restore(abstract, step, with_iterator=with_iterator,
                                            portable_iterator=portable_iterator)
                except Exception as e:  # noqa: BLE001 -- told apart below: damaged, or not this config's
                    error = e
                if not _on_any_process(error is not None):
                    return restored
                if not _on_any_process(not self._reads_as_saved(step)):
                    raise error or RuntimeError(f"restoring checkpoint step {step} failed on another process")
                why = f"{type(error).__name__}: {str(error)[:300]}" if error else "unreadable on another process"
            moved = self._move_aside(step)
            log.warning("checkpoint step %d in %s is damaged (%s); moved to %s, falling back to the previous "
                        "checkpoint", step, self.directory, why, moved)
            print(f"[t2ijax] WARNING: checkpoint step {step} is damaged ({why}); moved to {moved}; resuming from "
                  "the previous checkpoint", flush=True)
        raise FileNotFoundError(f"no intact checkpoint left in {self.directory} (damaged steps were moved to "
                                "<step>.damaged): start a new workdir, or repair one by hand")

    def _reads_as_saved(self, step: int) -> bool:
        """Whether every item of `step` reads back without a target (array data and JSON intact)."""
        handlers = {"config": ocp.args.JsonRestore(), "data_iter": ocp.args.JsonRestore()}
        try:
            items = {name: handlers.get(name, ocp.args.StandardRestore()) for name in self.saved_items(step)}
            self.manager.restore(step, args=ocp.args.Composite(**items))
            return True
        except Exception:  # noqa: BLE001 -- any failure to read the files
            return False

    def _move_aside(self, step: int) -> str:
        """Rename `step` to ``<step>.damaged`` (process 0, once every process is done reading it)."""
        _from_process_0(None)  # a barrier: nobody still reads the step
        dst = None
        if jax.process_index() == 0:
            src = os.path.join(self.directory, str(step))
            dst, n = f"{src}.damaged", 1
            while os.path.exists(dst):
                n += 1
                dst = f"{src}.damaged{n}"
            os.rename(src, dst)
        dst = _from_process_0(dst)  # also the barrier after the rename
        self.manager.reload()
        return dst

    def restore_params(self, abstract_params, step: int | None = None, *, ema: bool = False):
        """Only the trainable (or EMA) params, e.g. for sampling; `abstract_params` None restores them as
        saved (host arrays)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        name = "ema" if ema else self.item
        out = self.manager.restore(step, args=ocp.args.Composite(**{name: ocp.args.StandardRestore(abstract_params)}))
        return out[name]

    def item_metadata(self, step: int, name: str):
        """The saved tree of one item (shapes and dtypes, no values)."""
        if name not in self.saved_items(step):
            raise ValueError(f"checkpoint step {step} in {self.directory} has no item {name!r} "
                             f"(it has {sorted(self.saved_items(step))})")
        return self.manager.item_metadata(step)[name]

    def restore_config(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def wait(self) -> None:
        with self._failure_says_what_is_intact(None):  # an async save's failure surfaces here
            self.manager.wait_until_finished()
        self.write_manifests()

    def write_manifests(self) -> None:
        """Record size and SHA-256 (only the size with digest "size") of every file of each finished step that has
        no manifest yet (process 0), so that a file later cut short or altered is detected (`damage`)."""
        if jax.process_index() != 0:
            return
        for step in self.all_steps():
            folder = os.path.join(self.directory, str(step))
            if os.path.exists(os.path.join(folder, MANIFEST)) or not os.path.isdir(folder):
                continue
            files = _file_digests(folder, sha256=self.digest == "sha256")
            tmp = os.path.join(folder, MANIFEST + ".tmp")
            with open(tmp, "w") as f:
                json.dump(files, f, sort_keys=True)
            os.replace(tmp, os.path.join(folder, MANIFEST))

    def damage(self, step: int) -> str | None:
        """What is wrong with `step`'s files according to its manifest (None: intact, or no manifest)."""
        folder = os.path.join(self.directory, str(step))
        path = os.path.join(folder, MANIFEST)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            want = json.load(f)
        have = _file_digests(folder, sha256=any(entry[1] for entry in want.values()))
        missing = sorted(set(want) - set(have))
        if missing:
            return f"missing files {missing[:3]}"
        changed = sorted(name for name in want if have[name] != want[name])
        if changed:
            return "changed or cut short: " + ", ".join(f"{n} ({have[n][0]} of {want[n][0]} bytes)" for n in changed[:3])
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.write_manifests()
        self.manager.close()


def _from_process_0(value):
    """Process 0's `value` on every process (a collective; the value itself with one process)."""
    return process_allgather_json(value)[0]


def _on_any_process(flag: bool) -> bool:
    return any(process_allgather_json(bool(flag)))


def _file_digests(folder: str, *, sha256: bool = True) -> dict[str, list]:
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if rel.startswith(MANIFEST):
                continue
            digest = None
            if sha256:
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                digest = h.hexdigest()
            out[rel] = [os.path.getsize(path), digest]
    return out
