"""Feed planned batches to the devices from a background thread, a few steps ahead of the train loop."""

from __future__ import annotations

import queue
import threading
from typing import Iterator, Sequence

import jax
import numpy as np

from flaxft.data.buckets import Batch
from flaxft.data.tokenize import TokenizedSplit
from flaxft.parallel import put_batch


def local_rows(indices: np.ndarray) -> np.ndarray:
    """This process's contiguous share of a global batch (all of it on a single host)."""
    n, i = jax.process_count(), jax.process_index()
    per = len(indices) // n
    return indices[i * per:(i + 1) * per]


def device_batches(split: TokenizedSplit, plan: Sequence[Batch], sharding, prefetch: int = 2,
                   pad_id: int = 0) -> Iterator[dict[str, jax.Array]]:
    """Yield device-resident batches for `plan`, collated and transferred `prefetch` batches ahead."""
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for b in plan:
                if stop.is_set():
                    return
                q.put(put_batch(split.collate(local_rows(b.indices), b.length, pad_id), sharding))
            q.put(done)
        except BaseException as e:  # surface producer errors in the consumer
            q.put(e)

    thread = threading.Thread(target=produce, daemon=True, name="flaxft-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.01)
