"""The host memory allocator: tcmalloc under XLA:CPU's per-call buffers.

XLA:CPU mallocs each jitted call's temporary buffer (about 590 MB for a MiniLM train step at batch 32 x 64)
and frees it when the call ends. glibc serves a block that big with a fresh mmap every time, so every step
page-faults its whole working set back in: 146k faults and 0.3 s of kernel time per step here, about 15 %
of the step. tcmalloc keeps freed pages for the next call (0 faults per step).

The command-line entry points (`python -m flaxft.train`, `flaxft-predict`, the bench scripts) call
`preload_tcmalloc()` first: when the process runs on glibc's malloc and the machine has tcmalloc
(Debian/Ubuntu: `apt-get install libtcmalloc-minimal4`), it re-executes itself once with tcmalloc in
LD_PRELOAD. FLAXFT_TCMALLOC=0 turns that off; FLAXFT_TCMALLOC=/path/to/libtcmalloc.so picks the library.
The Python API cannot swap the allocator of a running process: start Python with LD_PRELOAD set instead.
`host_allocator()` tells which allocator the process runs on (recorded in summary.json).
"""

from __future__ import annotations

import ctypes.util
import os
import pathlib
import sys
from collections.abc import Mapping

SETTING = "FLAXFT_TCMALLOC"
REEXECUTED = "FLAXFT_TCMALLOC_REEXECUTED"  # set in the re-executed process: never loop
_OFF = ("0", "off", "false", "no")
_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so")
_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib",
         "/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu")
INSTALL_HINT = "apt-get install libtcmalloc-minimal4 (Debian/Ubuntu) or your system's gperftools package"


def host_allocator(maps: str = "/proc/self/maps") -> str:
    """'tcmalloc', 'jemalloc' or 'mimalloc' when that library is loaded in this process, else 'system'."""
    try:
        text = pathlib.Path(maps).read_text()
    except OSError:  # not Linux
        return "system"
    for name in ("tcmalloc", "jemalloc", "mimalloc"):
        if f"lib{name}" in text:
            return name
    return "system"


def find_tcmalloc(dirs: tuple[str, ...] = _DIRS) -> str | None:
    """Path of the machine's tcmalloc shared library (the minimal build first), or None."""
    prefix_lib = os.path.join(sys.prefix, "lib")  # conda environments ship gperftools there
    for folder in (prefix_lib, *dirs):
        for name in _NAMES:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    for lib in ("tcmalloc_minimal", "tcmalloc"):
        found = ctypes.util.find_library(lib)  # a bare soname: the dynamic loader resolves it as LD_PRELOAD
        if found:
            return found
    return None


def tcmalloc_env(environ: Mapping[str, str], library: str) -> dict[str, str]:
    """`environ` for a process that runs on `library`: prepended to LD_PRELOAD, marked as re-executed."""
    env = dict(environ)
    env["LD_PRELOAD"] = " ".join(p for p in (library, environ.get("LD_PRELOAD", "")) if p)
    env[REEXECUTED] = "1"
    # gperftools prints a line for every allocation over 1 GiB; XLA's step buffers are that big on large models
    env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
    return env


def tcmalloc_library(environ: Mapping[str, str]) -> str | None:
    """The library to re-execute with, or None when FLAXFT_TCMALLOC says no, we already did, or none is found."""
    setting = environ.get(SETTING, "auto").strip()
    if setting.lower() in _OFF or environ.get(REEXECUTED) or not sys.platform.startswith("linux"):
        return None
    if setting.lower() not in ("", "auto", "1", "on", "true", "yes"):
        if os.path.isfile(setting):
            return setting
        print(f"flaxft: warning: {SETTING}={setting} is not a file, so this runs on the system malloc; point it "
              "at libtcmalloc.so, or set it to auto or 0", file=sys.stderr)
        return None
    return find_tcmalloc()


def reexec_on_tcmalloc(library: str) -> None:
    """Replace this process by the same command line with `library` preloaded (OSError if exec fails)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, tcmalloc_env(os.environ, library))


def preload_tcmalloc() -> None:
    """Re-execute this command with tcmalloc preloaded, when it runs on glibc's malloc and tcmalloc is here.

    Call it first thing in a command-line entry point, before JAX allocates anything. Returns normally when
    there is nothing to do (or the exec fails); on success it does not return.
    """
    library = tcmalloc_library(os.environ)
    if library is None or host_allocator() != "system":
        return
    try:
        reexec_on_tcmalloc(library)
    except OSError:
        return  # run on as we are: slower on CPU, otherwise the same
