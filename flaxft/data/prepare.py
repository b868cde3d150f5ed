"""A run's examples ready to batch: every split tokenized once (cached), the bucket lengths, and the
training plan (length buckets or packed rows), a pure function of (seed, epoch)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional, Union

import numpy as np

from flaxft.data import buckets, packing
from flaxft.data.sources import RawData
from flaxft.data.tokenize import TokenizedSplit, tokenize_split
from flaxft.errors import FlaxftError

log = logging.getLogger("flaxft")


@dataclasses.dataclass
class RunData:
    raw: RawData                         # the splits as loaded, and what the labels are
    tokenizer: Any
    splits: dict[str, TokenizedSplit]
    boundaries: list[int]                # bucket lengths (evaluation and prediction always use them)


def prepare(data_cfg, batch_size: int, raw: RawData, tokenizer, *, token_type_ids: bool,
            trained_boundaries: Optional[list[int]] = None) -> RunData:
    """Tokenize every split; choose buckets from the training lengths, or keep a trained model's
    `trained_boundaries` (plus one more if these inputs are longer)."""
    splits = {name: tokenize_split(ds, raw.text_columns, tokenizer, data_cfg.max_seq_length, data_cfg.cache_dir,
                                   token_type_ids=token_type_ids) for name, ds in raw.splits.items()}
    return RunData(raw, tokenizer, splits, _boundaries(data_cfg, batch_size, splits, trained_boundaries))


def _boundaries(d, batch_size: int, splits: dict[str, TokenizedSplit], trained: Optional[list[int]]) -> list[int]:
    longest = max(int(s.lengths.max()) for s in splits.values() if len(s))
    if trained:
        top = int(buckets.round_up(longest, d.pad_to_multiple_of))
        return list(trained) + ([top] if top > trained[-1] else [])
    if d.bucket_boundaries:
        return list(d.bucket_boundaries)  # buckets.assign reports an example longer than the last
    top = int(min(buckets.round_up(longest, d.pad_to_multiple_of), max(d.max_seq_length, longest)))
    lengths = splits["train"].lengths if "train" in splits else np.concatenate([s.lengths for s in splits.values()])
    return buckets.choose_boundaries(lengths, d.num_buckets, batch_size, d.pad_to_multiple_of, top)


@dataclasses.dataclass(frozen=True)
class BucketPlan:
    """Training batches of `batch_size` rows, one length bucket each, shuffled per (seed, epoch)."""
    lengths: np.ndarray
    boundaries: list[int]
    rows_per_step: int
    seed: int
    length_grouping: str = "bucket"
    labels: Optional[np.ndarray] = None  # class ids: batches dealt out class by class (data.stratify_labels)
    carry_leftovers: bool = False        # a bucket's leftovers join the next longer bucket (data.carry_leftovers)
    slots = None
    info: dict = dataclasses.field(default_factory=dict)

    def epoch(self, epoch: int) -> list[buckets.BucketBatch]:
        return buckets.plan_batches(self.lengths, self.boundaries, self.rows_per_step, shuffle=True, seed=self.seed,
                                    epoch=epoch, grouping=self.length_grouping, labels=self.labels,
                                    carry_leftovers=self.carry_leftovers)


@dataclasses.dataclass(frozen=True)
class PackedPlan:
    """Training batches of packed rows, re-packed per (seed, epoch) (see flaxft.data.packing)."""
    lengths: np.ndarray
    length: int
    slots: int
    rows_per_step: int
    seed: int
    info: dict

    def epoch(self, epoch: int) -> list[packing.PackedBatch]:
        return packing.plan_epoch(self.lengths, self.length, self.slots, self.rows_per_step, seed=self.seed,
                                  epoch=epoch)


def _class_ids(data: RunData) -> np.ndarray:
    labels = data.splits["train"].labels
    if labels.ndim != 1 or labels.dtype.kind != "i":
        kind = "multi-label rows" if labels.ndim != 1 else "regression targets"
        raise FlaxftError(f"data.stratify_labels=true deals training batches out by class, but this task's labels are "
                          f"{kind}; set data.stratify_labels=false")
    return labels


def training_plan(d, t, data: RunData, data_parallel: int, seed: Optional[int] = None) -> Union[BucketPlan, PackedPlan]:
    """The plan `data.packing` asks for, shuffled by `seed` (default train.seed); `data_parallel` devices x
    micro-batches must divide a step's rows."""
    seed = t.seed if seed is None else seed
    lengths = data.splits["train"].lengths
    if not d.packing:
        return BucketPlan(lengths, data.boundaries, t.batch_size, seed, d.length_grouping,
                          _class_ids(data) if d.stratify_labels else None, d.carry_leftovers)
    length = d.packed_length or int(buckets.round_up(d.max_seq_length, d.pad_to_multiple_of))
    rows = packing.pack(lengths, length, d.max_examples_per_row, seed=seed)
    per_step = packing.rows_per_step(rows, t.batch_size, data_parallel * t.grad_accum_steps)
    info = {"packed_length": length, "max_examples_per_row": d.max_examples_per_row, "packed_rows_per_step": per_step,
            "examples_per_step_mean": len(lengths) / len(rows) * per_step}
    log.info("packing: %d training examples in %d rows of %d tokens; %d rows (about %.1f examples) per step",
             len(lengths), len(rows), length, per_step, info["examples_per_step_mean"])
    return PackedPlan(lengths, length, d.max_examples_per_row, per_step, seed, info)
