"""Orbax checkpoints of the whole training state: written in the background, restorable on any mesh.

Layout: ``output_dir/checkpoints/<step>/`` holds three items,
``params`` (the model), ``train`` (the rest of TrainState: step, optimizer state, RNG) and ``meta``
(JSON: data position, resolved config, eval metrics, labels, buckets), plus Orbax's ``metrics``.
Params are a separate item so that predict and export can restore them alone.

Crash safety comes from Orbax's commit protocol: a step is written to
``<step>.orbax-checkpoint-tmp-<time>/`` and renamed to ``<step>/`` only when complete, so a process
killed mid-write leaves a temporary folder that is never listed (and is removed at the next start).
A write that finds the disk full removes its temporary folder and raises one FlaxftError (the earlier
checkpoints stay the resume point). A step folder damaged later (a file truncated or removed) fails to
restore with a CorruptCheckpoint error naming the step and what could not be read: see flaxft.resume.

Restoring takes an abstract target whose leaves carry the *current* mesh's shardings
(``jax.ShapeDtypeStruct(..., sharding=...)``): a checkpoint saved on 8 devices restores onto 1, 4,
or another mesh layout.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import re
import shutil
import time
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from flaxft import storage
from flaxft.errors import FlaxftError
from flaxft.losses import MULTI_LABEL, REGRESSION
from flaxft.metrics import lower_is_better
from flaxft.monitoring import sigterm_hook

log = logging.getLogger("flaxft")

CHECKPOINTS = "checkpoints"
DAMAGED = "damaged-checkpoints"  # beside checkpoints/: step folders that could not be restored
TMP_MARK = ".orbax-checkpoint-tmp"


class CorruptCheckpoint(FlaxftError):
    """A finished checkpoint that cannot be read back (damaged, or saved by a different model)."""

    def __init__(self, message: str, step: int, reason: str):
        super().__init__(message)
        self.step, self.reason = step, reason


def _type_registry():
    """Orbax's jax.Array handler without replica-parallel writes: those slice replicated arrays with
    one small XLA compilation per array and replica at the first save; one replica writing is plenty
    for a BERT-sized state, and training then compiles nothing but its steps."""
    return ocp.type_handlers.create_type_handler_registry(
        (jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False)))


def _pytree_restore(target):
    """Restore into `target`'s shapes, dtypes and (new) shardings."""
    return ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))


def default_best_metric(task, problem_type: str) -> str:
    """The task's headline metric: Matthews correlation for CoLA, Pearson for regression, micro-F1 for multi-label,
    else accuracy."""
    if problem_type == REGRESSION:
        return "eval_pearson"
    if problem_type == MULTI_LABEL:
        return "eval_f1_micro"
    if task is not None and task.metric == "cola":
        return "eval_matthews_correlation"
    return "eval_accuracy"


def metric_value(metrics: dict, metric: str) -> float:
    """`metric` of an evaluation's metrics; a clear error if this task's evaluation has no such metric."""
    if metric not in metrics:
        raise FlaxftError(f"checkpoint.best_metric={metric} is not an evaluation metric of this task; "
                          f"use one of {', '.join(sorted(metrics))}")
    return metrics[metric]


def abstract(tree):
    """Shape, dtype and sharding of every leaf: the restore target for the current mesh."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def split_state(state) -> tuple[Any, dict]:
    """TrainState -> (params, every other field): params are saved as their own item."""
    rest = {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if f.name != "params"}
    return state.params, rest


def _reason(e: BaseException) -> str:
    """What went wrong, from the innermost cause: TensorStore's message names the array and file it could not
    read, where Orbax's wrapper only gives an index."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300] + ("..." if len(text) > 300 else "")


def locate(path: str | pathlib.Path) -> tuple[epath.Path, Optional[int]]:
    """`checkpoint.resume_from` -> (checkpoints folder, step or None for its latest).

    Accepts a step folder (``run/checkpoints/120``), a checkpoints folder, or a run folder.
    """
    p = storage.path(path)
    if not p.is_dir():
        raise FlaxftError(f"checkpoint.resume_from: '{path}' is not a folder; give a run folder, its checkpoints/ "
                          "folder or one step folder such as run/checkpoints/120")
    if TMP_MARK in p.name:
        raise FlaxftError(f"checkpoint.resume_from: '{path}' is a half-written checkpoint; give a finished one")
    if re.fullmatch(r"\d+", p.name) and (p / "params").is_dir():
        return p.parent, int(p.name)
    if (p / CHECKPOINTS).is_dir():
        return p / CHECKPOINTS, None
    return p, None


class Checkpoints:
    """A small wrapper over ``ocp.CheckpointManager``: keep the latest `keep` plus the best by `best_metric`."""

    def __init__(self, directory: str | pathlib.Path | epath.Path, *, keep: int = 2, best_metric: Optional[str] = None,
                 async_save: bool = True, read_only: bool = False):
        self.directory = storage.path(directory)  # a local folder or gs://bucket/run/checkpoints
        self.best_metric = best_metric
        policies: list = [pp.LatestN(keep)]
        best = {}
        if best_metric:
            mode = "min" if lower_is_better(best_metric) else "max"
            get = lambda m: m[best_metric]  # noqa: E731
            policies.append(pp.BestN(get_metric_fn=get, reverse=mode == "min", n=1,
                                     keep_checkpoints_without_metrics=False))
            best = {"best_fn": get, "best_mode": mode}
        # read_only is ours (save refuses), not Orbax's: its read-only mode only adds log warnings.
        self.read_only = read_only
        options = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies), **best, enable_async_checkpointing=async_save,
            create=False, cleanup_tmp_directories=not read_only)  # removes what a killed run left half-written
        registry = _type_registry()
        handlers = {name: ocp.PyTreeCheckpointHandler(type_handler_registry=registry) for name in ("params", "train")}
        self._mngr = ocp.CheckpointManager(self.directory, options=options,
                                           item_handlers={**handlers, "meta": ocp.JsonCheckpointHandler()})
        self._writing: Optional[tuple[int, int]] = None  # (step, bytes in memory) of the write in progress
        self._failure: Optional[FlaxftError] = None  # a failed write, raised once

    # -------------------------------------------------------------- listing

    def steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def latest_step(self) -> Optional[int]:
        return self._mngr.latest_step()

    def best_step(self) -> Optional[int]:
        """The best step by best_metric among checkpoints with metrics; None if none has any."""
        if not self.best_metric:
            return None
        return self._mngr.best_step()

    def path(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def set_aside(self, step: int) -> epath.Path:
        """Move a damaged step folder out of the checkpoints (kept for inspection, never listed again), so that
        the run can write that step afresh. Returns where it went."""
        where = self.directory.parent / DAMAGED / str(step)
        if jax.process_index() == 0:
            where.parent.mkdir(parents=True, exist_ok=True)
            if where.exists():  # damaged twice at one step: keep the newer
                shutil.rmtree(where) if not storage.is_remote(where) else where.rmtree()
            self.path(step).rename(where)
        if jax.process_count() > 1:  # every host lists the steps after the move
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"flaxft set aside {step}")
        self._mngr.reload()
        return where

    # -------------------------------------------------------------- saving

    def save(self, step: int, state, meta: dict, metrics: Optional[dict] = None) -> bool:
        """Start writing `state` at `step` (returns once the arrays are copied off the devices)."""
        if self.read_only:
            raise RuntimeError(f"internal error: the checkpoints in '{self.directory}' were opened read-only")
        if step in self.steps():
            return False  # already saved (e.g. the last step of a run being rerun)
        if metrics and self.best_metric:
            metric_value(metrics, self.best_metric)  # Orbax's best-checkpoint policy needs it
        params, rest = split_state(state)
        args = ocp.args.Composite(params=ocp.args.PyTreeSave(params), train=ocp.args.PyTreeSave(rest),
                                  meta=ocp.args.JsonSave(meta))
        self._check(self._mngr.wait_until_finished)  # the previous write's failure belongs to its own step
        self._writing = (step, sum(x.nbytes for x in jax.tree.leaves(state)))
        saved = self._check(lambda: self._mngr.save(step, args=args, metrics=metrics or None, force=True))
        sigterm_hook("checkpoint")  # (tests: a SIGTERM while the write runs in the background)
        return saved

    def wait(self) -> None:
        """Block until background writes are committed (and old checkpoints removed)."""
        if self._failure is None:  # a failed write was reported once; its step is gone
            self._check(self._mngr.wait_until_finished)

    def _check(self, write):
        """Run `write`; a full disk becomes one FlaxftError, after removing the half-written step folder."""
        try:
            return write()
        except Exception as e:  # noqa: BLE001 - Orbax/TensorStore wrap ENOSPC in several kinds
            if not storage.disk_full(e) or self._writing is None:
                raise
            self._failure = self._disk_full(*self._writing)
            raise self._failure from e

    def _disk_full(self, step: int, in_memory: int) -> FlaxftError:
        if jax.process_index() == 0 and not storage.is_remote(self.directory):
            # space back now, not at the next start; writer threads of the failed save may still be finishing
            for _ in range(50):
                halves = list(self.directory.glob(f"{step}{TMP_MARK}*"))
                if not halves:
                    break
                for half in halves:
                    shutil.rmtree(half, ignore_errors=True)
                time.sleep(0.1)
        latest = self.latest_step()
        # what a checkpoint of this run takes on disk: the last one written, else the state's size in memory
        needed = storage.tree_bytes(self.path(latest)) if latest is not None else in_memory
        then = (f"then rerun the same command: it resumes from step {latest} ({self.path(latest)})"
                if latest is not None else "then rerun the same command")
        return storage.disk_full_error(self.directory, f"the checkpoint of step {step}", needed or in_memory, then)

    def close(self) -> None:
        self._mngr.close()

    def reached_preemption(self, step: int) -> bool:
        """Multi-host Cloud TPU: whether JAX's preemption service says all hosts should save and stop now."""
        return jax.process_count() > 1 and self._mngr.reached_preemption(step)

    # -------------------------------------------------------------- restoring

    def read_meta(self, step: int) -> dict:
        try:
            meta = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as e:  # noqa: BLE001 - Orbax/tensorstore raise many kinds; all mean "unreadable"
            raise self._corrupt(step, e) from None
        if not isinstance(meta, dict) or "step" not in meta:
            raise self._corrupt(step, ValueError("its meta item is not flaxft metadata"))
        return meta

    def restore(self, step: int, target) -> Any:
        """The TrainState saved at `step`, laid out like `target` (a TrainState of arrays or abstract leaves)."""
        params, rest = split_state(abstract(target))
        try:
            out = self._mngr.restore(step, args=ocp.args.Composite(params=_pytree_restore(params),
                                                                   train=_pytree_restore(rest)))
        except Exception as e:  # noqa: BLE001
            raise self._corrupt(step, e) from None
        return target.replace(params=out.params, **out.train)

    def restore_params(self, step: int, target) -> Any:
        """Only the model parameters saved at `step` (predict and export need nothing else)."""
        try:
            return self._mngr.restore(step, args=ocp.args.Composite(params=_pytree_restore(abstract(target)))).params
        except Exception as e:  # noqa: BLE001
            raise self._corrupt(step, e) from None

    def _corrupt(self, step: int, e: BaseException) -> CorruptCheckpoint:
        reason = _reason(e)
        return CorruptCheckpoint(f"checkpoint '{self.path(step)}' cannot be restored ({reason}); it is damaged or "
                                 "from a different model: delete that step folder to fall back to an earlier "
                                 "checkpoint, or use a new output_dir", step, reason)
