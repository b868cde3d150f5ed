"""What the user sees and keeps: metrics.jsonl, TensorBoard events, summary.json (process 0 only)."""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any

import jax


def write_json_atomic(path: pathlib.Path, obj: Any) -> None:
    """Write via a temp file and rename, so a crash never leaves half a file behind."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class RunWriter:
    """Appends one JSON object per event to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, output_dir: pathlib.Path, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = self._tb = None
        if self.enabled:
            output_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(output_dir / "metrics.jsonl", "a", encoding="utf-8")
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(output_dir / "tensorboard"))

    def write(self, step: int, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in event.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(k, v, int(step))

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
