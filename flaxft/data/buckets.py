"""Length buckets: a few fixed sequence lengths so each jitted step compiles once per bucket.

Every batch has the global batch size and one bucket length. Short final batches are filled with
filler rows (index -1) that carry zero weight, so no example is dropped and none counts twice.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

import numpy as np

from flaxft.data.tokenize import TokenizedSplit
from flaxft.errors import FlaxftError

FILLER = -1
BATCH_ORDER_STREAM = 0x6f72646572  # seeds the order of an epoch's batch lengths, with the epoch and without the seed


def round_up(x, multiple: int):
    return -(-np.asarray(x) // multiple) * multiple


def choose_boundaries(lengths: np.ndarray, num_buckets: int, batch_size: int, multiple: int, top: int) -> list[int]:
    """Bucket lengths minimizing the padded tokens of one epoch (filler rows included).

    Candidates are the observed lengths rounded up to `multiple`; the last bucket is `top` so every
    split's longest example fits. Exact dynamic programme over candidates (at most 512/multiple).
    """
    cands, counts = np.unique(np.minimum(round_up(lengths, multiple), top), return_counts=True)
    if cands[-1] != top:
        cands, counts = np.append(cands, top), np.append(counts, 0)
    n = len(cands)
    prefix = np.concatenate([[0], np.cumsum(counts)])

    def cost(i, j):  # one bucket of length cands[j] holding candidates i..j
        rows = -(-(prefix[j + 1] - prefix[i]) // batch_size) * batch_size
        return int(rows) * int(cands[j])

    k = min(num_buckets, n)
    inf = float("inf")
    best = np.full((k + 1, n), inf)
    back = np.zeros((k + 1, n), dtype=int)
    for j in range(n):
        best[1, j] = cost(0, j)
    for b in range(2, k + 1):
        for j in range(n):
            for i in range(j):  # previous bucket ends at candidate i
                c = best[b - 1, i] + cost(i + 1, j)
                if c < best[b, j]:
                    best[b, j], back[b, j] = c, i
    b = int(np.argmin(best[1:, n - 1])) + 1  # fewer buckets when more don't help
    bounds, j = [], n - 1
    while b >= 1:
        bounds.append(int(cands[j]))
        j, b = back[b, j], b - 1
    return sorted(bounds)


def assign(lengths: np.ndarray, boundaries: list[int]) -> np.ndarray:
    """Bucket index of each example: the smallest boundary that fits it."""
    idx = np.searchsorted(np.asarray(boundaries), lengths, side="left")
    if (idx >= len(boundaries)).any():
        longest = int(lengths.max())
        raise FlaxftError(f"an example has {longest} tokens but the largest bucket is {boundaries[-1]}; "
                          f"add a bucket >= {longest} to data.bucket_boundaries")
    return idx


@dataclasses.dataclass(frozen=True)
class BucketBatch:
    """One global batch: its bucket length and the example index of each row (FILLER = padding row)."""
    length: int
    indices: np.ndarray  # [rows]
    replicas: ClassVar[int] = 0  # not a grid's stacked batch (flaxft.data.grid_plan)

    @property
    def num_rows(self) -> int:
        return len(self.indices)

    def rows(self, block: slice) -> "BucketBatch":
        """The rows `block` of this batch (a process feeds only its own)."""
        return dataclasses.replace(self, indices=self.indices[block])

    def collate(self, split: TokenizedSplit) -> dict[str, np.ndarray]:
        return collate(split, self.indices, self.length)


def collate(split: TokenizedSplit, indices: np.ndarray, length: int, pad_id=None) -> dict[str, np.ndarray]:
    """A [rows, length] batch, one example per row; rows with index -1 are filler rows with weight 0."""
    rows = len(indices)
    input_ids = np.full((rows, length), split.pad_id if pad_id is None else pad_id, dtype=np.int32)
    token_type_ids = np.zeros((rows, length), dtype=np.int32)
    attention_mask = np.zeros((rows, length), dtype=np.int32)
    for r in np.flatnonzero(indices >= 0):
        a, b = split.offsets[indices[r]], split.offsets[indices[r] + 1]
        input_ids[r, :b - a] = split.ids[a:b]
        if split.type_ids is not None:
            token_type_ids[r, :b - a] = split.type_ids[a:b]
        attention_mask[r, :b - a] = 1
    labels, weights = split.labels_and_weights(indices)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "weights": weights}
    return batch if split.type_ids is None else {**batch, "token_type_ids": token_type_ids}


def plan_batches(lengths: np.ndarray, boundaries: list[int], batch_size: int, *, shuffle: bool, seed: int = 0,
                 epoch: int = 0, grouping: str = "bucket", labels: Optional[np.ndarray] = None,
                 carry_leftovers: bool = False) -> list[BucketBatch]:
    """Group examples into batches, each padded to one bucket length.

    grouping="bucket", shuffle=True (training): each batch holds one bucket's examples; members of each bucket are
    permuted by (seed, epoch) and the order of the batches' lengths by the epoch alone, so an epoch is reproducible
    and resumable from its position, and every seed has the same sequence of batch shapes (a grid of seeds stacks
    them: flaxft.data.grid_plan).
    shuffle=False (evaluation): input order within each bucket, buckets in increasing length.
    grouping="none" (training only): random batches of the whole split, as the HF Trainer draws them by default;
    grouping="megabatch" (training only): the HF Trainer's group_by_length=True (transformers'
    get_length_grouped_indices): the permuted split cut into mega-batches of min(50, n // (4 * batch_size)) batches,
    each sorted by length (longest first) and cut into batches. Either pads each batch to the bucket of its longest
    example, so its shape, and the order of shapes, depends on the seed.
    labels (class ids; training with grouping bucket or none): each bucket's (none: the split's) permuted examples are
    dealt out class by class (`stratified`), so every batch holds the classes in its bucket's (the split's) shares.
    carry_leftovers (training, grouping bucket): the examples left over when a bucket is cut into full batches join
    the next longer bucket's (padded to its length), so only the longest bucket ends in a part-filled batch: one per
    epoch, as the Trainer has, where each bucket's own can be tiny (MRPC's 80-token bucket: one example, a whole
    optimizer step). The batch count per bucket still depends on the lengths only.
    """
    bucket_of = assign(lengths, boundaries)
    rng = np.random.default_rng([seed, epoch])
    if grouping != "bucket":
        order = rng.permutation(len(lengths))
        if labels is not None:
            order = stratified(order, labels, rng)
        if grouping == "megabatch":
            order = length_grouped(order, lengths, batch_size)
        order = np.concatenate([order, np.full(-len(order) % batch_size, FILLER, dtype=order.dtype)])
        return [BucketBatch(int(boundaries[bucket_of[rows[rows != FILLER]].max()]), rows)
                for rows in order.reshape(-1, batch_size)]
    batches, carried = [], np.empty(0, dtype=np.int64)
    for b, length in enumerate(boundaries):
        members = np.flatnonzero(bucket_of == b)
        if shuffle:
            members = rng.permutation(np.concatenate([carried, members]) if carry_leftovers else members)
            if labels is not None:
                members = stratified(members, labels, rng)
            if carry_leftovers and b < len(boundaries) - 1:
                full = len(members) - len(members) % batch_size
                members, carried = members[:full], members[full:]
        for start in range(0, len(members), batch_size):
            rows = members[start:start + batch_size]
            rows = np.concatenate([rows, np.full(batch_size - len(rows), FILLER, dtype=rows.dtype)])
            batches.append(BucketBatch(int(length), rows))
    if shuffle:  # batch counts per bucket depend on the lengths only: this order is the same for every seed
        batches = [batches[i] for i in np.random.default_rng([BATCH_ORDER_STREAM, epoch]).permutation(len(batches))]
    return batches


def stratified(order: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`order` dealt out class by class: the k-th of a class's n members (in `order`'s order) goes to position
    (k + u) / n of the result, u a random offset in [0, 1) per class. Every run of B consecutive examples then holds
    B x each class's share of `order`, to within one example with two classes (about two with five); random batches
    of 32 at MRPC's 68 % paraphrases spread by +-2.6 examples (one standard deviation)."""
    classes = labels[order]
    keys = np.empty(len(order))
    for c in np.unique(classes):
        members = np.flatnonzero(classes == c)
        keys[members] = (np.arange(len(members)) + rng.random()) / len(members)
    return order[np.argsort(keys, kind="stable")]


def length_grouped(order: np.ndarray, lengths: np.ndarray, batch_size: int) -> np.ndarray:
    """transformers' get_length_grouped_indices on a given permutation: mega-batches of min(50, n // (4 *
    batch_size)) batches, each sorted by length (longest first, ties in permutation order), and the longest example
    of all swapped to the front (the Trainer does it to run out of memory early; kept so the order is the Trainer's)."""
    size = max(1, min(len(order) // (4 * batch_size), 50)) * batch_size
    megabatches = [chunk[np.argsort(-lengths[chunk], kind="stable")]
                   for chunk in np.split(order, range(size, len(order), size))]
    longest = int(np.argmax([lengths[m[0]] for m in megabatches]))
    megabatches[0][0], megabatches[longest][0] = megabatches[longest][0], megabatches[0][0]
    return np.concatenate(megabatches)


def padding_efficiency(lengths: np.ndarray, batches: list) -> float:
    """Real tokens / token slots over a list of batches, bucketed or packed (fillers count as padding)."""
    slots = sum(b.length * len(b.indices) for b in batches)
    real = sum(int(lengths[b.indices[b.indices != FILLER]].sum()) for b in batches)
    return real / max(slots, 1)
