"""Feed planned batches to the devices from a background thread, a few steps ahead of the train loop."""

from __future__ import annotations

import queue
import threading
from typing import Iterator, Sequence, Union

import jax

from flaxft.data.buckets import BucketBatch
from flaxft.data.packing import PackedBatch
from flaxft.data.tokenize import TokenizedSplit
from flaxft.parallel import local_rows, put_batch


def device_batches(split: TokenizedSplit, plan: Sequence[Union[BucketBatch, PackedBatch]], sharding,
                   prefetch: int = 2) -> Iterator[dict[str, jax.Array]]:
    """Yield device-resident batches for `plan` (bucketed, packed or a grid's), collated and transferred
    `prefetch` batches ahead."""
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for b in plan:
                if stop.is_set():
                    return
                own = b.rows(local_rows(sharding, b.num_rows, b.replicas))  # only this host's share
                q.put(put_batch(own.collate(split), sharding))
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
