"""Where a run continues from: what a checkpoint records beside the arrays, whether a checkpoint fits this
run, and which checkpoint to restore (the newest that can be read: a damaged one is reported and skipped).

The data position is the step alone: each epoch's plan is a pure function of (seed, epoch) with a fixed
number of batches, so a checkpoint's step says exactly where in the data the run was.
"""

from __future__ import annotations

import json
import logging
from typing import Callable, Optional, TypeVar

import jax

from flaxft import storage
from flaxft.checkpoint import Checkpoints, CorruptCheckpoint, locate
from flaxft.errors import FlaxftError

log = logging.getLogger("flaxft")
T = TypeVar("T")

# What the arrays or the data order depend on: a checkpoint that differs in any of these cannot continue this run.
MUST_MATCH = ("task", "label_names", "num_labels", "train.batch_size", "train.seed", "data.max_seq_length", "buckets",
              "packing", "data.length_grouping", "data.stratify_labels", "data.carry_leftovers",
              "train_examples", "steps_per_epoch", "model_config", "grid",
              "train.optimizer")


def run_meta(setup, plan, steps_per_epoch: int, total_steps: int, grid=None) -> dict:
    """What every checkpoint of this run records besides its step and metrics."""
    raw, cfg = setup.data.raw, setup.config
    return {
        "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "train_examples": len(plan.lengths),
        "task": raw.task.name if raw.task else None, "label_names": list(raw.label_names or []) or None,
        "is_regression": raw.is_regression, "problem_type": raw.problem_type, "num_labels": raw.num_labels,
        "class_weights": setup.objective.class_weights, "text_columns": list(raw.text_columns),
        "buckets": setup.data.boundaries, "packing": plan.info or None, "num_devices": jax.device_count(),
        "mesh": dict(setup.mesh.shape), "model_config": setup.model_config.to_hf(), "config": cfg.to_dict(),
        "grid": grid.to_meta() if grid else None,
    }


def step_meta(meta: dict, step: int, metrics: dict) -> dict:
    """The metadata of the checkpoint at `step`: the data position, the run, the step's eval metrics."""
    spe = meta["steps_per_epoch"]
    return {"step": step, "epoch": step // spe, "batch_in_epoch": step % spe, **meta, "metrics": metrics}


def _flat(meta: dict) -> dict:
    cfg = meta.get("config", {})
    train = cfg.get("train", {})
    return {**meta, "train.batch_size": train.get("batch_size"), "train.seed": train.get("seed"),
            "data.max_seq_length": cfg.get("data", {}).get("max_seq_length"),
            # checkpoints from before these keys: adamw, one length bucket per batch, neither stratified nor carried
            "train.optimizer": train.get("optimizer", "adamw"),
            "data.length_grouping": _length_grouping(cfg.get("data", {})),
            "data.stratify_labels": cfg.get("data", {}).get("stratify_labels", False),
            "data.carry_leftovers": cfg.get("data", {}).get("carry_leftovers", False)}


def _length_grouping(data: dict) -> str:
    # older checkpoints: no key (one bucket per batch), or the earlier boolean group_by_length
    return data.get("length_grouping") or ("none" if data.get("group_by_length") is False else "bucket")


def check_compatible(saved: dict, ours: dict, where) -> None:
    """Refuse a checkpoint whose run differs in what the arrays or the data order depend on."""
    saved, ours = _flat(saved), _flat(ours)
    for key in MUST_MATCH:
        if saved.get(key) != ours[key]:
            shown = "a different model" if key == "model_config" else f"{key}={saved.get(key)}, not {ours[key]}"
            raise FlaxftError(f"checkpoint '{where}' was saved with {shown}; rerun with the settings it was "
                              "saved with, or use a new output_dir to start over")
    if saved.get("total_steps") != ours["total_steps"]:
        log.warning("the checkpoint's run had %s steps, this one has %d: the learning-rate schedule changes",
                    saved.get("total_steps"), ours["total_steps"])


def resume_point(own: Checkpoints, resume_from: Optional[str]) -> Optional[tuple[Checkpoints, list[int]]]:
    """The checkpoints to continue from and the steps to try, newest first: the run's own; else `resume_from`'s
    (a new run from another run's checkpoint: once this run has checkpoints of its own, reruns resume from those;
    a named step folder is the only step tried); else None."""
    steps = sorted(own.steps(), reverse=True)
    if steps:
        return own, steps
    if not resume_from:
        return None
    directory, step = locate(resume_from)
    source = Checkpoints(directory, read_only=True)
    steps = sorted(source.steps(), reverse=True) if step is None else [s for s in source.steps() if s == step]
    if not steps:
        raise FlaxftError(f"checkpoint.resume_from: no finished checkpoint in '{resume_from}'")
    return source, steps


def newest_intact(source: Checkpoints, steps: list[int], restore: Callable[[int], T]) -> tuple[int, T]:
    """(step, restore(step)) for the newest of `steps` (newest first) that restores. Each damaged newer one gets a
    warning that names it and what could not be read; a run's own damaged checkpoints are moved to
    damaged-checkpoints/ (kept, never listed again: the run writes those steps afresh). None restores: one error."""
    damaged: list[CorruptCheckpoint] = []
    for step in steps:
        try:
            result = restore(step)
        except CorruptCheckpoint as e:
            damaged.append(e)
            continue
        for bad in damaged:
            moved = "" if source.read_only else f"; moved it to '{source.set_aside(bad.step)}'"
            log.warning("checkpoint '%s' is damaged (%s)%s; using step %d, the newest intact checkpoint",
                        source.path(bad.step), bad.reason, moved, step)
        return step, result
    if len(damaged) == 1:
        raise damaged[0]
    raise FlaxftError(f"no checkpoint in '{source.directory}' can be restored (steps {', '.join(map(str, steps))}; "
                      f"the newest: {damaged[0].reason}); they are damaged or from a different model: move them "
                      "away to start over, or use a new output_dir")


def trim_metrics_log(output_dir, step: int) -> None:
    """Drop metrics.jsonl events past the resumed step: the rerun logs them again."""
    path = output_dir / "metrics.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            pass  # a line cut short by a killed process
    storage.write_text(path, "".join(kept))
