"""Sequence packing: several examples share one fixed-length row, so training compiles one shape.

Every epoch packs the training set afresh (best-fit decreasing: near-optimal fill) into rows of at
most `slots` examples, then shuffles the rows and groups them into batches of `rows_per_step` rows.
Best-fit decreasing places examples by length only, so re-packing with an epoch's seed keeps the
layout of lengths (hence the row and step counts) and changes which examples of equal length share
a row and a step: examples do not travel together for the whole run. An epoch is a pure function
of (seed, epoch), as the resumable train loop needs.

A PackedBatch's `indices` are [rows, slots] example ids (FILLER = empty slot; a filler row has only
empty slots).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from flaxft.data.buckets import FILLER
from flaxft.data.tokenize import TokenizedSplit
from flaxft.errors import FlaxftError


@dataclasses.dataclass(frozen=True)
class PackedBatch:
    """One global batch of packed rows: the row length and the examples sharing each row."""
    length: int
    indices: np.ndarray  # [rows, slots]
    replicas: ClassVar[int] = 0  # not a grid's stacked batch (flaxft.data.grid_plan)

    @property
    def num_rows(self) -> int:
        return len(self.indices)

    def rows(self, block: slice) -> "PackedBatch":
        """The rows `block` of this batch (a process feeds only its own)."""
        return dataclasses.replace(self, indices=self.indices[block])

    def collate(self, split: TokenizedSplit) -> dict[str, np.ndarray]:
        return collate(split, self.indices, self.length)


def pack(lengths: np.ndarray, length: int, slots: int, seed=0) -> np.ndarray:
    """Rows [n_rows, slots] of example indices (FILLER-padded) holding every example exactly once.

    Best-fit decreasing: longest examples first, each into the open row whose free space fits it
    most tightly. The seed (anything numpy's default_rng takes) only breaks ties between equal
    lengths: the rows' lengths are the same for every seed, their examples differ.
    """
    lengths = np.asarray(lengths)
    if len(lengths) and lengths.max() > length:
        raise FlaxftError(f"an example has {int(lengths.max())} tokens but data.packed_length is {length}; "
                          f"raise data.packed_length to at least {int(lengths.max())}")
    order = np.random.default_rng(seed).permutation(len(lengths))
    order = order[np.argsort(-lengths[order], kind="stable")]
    open_by_free: list[list[int]] = [[] for _ in range(length + 1)]  # row ids by free tokens
    has_open = np.zeros(length + 1, bool)
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        need = int(lengths[i])
        fits = np.flatnonzero(has_open[need:])
        if len(fits):
            f = need + int(fits[0])
            r = open_by_free[f].pop()
            has_open[f] = bool(open_by_free[f])
        else:
            r = len(rows)
            rows.append([])
            free.append(length)
        rows[r].append(int(i))
        free[r] -= need
        if len(rows[r]) < slots and free[r] > 0:  # still room for another example
            open_by_free[free[r]].append(r)
            has_open[free[r]] = True
    out = np.full((len(rows), slots), FILLER, dtype=np.int64)
    for r, members in enumerate(rows):
        out[r, :len(members)] = members
    return out


def rows_per_step(rows: np.ndarray, batch_size: int, multiple: int) -> int:
    """Rows per step so that a step holds about `batch_size` examples (the learning rate is tuned per
    example count), as a multiple of `multiple` (data-parallel devices x micro-batches)."""
    per_row = (rows != FILLER).sum() / max(len(rows), 1)
    return max(multiple, int(round(batch_size / per_row / multiple)) * multiple)


def plan_epoch(lengths: np.ndarray, length: int, slots: int, batch_rows: int, *, seed: int,
               epoch: int) -> list[PackedBatch]:
    """This epoch's batches: the examples packed and the rows shuffled by (seed, epoch); filler rows
    top up the last batch."""
    rows = pack(lengths, length, slots, seed=[seed, epoch])
    order = rows[np.random.default_rng([seed, epoch, 1]).permutation(len(rows))]
    n = -(-len(order) // batch_rows) * batch_rows
    order = np.concatenate([order, np.full((n - len(order), rows.shape[1]), FILLER, dtype=rows.dtype)])
    return [PackedBatch(length, order[s:s + batch_rows]) for s in range(0, n, batch_rows)]


def collate(split: TokenizedSplit, rows: np.ndarray, length: int, pad_id=None) -> dict[str, np.ndarray]:
    """Packed arrays: [R, L] tokens with segment_ids (1..k per example, 0 = padding) and positions
    restarting at 0 per example; [R, K] cls_index (each example's first token), labels and weights."""
    n_rows, slots = rows.shape
    keys = ("input_ids", "attention_mask", "segment_ids", "position_ids") + (
        () if split.type_ids is None else ("token_type_ids",))
    batch = {k: np.zeros((n_rows, length), np.int32) for k in keys}
    batch["input_ids"][:] = split.pad_id if pad_id is None else pad_id
    cls_index = np.zeros((n_rows, slots), np.int32)
    for r, k in zip(*np.nonzero(rows != FILLER)):
        a, b = split.offsets[rows[r, k]], split.offsets[rows[r, k] + 1]
        start = cls_index[r, k] = (batch["attention_mask"][r] > 0).sum()
        span = slice(start, start + b - a)
        batch["input_ids"][r, span] = split.ids[a:b]
        if split.type_ids is not None:
            batch["token_type_ids"][r, span] = split.type_ids[a:b]
        batch["attention_mask"][r, span] = 1
        batch["segment_ids"][r, span] = k + 1
        batch["position_ids"][r, span] = np.arange(b - a)
    labels, weights = split.labels_and_weights(rows)
    return {**batch, "cls_index": cls_index, "labels": labels, "weights": weights}
