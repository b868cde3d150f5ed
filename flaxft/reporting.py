"""What the user sees and keeps: metrics.jsonl, TensorBoard events, summary.json (process 0 only).

output_dir may be a gs:// URL: the growing files are then written locally and uploaded (flaxft.storage.Mirror)."""

from __future__ import annotations

import json
import math
from typing import Any

import jax
from etils import epath

from flaxft import storage


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
    """Appends one JSON object per event to metrics.jsonl and mirrors scalars to TensorBoard.

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

    def write(self, step: int, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in event.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(k, v, int(step))
        if self._mirror.remote:
            self._sync(force=False)

    def flush(self) -> None:
        if self.enabled:
            self._sync(force=True)

    def _sync(self, force: bool) -> None:
        self._tb.flush()
        self._mirror.sync(force)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
            self._mirror.close()
