"""A grid's training batches: every replica reads its own seed's plan, and a step stacks the replicas' batches
on a leading replica axis.

Stacking needs one shape per step across seeds. Packed plans have it for free (the packing layout depends on the
lengths only); bucket plans have it because the order of bucket lengths in an epoch is drawn without the seed
(flaxft.data.buckets.plan_batches): seeds change which examples share a batch, not which bucket comes when. So
replica (seed s, rate r) sees exactly the batches of the single run with train.seed=s.
"""

from __future__ import annotations

import dataclasses
from typing import Union

import numpy as np

from flaxft.data.buckets import BucketBatch
from flaxft.data.packing import PackedBatch
from flaxft.data.prepare import BucketPlan, PackedPlan
from flaxft.data.tokenize import TokenizedSplit
from flaxft.errors import FlaxftError


@dataclasses.dataclass(frozen=True)
class GridBatch:
    """One step of a grid: its replicas' batches (same rows, length and slots), replica i being `batches[i]`."""
    batches: tuple[Union[BucketBatch, PackedBatch], ...]

    @property
    def replicas(self) -> int:
        return len(self.batches)

    @property
    def length(self) -> int:
        return self.batches[0].length

    @property
    def num_rows(self) -> int:
        return self.batches[0].num_rows

    def rows(self, block: slice) -> "GridBatch":
        return GridBatch(tuple(b.rows(block) for b in self.batches))

    def collate(self, split: TokenizedSplit) -> dict[str, np.ndarray]:
        """[replicas, rows, ...] arrays; a seed shared by several replicas is collated once."""
        done: dict[int, dict] = {}
        for b in self.batches:
            if id(b) not in done:
                done[id(b)] = b.collate(split)
        parts = [done[id(b)] for b in self.batches]
        return {k: np.stack([p[k] for p in parts]) for k in parts[0]}


@dataclasses.dataclass(frozen=True)
class GridPlan:
    """The per-seed plans of a grid (BucketPlan or PackedPlan each) and which seed each replica reads."""
    plans: tuple[Union[BucketPlan, PackedPlan], ...]
    seed_index: tuple[int, ...]

    @property
    def lengths(self) -> np.ndarray:
        return self.plans[0].lengths

    @property
    def slots(self):
        return self.plans[0].slots

    @property
    def info(self) -> dict:
        return self.plans[0].info

    def epoch(self, epoch: int) -> list[GridBatch]:
        per_seed = [plan.epoch(epoch) for plan in self.plans]
        steps = []
        for batches in zip(*per_seed, strict=True):
            if len({(b.indices.shape, b.length) for b in batches}) != 1:
                raise FlaxftError(f"the seeds' plans disagree on a batch shape in epoch {epoch}: "
                                  f"{[(b.indices.shape, b.length) for b in batches]}; this is a bug in flaxft")
            steps.append(GridBatch(tuple(batches[k] for k in self.seed_index)))
        return steps
