"""How label-skewed a plan's training batches are (issue #16): each batch's share of one class against the split's.

A batch of n examples whose share of class c is s scores z = (s - p) / sqrt(p (1 - p) / n), p = the class's
share of the whole split. Random batches give z a spread of about 1 (a little under: they are drawn without
replacement) and about 5 % of them lie beyond |z| > 2; length buckets with different class shares spread wider,
label-stratified batches (data.stratify_labels) far narrower.
"""

from __future__ import annotations

import numpy as np

from flaxft.data.buckets import FILLER


def batch_label_z(batches, labels: np.ndarray, cls: int = 1, min_examples: int = 16) -> np.ndarray:
    """The z-score of class `cls`'s share in each batch (bucketed or packed) of at least `min_examples` examples
    (a bucket's part-filled last batch says little)."""
    p = float(np.mean(labels == cls))
    z = []
    for batch in batches:
        ids = np.asarray(batch.indices).reshape(-1)
        ids = ids[ids != FILLER]
        if len(ids) >= min_examples:
            z.append((np.mean(labels[ids] == cls) - p) / np.sqrt(p * (1 - p) / len(ids)))
    return np.asarray(z)
