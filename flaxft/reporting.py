"""What the user sees and keeps: metrics.jsonl, TensorBoard events, summary.json (process 0 only).

output_dir may be a gs:// URL: the growing files are then written locally and uploaded (flaxft.storage.Mirror)."""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any, Optional

import jax
from etils import epath

from flaxft import storage
from flaxft.monitoring import peak_host_memory_gb


def write_json(path: epath.Path, obj: Any) -> None:
    """Write whole (never half a file, also after a crash), locally or on Cloud Storage."""
    storage.write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class RunWriter:
    """Appends one JSON object per event to metrics.jsonl and mirrors scalars to TensorBoard (a grid's replica
    events to tensorboard/<replica>/, one TensorBoard run per replica).

    For a remote output_dir both are written to a local folder and uploaded by flush() (which the trainer
    calls after each evaluation) and at most every `sync_every_s` seconds when writing."""

    def __init__(self, output_dir: epath.Path, enabled: bool | None = None, sync_every_s: float = 60.0):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = self._tb = self._mirror = None
        if self.enabled:
            self._mirror = storage.Mirror(output_dir, min_interval_s=sync_every_s)
            self._mirror.fetch("metrics.jsonl")  # a resumed run appends to its (trimmed) log
            self._jsonl = open(self._mirror.local / "metrics.jsonl", "a", encoding="utf-8")
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self._mirror.local / "tensorboard"))
            self._runs: dict[str, Any] = {}

    def write(self, step: int, event: dict[str, Any], run: Optional[str] = None) -> None:
        """Log `event` at `step`; `run` names a grid replica, whose scalars go to its own TensorBoard run."""
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in event.items()}}
        line = json.dumps(record) + "\n"
        with storage.room_for(self._mirror.local, "metrics.jsonl", len(line)):  # a line cut short is dropped on resume
            self._jsonl.write(line)
            self._jsonl.flush()
        tb, tags = (self._tb, ("step",)) if run is None else (self._run_writer(run), ("step", "replica", "seed",
                                                                                      "learning_rate"))
        for k, v in record.items():
            if k not in tags and isinstance(v, (int, float)) and not isinstance(v, bool):
                tb.add_scalar(k, v, int(step))
        if self._mirror.remote:
            self._sync(force=False)

    def _run_writer(self, run: str):
        if run not in self._runs:
            from tensorboardX import SummaryWriter

            self._runs[run] = SummaryWriter(str(self._mirror.local / "tensorboard" / run))
        return self._runs[run]

    def flush(self) -> None:
        if self.enabled:
            self._sync(force=True)

    def _sync(self, force: bool) -> None:
        for tb in (self._tb, *self._runs.values()):
            tb.flush()
        self._mirror.sync(force)

    def close(self) -> None:
        """Close every file, even when one fails; a full disk is one FlaxftError."""
        if self.enabled:
            with storage.room_for(self._mirror.local, "metrics.jsonl and TensorBoard events", None):
                with contextlib.ExitStack() as files:  # closes them all, last registered first
                    files.callback(self._mirror.close)
                    for tb in (self._tb, *self._runs.values()):
                        files.callback(_close_tensorboard, tb)
                    self._jsonl.close()


def _close_tensorboard(tb) -> None:
    """Close a tensorboardX SummaryWriter. On a full disk, drop what it still buffers: its exit hook would try
    again and print a traceback after flaxft's one-line error."""
    writers = list((tb.all_writers or {}).values())
    try:
        tb.close()
    except OSError:
        for w in writers:
            events = w.event_writer
            with contextlib.suppress(Exception):
                events._ev_writer._py_recordio_writer._writer.close()  # the file: closed even if its flush fails
            events._closed = True  # tensorboardX's flag: its exit hook then does nothing
        raise


def summary(trainer, eval_metrics: dict, step: int, tally, train_seconds: float, first_step_seconds: Optional[float],
            compiles, export_dir) -> dict[str, Any]:
    """summary.json: the final metrics, what was trained and how fast, compilations, checkpoint and export."""
    from flaxft.host_memory import host_allocator

    s = trainer.setup
    return {
        **eval_metrics,
        "global_step": step,
        "epochs": step / trainer.steps_per_epoch,
        "train_examples": len(trainer.plan.lengths),
        "skipped_rows": s.data.raw.skipped_rows,  # data.skip_bad_rows: split -> reason -> rows
        "train_seconds": train_seconds,
        "eval_seconds": tally.paused_seconds - trainer.checkpoint_seconds,
        "compile_seconds": trainer.compiled.compile_seconds,
        "first_step_seconds": first_step_seconds,
        "first_step_seconds_from_start": trainer.first_step_from_start,
        "peak_host_memory_gb": peak_host_memory_gb(),
        "checkpoint_seconds": trainer.checkpoint_seconds,
        "train_samples_per_second": tally.examples / train_seconds,
        "train_tokens_per_second": tally.tokens / train_seconds,
        "padding_efficiency": tally.tokens / max(tally.slots, 1),
        "buckets": s.data.boundaries,
        **trainer.plan.info,
        "train_compilations": trainer.compiled.train_compilations,
        "eval_compilations": trainer.compiled.eval_compilations,
        "observed_compilations": compiles.count,
        "compile_cache_hits": compiles.cache_hits,
        "num_devices": jax.device_count(),
        "host_allocator": host_allocator(),
        "mesh": dict(s.mesh.shape),
        "model_type": s.model_config.model_type,
        "task": s.data.raw.task.name if s.data.raw.task else "custom",
        "model": str(s.config.model.name_or_path),
        "resumed_from_step": trainer.resumed_step,
        "stopped_early": trainer.stopped_early,
        "stopped_at_step": step if trainer.stopped_early else None,
        "best_checkpoint_step": trainer.checkpoints.best_step(),
        "export": str(export_dir) if export_dir else None,
        "grid": trainer.grid.to_meta() if trainer.grid else None,
        "problem_type": s.objective.problem_type,
        "label_smoothing": s.objective.label_smoothing,
        "class_weights": list(s.objective.class_weights) if s.objective.class_weights else None,
        "eval_loss_class_weighted": s.objective.class_weights is not None,  # torch's weighted mean, as trained
    }
