"""Feed planned batches to the devices from a background thread, a few steps ahead of the train loop."""

from __future__ import annotations

import queue
import threading
from typing import Iterator, Sequence

import jax

from flaxft.data import packing
from flaxft.data.buckets import Batch
from flaxft.data.tokenize import TokenizedSplit
from flaxft.parallel import local_rows, put_batch


def device_batches(split: TokenizedSplit, plan: Sequence[Batch], sharding, prefetch: int = 2,
                   pad_id: int = 0) -> Iterator[dict[str, jax.Array]]:
    """Yield device-resident batches for `plan` (bucketed or packed), collated and transferred
    `prefetch` batches ahead."""
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for b in plan:
                if stop.is_set():
                    return
                rows = b.indices[local_rows(sharding, len(b.indices))]  # only this host's share
                collate = packing.collate if rows.ndim == 2 else TokenizedSplit.collate
                q.put(put_batch(collate(split, rows, b.length, pad_id), sharding))
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
