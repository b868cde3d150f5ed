"""Instruments of the train loop: what it compiled, what it trained on, and whether to stop."""

from __future__ import annotations

import collections
import contextlib
import os
import resource
import signal
import threading
import time
from typing import Optional

import jax
import numpy as np

from flaxft.data import buckets

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # a compile, or a load from the cache
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def seconds_since_process_start() -> Optional[float]:
    """Wall seconds since this process started (Linux; the host malloc re-execution keeps the start), else None."""
    from flaxft.run_lock import process_start  # the one reader of /proc/<pid>/stat

    ticks = process_start(os.getpid())
    if ticks is None or not hasattr(time, "CLOCK_BOOTTIME"):
        return None
    return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")


def peak_host_memory_gb() -> float:
    """This process's peak resident memory so far (memory-mapped file pages it touched included), in GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


class CompileCounter:
    """Counts XLA backend compilations (and how many of them the persistent cache served) while
    active: proof that the steps compile once per bucket and nothing else compiles in the loop."""

    def __init__(self):
        self.count = 0
        self.cache_hits = 0

    def _on_duration(self, event: str, duration: float, **_):
        self.count += event == BACKEND_COMPILE_EVENT

    def _on_event(self, event: str, **_):
        self.cache_hits += event == CACHE_HIT_EVENT

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        jax.monitoring.register_event_listener(self._on_event)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._on_duration)
        jax.monitoring.unregister_event_listener(self._on_event)


class Tally:
    """Host-side counts of what was trained (from the batch plan: no device sync) and the loop's clock."""

    def __init__(self, lengths: np.ndarray):
        self.lengths = lengths
        self.examples = self.tokens = self.slots = 0
        self.paused_seconds = 0.0
        self.start = time.perf_counter()

    def add(self, b) -> None:
        """Count a planned batch: bucketed, packed, or a grid's (every replica's examples count)."""
        for one in getattr(b, "batches", (b,)):
            real = one.indices[one.indices != buckets.FILLER]
            self.examples += len(real)
            self.tokens += int(self.lengths[real].sum())
            self.slots += one.length * one.num_rows

    def train_seconds(self) -> float:
        return time.perf_counter() - self.start - self.paused_seconds

    @contextlib.contextmanager
    def pause(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.paused_seconds += time.perf_counter() - start


class Preempted(Exception):
    """A SIGTERM honoured inside a phase that stops at its own safe point (the export): nothing half-written is
    left, and a rerun redoes the phase."""


class PreemptionGuard:
    """SIGTERM (sent by Cloud TPU before preempting a spot VM) -> a flag the loop reads at step boundaries.

    Installed on the main thread of a single process only: on a multi-host slice JAX's preemption
    service catches the signal and every host learns at the same step (Checkpoints.reached_preemption).
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True  # only a flag: the loop acts (and logs) at the next step boundary

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


# A test hook: FLAXFT_TEST_SIGTERM_AT=<point>[:<n>] makes the process send itself SIGTERM the n-th time (default: the
# first) it passes `point`, so a test can preempt a run during exactly that phase instead of sleeping and hoping.
TEST_SIGTERM_AT = "FLAXFT_TEST_SIGTERM_AT"
_passes: collections.Counter = collections.Counter()


def sigterm_hook(point: str) -> None:
    """Mark `point` ("evaluation", "checkpoint" (a write started), "export"); nothing unless FLAXFT_TEST_SIGTERM_AT
    names it."""
    wanted = os.environ.get(TEST_SIGTERM_AT)
    if not wanted:
        return
    name, _, n = wanted.partition(":")
    if name == point:
        _passes[point] += 1
        if _passes[point] == int(n or 1):
            os.kill(os.getpid(), signal.SIGTERM)
