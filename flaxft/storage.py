"""Where run files live: a local folder or a Cloud Storage URL (gs://bucket/run), through etils.epath.

Orbax writes checkpoints to either on its own. Everything else goes through here:
- small files (config.yaml, summary.json, export/, predictions) are written whole; an object store makes
  a whole-object upload atomic, a local file is written beside the target and renamed;
- files that grow (metrics.jsonl, TensorBoard events) are written to a local staging folder and uploaded
  whole by `Mirror.sync()` at log intervals, evaluations and the end (object stores cannot append).
A full disk (ENOSPC, from Python or TensorStore) becomes one FlaxftError naming the folder and the space the
write needed (`disk_full_error`); what was half-written is removed.
gs:// needs gcsfs (`pip install 'flaxft[gcs]'`); tests point it at a local GCS emulator.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import pathlib
import shutil
import tempfile
import time
from typing import IO, Optional, Union

from etils import epath

from flaxft.errors import FlaxftError

REMOTE_SCHEMES = ("gs://", "s3://", "az://")
PathLike = Union[str, os.PathLike]


def is_remote(path: PathLike) -> bool:
    return str(path).startswith(REMOTE_SCHEMES)


def path(p: PathLike) -> epath.Path:
    """An epath.Path for a local path (~ expanded, made absolute) or a gs:// / s3:// URL."""
    if is_remote(p):
        if str(p).startswith("gs://"):
            _need_gcsfs()
        return epath.Path(str(p))
    return epath.Path(os.path.abspath(os.path.expanduser(str(p))))


def _need_gcsfs() -> None:
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        raise FlaxftError("gs:// paths need gcsfs; install it with: pip install 'flaxft[gcs]'") from None


def open_text(p: epath.Path, errors: str = "strict") -> IO[str]:
    """Read a UTF-8 text file (a BOM is dropped) with universal newlines off, as the csv module wants;
    `errors` as in `open` (surrogateescape keeps bytes that are not UTF-8, for the caller to find)."""
    return io.TextIOWrapper(p.open("rb"), encoding="utf-8-sig", errors=errors, newline="")


def write_text(p: epath.Path, text: str) -> None:
    """Write a whole file so that a reader never sees half of it."""
    if is_remote(p):
        p.write_text(text, encoding="utf-8")  # an object appears only once its upload completes
        return
    tmp = p.with_name(p.name + ".tmp")
    with room_for(p.parent, p.name, len(text.encode("utf-8"))):
        try:
            tmp.write_text(text, encoding="utf-8")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, p)


# ---------------------------------------------------------------------------------------------- a full disk


def disk_full(e: Optional[BaseException]) -> bool:
    """Whether `e`, or an exception it came from, is a full disk: Python's OSError(ENOSPC), or TensorStore's
    wording of it inside Orbax's errors."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(e) or "os_error_code='28'" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def free_bytes(p: PathLike) -> Optional[int]:
    """Free space on the local disk holding `p` (or its nearest existing parent); None for a remote path."""
    if is_remote(p):
        return None
    p = pathlib.Path(p)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def tree_bytes(p: PathLike) -> int:
    """Bytes of the files under local folder `p` (0 for a remote or missing one)."""
    if is_remote(p) or not pathlib.Path(p).is_dir():
        return 0
    return sum(f.stat().st_size for f in pathlib.Path(p).rglob("*") if f.is_file())


def size_text(n: Optional[int]) -> str:
    if n is None:
        return "unknown"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def no_space(folder: PathLike, what: str, needed: Optional[int]) -> str:
    """What a write that found the disk full says: where, what, how much it needed, how much is free."""
    return (f"no space left on device in '{folder}' writing {what} (it needs about {size_text(needed)}; "
            f"{size_text(free_bytes(folder))} free)")


def disk_full_error(folder: PathLike, what: str, needed: Optional[int], then: str = "") -> FlaxftError:
    """The one line for a write that found the disk full, with what to do."""
    then = then or "then rerun the same command: it continues from the last checkpoint"
    return FlaxftError(f"{no_space(folder, what, needed)}; free up space there or give output_dir a disk with room, "
                       f"{then}")


@contextlib.contextmanager
def room_for(folder: PathLike, what: str, needed: Optional[int], then: str = ""):
    """Turn a full disk inside the block into `disk_full_error`; other errors pass through."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - ENOSPC comes as OSError, or wrapped by Orbax/Arrow
        if not disk_full(e):
            raise
        raise disk_full_error(folder, what, needed, then) from e


def upload_tree(local: pathlib.Path, remote: epath.Path, last: tuple[str, ...] = (),
                seen: dict | None = None) -> None:
    """Copy every file under `local` to `remote`, the files named in `last` after all others (a
    completion marker written last tells readers the folder is whole). With `seen` (file -> (size,
    mtime) of its last upload, updated here), files unchanged since their last upload are skipped."""
    files = sorted((f for f in local.rglob("*") if f.is_file()), key=lambda f: f.name in last)
    for f in files:
        st = f.stat()
        if seen is not None and seen.get(f) == (st.st_size, st.st_mtime_ns):
            continue
        target = remote / f.relative_to(local).as_posix()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.read_bytes())
        if seen is not None:
            seen[f] = (st.st_size, st.st_mtime_ns)


def download_tree(remote: epath.Path, local: pathlib.Path) -> None:
    local.mkdir(parents=True, exist_ok=True)
    for src in remote.iterdir():  # (epath refuses rglob on gs://: one listing per folder instead)
        if src.is_dir():
            download_tree(src, local / src.name)
        else:
            (local / src.name).write_bytes(src.read_bytes())


def local_copy(p: epath.Path) -> pathlib.Path:
    """A local folder holding remote folder `p`, downloaded afresh into the flaxft cache (the remote folder
    may have been replaced since); a local `p` is returned as it is."""
    if not is_remote(p):
        return pathlib.Path(p)
    cache = pathlib.Path(os.environ.get("FLAXFT_CACHE", pathlib.Path.home() / ".cache" / "flaxft")) / "remote"
    local = cache / hashlib.sha256(str(p).encode()).hexdigest()[:16]
    shutil.rmtree(local, ignore_errors=True)
    download_tree(p, local)
    return local


class Mirror:
    """A local working folder for files that grow, uploaded to a remote folder by sync().

    For a local `target` the working folder is the target itself and sync() does nothing.
    """

    def __init__(self, target: epath.Path, min_interval_s: float = 30.0):
        self.target = target
        self.remote = is_remote(target)
        self.min_interval_s = min_interval_s
        self._last_sync = 0.0
        self._uploaded: dict = {}
        if self.remote:
            self.local = pathlib.Path(tempfile.mkdtemp(prefix="flaxft-staging-"))
        else:
            self.local = pathlib.Path(target)
            self.local.mkdir(parents=True, exist_ok=True)

    def fetch(self, name: str) -> None:
        """Start the local copy of `name` from the remote one (a resumed run appends to it)."""
        if self.remote and (self.target / name).exists():
            (self.local / name).write_bytes((self.target / name).read_bytes())

    def sync(self, force: bool = True) -> None:
        """Upload the working folder (unless `force` is off and the last upload was under min_interval_s ago)."""
        if not self.remote or (not force and time.monotonic() - self._last_sync < self.min_interval_s):
            return
        upload_tree(self.local, self.target, seen=self._uploaded)
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self.remote:
            self.sync()
            shutil.rmtree(self.local, ignore_errors=True)
