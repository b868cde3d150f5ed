"""One training run per output_dir: a lock file, output_dir/run.lock, that names the run holding it.

A second run on the same output_dir refuses at once with the holder's host, pid and start time, before it
reads a checkpoint or writes a file. A lock whose holder is no longer running is taken over with a warning:

- on the holder's host (same host name and boot id): its pid is gone (or a zombie), or the pid now belongs
  to a process that started at another time (a reused pid; Linux: /proc/<pid>/stat);
- from another host (an output_dir shared over NFS or on gs://): its heartbeat, the time the holder rewrites
  into the lock every HEARTBEAT_SECONDS, is more than STALE_AFTER_SECONDS old by this host's clock (hosts'
  clocks are assumed to agree within minutes; a stopped holder that wakes up later finds its lock taken
  and says so in its log).

Creating the lock is atomic on a local or NFS folder (a hard link of a complete file, which fails if the
lock exists); taking over a stale lock and creating one on an object store (no exclusive create) write the
lock whole and read it back after a short pause, so of two runs racing for it the one whose lock is not
there refuses. A multi-process (multi-host) run is one run: process 0 takes the lock for all of them and
tells them whether it could.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import socket
import sys
import threading
import time
from typing import Iterator, Optional

from flaxft import storage
from flaxft.errors import FlaxftError

log = logging.getLogger("flaxft")

LOCK = "run.lock"
HEARTBEAT_SECONDS = 60.0
STALE_AFTER_SECONDS = 600.0
SETTLE_SECONDS = 0.5  # after writing a lock without an exclusive create: then read it back


def _proc_stat(pid: int) -> Optional[list[str]]:
    """The fields of /proc/<pid>/stat after the command name (state first); None if there is no such process
    (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_start(pid: int) -> Optional[int]:
    """When process `pid` started, in clock ticks after boot (Linux); None where unknown."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def process_running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (a killed child its parent has not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    fields = _proc_stat(pid)
    return not (fields and fields[0] in ("Z", "X"))


def boot_id() -> Optional[str]:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lock: enough to find the process on its host and to tell it from a later one with its pid."""
    host: str
    pid: int
    pid_start: Optional[int]  # clock ticks after boot (Linux), tells a reused pid apart
    boot_id: Optional[str]
    started: str              # local time with offset, for people
    heartbeat: float          # time.time() of the holder's last heartbeat
    command: str

    @classmethod
    def this_process(cls) -> "Holder":
        pid = os.getpid()
        return cls(socket.gethostname(), pid, process_start(pid), boot_id(),
                   datetime.datetime.now().astimezone().isoformat(timespec="seconds"), time.time(),
                   " ".join([os.path.basename(sys.executable), *sys.argv])[:500])

    @classmethod
    def from_json(cls, text: str) -> Optional["Holder"]:
        try:
            fields = json.loads(text)
            return cls(**{f.name: fields[f.name] for f in dataclasses.fields(cls)})
        except (ValueError, TypeError, KeyError):
            return None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, started {self.started}"

    def is_process(self, other: "Holder") -> bool:
        return (self.host, self.pid, self.pid_start, self.boot_id) == (other.host, other.pid, other.pid_start,
                                                                      other.boot_id)

    def gone(self, now: Optional[float] = None) -> Optional[str]:
        """Why this holder is no longer running, as far as this process can tell; None if it may be."""
        here = self.host == socket.gethostname()
        if here and None not in (self.boot_id, boot_id()) and self.boot_id != boot_id():
            return f"{self.host} has restarted since"
        if here:
            if not process_running(self.pid):
                return f"pid {self.pid} is not running"
            start = process_start(self.pid)
            if None not in (start, self.pid_start) and start != self.pid_start:
                return f"pid {self.pid} is now another process"
            return None
        age = (time.time() if now is None else now) - self.heartbeat
        if age > STALE_AFTER_SECONDS:
            return f"its last heartbeat was {age / 60:.0f} minutes ago"
        return None


class RunLock:
    """output_dir/run.lock for this process: acquire() (or FlaxftError naming the holder), a heartbeat thread,
    release()."""

    def __init__(self, output_dir):
        self.output_dir = storage.path(output_dir)
        self.path = self.output_dir / LOCK
        self.remote = storage.is_remote(self.path)
        self.holder = Holder.this_process()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._made_dir = False  # acquire() created output_dir: release() removes it again if nothing was written

    def read(self) -> Optional[Holder]:
        """The lock's holder; None if there is no lock. A lock being written is read again; one that stays
        unreadable (a holder killed while writing it on a filesystem without atomic renames) counts as stale."""
        for _ in range(10):
            try:
                text = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                return None
            holder = Holder.from_json(text)
            if holder is not None:
                return holder
            time.sleep(0.1)
        return Holder("?", -1, None, None, "?", 0.0, f"an unreadable {LOCK}")

    def acquire(self) -> None:
        self._made_dir = not self.output_dir.exists()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                return self._start_heartbeat()
            current = self.read()
            if current is None:  # released in between: try again
                continue
            if current.is_process(self.holder):  # ours (a Trainer in this process that did not release it)
                return self._start_heartbeat()
            why = current.gone()
            if why is None:
                raise self._refusal(current)
            log.warning("%s was left by a run that is no longer running (%s; %s); taking it over", self.path,
                        current.describe(), why)
            self._write()
            time.sleep(SETTLE_SECONDS)
            winner = self.read()
            if winner is not None and not winner.is_process(self.holder):  # another run took it over too
                raise self._refusal(winner)
            if winner is not None:
                return self._start_heartbeat()
        raise FlaxftError(f"could not take the run lock {self.path}: it keeps changing; is another run starting "
                          "in this output_dir? Wait for it or choose another output_dir")

    def _refusal(self, holder: Holder) -> FlaxftError:
        return FlaxftError(f"another run is using output_dir {self.output_dir} ({holder.describe()}: "
                           f"{holder.command}); wait for it to finish, stop it, or choose another output_dir "
                           f"(if it is not running, delete {self.path})")

    def _create(self) -> bool:
        """Create the lock, complete, unless it exists. Locally a hard link of a finished file (atomic, also
        on NFS); on an object store write then read back."""
        if self.remote:
            if self.path.exists():
                return False
            self._write()
            time.sleep(SETTLE_SECONDS)
            current = self.read()
            return current is not None and current.is_process(self.holder)
        tmp = self._tmp()
        tmp.write_text(self.holder.to_json(), encoding="utf-8")
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: an exclusive create (a reader may see it empty)
            try:
                with open(self.path, "x", encoding="utf-8") as f:
                    f.write(self.holder.to_json())
                return True
            except FileExistsError:
                return False
        finally:
            tmp.unlink(missing_ok=True)

    def _tmp(self):
        return self.output_dir / f"{LOCK}.{self.holder.host}.{self.holder.pid}.tmp"

    def _write(self) -> None:
        """Write the lock whole, replacing what is there."""
        self.holder = dataclasses.replace(self.holder, heartbeat=time.time())
        if self.remote:
            self.path.write_text(self.holder.to_json(), encoding="utf-8")
            return
        tmp = self._tmp()
        tmp.write_text(self.holder.to_json(), encoding="utf-8")
        os.replace(tmp, self.path)

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="flaxft-run-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                current = self.read()
                if current is None or not current.is_process(self.holder):
                    log.error("%s is no longer this run's (%s); another run may be writing to this output_dir",
                              self.path, "deleted" if current is None else current.describe())
                    return
                self._write()
            except OSError as e:  # a storage hiccup: the next beat tries again
                log.warning("could not renew %s: %s", self.path, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            current = self.read()
            if current is not None and current.is_process(self.holder):
                self.path.unlink()
                if self._made_dir and not any(self.output_dir.iterdir()):  # a run refused before writing anything
                    self.output_dir.rmdir()
        except OSError as e:
            log.warning("could not remove %s: %s; delete it before the next run", self.path, e)


_held: dict[str, list] = {}  # output_dir -> [RunLock or None (another process of this run holds it), depth]


@contextlib.contextmanager
def hold(output_dir) -> Iterator[None]:
    """Hold output_dir's run lock for the block (re-entrant: the command line takes it before building the
    Trainer, Trainer.train takes it again). In a multi-process run, process 0 takes it for every process."""
    key = str(storage.path(output_dir))
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    lock = _acquire_for_run(output_dir)
    _held[key] = [lock, 1]
    try:
        yield
    finally:
        del _held[key]
        if lock is not None:
            lock.release()


def _acquire_for_run(output_dir) -> Optional[RunLock]:
    import jax

    if jax.process_count() == 1:
        lock = RunLock(output_dir)
        lock.acquire()
        return lock
    from jax.experimental import multihost_utils
    import numpy as np

    lock, refusal = None, None
    if jax.process_index() == 0:
        try:
            lock = RunLock(output_dir)
            lock.acquire()
        except Exception as e:  # noqa: BLE001 - whatever stops process 0 must stop the others, not leave them waiting
            lock, refusal = None, e
    refused = int(multihost_utils.broadcast_one_to_all(np.int32(refusal is not None)))
    if refusal is not None:
        raise refusal
    if refused:
        raise FlaxftError(f"process 0 found another run using output_dir {output_dir} (its error names it); wait "
                          "for that run to finish, stop it, or choose another output_dir")
    return lock
