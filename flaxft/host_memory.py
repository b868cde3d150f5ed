"""The host memory allocator: a caching malloc under XLA:CPU's per-call buffers.

XLA:CPU mallocs each jitted call's temporary buffer (about 590 MB for a MiniLM train step at batch 32 x 64)
and frees it when the call ends. glibc serves a block that big with a fresh mmap every time, so every step
page-faults its whole working set back in: 146k faults and 0.3 s of kernel time per step here, about 15 %
of the step. mimalloc and tcmalloc keep freed pages for the next call (about 0 faults per step).

mimalloc comes with flaxft's pip install on Linux (the `cmeel-mimalloc` wheel ships `libmimalloc.so`), so
nothing has to be installed by hand; tcmalloc is used when the machine has it (Debian/Ubuntu:
`apt-get install libtcmalloc-minimal4`) and mimalloc is missing. The command-line entry points
(`python -m flaxft.train`, `flaxft-predict`, the bench scripts) call `preload_host_malloc()` first: when the
process runs on glibc's malloc, it re-executes itself once with the chosen library in LD_PRELOAD.
FLAXFT_MALLOC picks: `auto` (default: mimalloc, else tcmalloc), `mimalloc`, `tcmalloc`, `system` (or 0: stay on
glibc), or a path to a malloc shared library. The Python API cannot swap the allocator of a running process:
start Python with LD_PRELOAD set instead (`python -m flaxft.host_memory` prints the line to use).
`host_allocator()` tells which allocator the process runs on (recorded in summary.json).
"""

from __future__ import annotations

import ctypes.util
import os
import pathlib
import sys
import sysconfig
from collections.abc import Mapping
from typing import Optional

SETTING = "FLAXFT_MALLOC"
REEXECUTED = "FLAXFT_MALLOC_REEXECUTED"  # set in the re-executed process: never loop
ALLOCATORS = ("mimalloc", "tcmalloc")  # auto's order of preference
_OFF = ("0", "off", "false", "no", "system", "glibc")
_AUTO = ("", "auto", "1", "on", "true", "yes")
_NAMES = {"tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so"),
          "mimalloc": ("libmimalloc.so.3", "libmimalloc.so.2", "libmimalloc.so")}
_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib",
         "/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu")
# Settings each library runs with unless the user set them. mimalloc hands freed memory back to the OS after a
# delay (10 ms by default), so XLA's step buffers are faulted in again: 6.5k faults a step at the default, 2k at
# 5 s, 74 when it never purges (MiniLM, B=32, L=64), which is what tcmalloc does too: the peak is unchanged.
# gperftools prints a line for every allocation over 1 GiB; XLA's step buffers are that big on large models.
_ENV = {"mimalloc": {"MIMALLOC_PURGE_DELAY": "-1"},
        "tcmalloc": {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}}
INSTALL_HINT = "pip install cmeel-mimalloc (flaxft's own install brings it on Linux)"


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


def _wheel_dirs() -> list[str]:
    """Library folders of pip wheels built with cmeel (cmeel-mimalloc installs into site-packages/cmeel.prefix)."""
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    return [os.path.join(root, "cmeel.prefix", "lib") for root in sorted(roots)]


def find_library(name: str, dirs: tuple[str, ...] = _DIRS) -> Optional[str]:
    """Path of the `name` ('mimalloc' or 'tcmalloc') shared library: pip wheels, the environment's lib (conda),
    the system's folders, then the dynamic loader's search; None when there is none."""
    for folder in (*_wheel_dirs(), os.path.join(sys.prefix, "lib"), *dirs):
        for lib in _NAMES[name]:
            path = os.path.join(folder, lib)
            if os.path.isfile(path):
                return path
    for lib in {"tcmalloc": ("tcmalloc_minimal", "tcmalloc"), "mimalloc": ("mimalloc",)}[name]:
        found = ctypes.util.find_library(lib)  # a bare soname: the dynamic loader resolves it as LD_PRELOAD
        if found:
            return found
    return None


def allocator_env(environ: Mapping[str, str], library: str) -> dict[str, str]:
    """`environ` for a process that runs on `library`: prepended to LD_PRELOAD, with the library's settings
    (unless set already), marked as re-executed."""
    env = dict(environ)
    env["LD_PRELOAD"] = " ".join(p for p in (library, environ.get("LD_PRELOAD", "")) if p)
    env[REEXECUTED] = "1"
    for name, settings in _ENV.items():
        if name in os.path.basename(library):
            for key, value in settings.items():
                env.setdefault(key, value)
    return env


def chosen_library(environ: Mapping[str, str]) -> Optional[str]:
    """The library to re-execute with, or None when FLAXFT_MALLOC says system, we already did, or none is found."""
    setting = environ.get(SETTING, "auto").strip()
    if setting.lower() in _OFF or environ.get(REEXECUTED) or not sys.platform.startswith("linux"):
        return None
    if setting.lower() in _AUTO:
        return next(filter(None, (find_library(name) for name in ALLOCATORS)), None)
    if setting.lower() in ALLOCATORS:
        found = find_library(setting.lower())
        if found is None:
            print(f"flaxft: warning: {SETTING}={setting} but no lib{setting.lower()} is installed, so this runs on the "
                  f"system malloc; {INSTALL_HINT if setting.lower() == 'mimalloc' else 'apt-get install libtcmalloc-minimal4'}, "
                  "or set it to auto", file=sys.stderr)
        return found
    if os.path.isfile(setting):
        return setting
    print(f"flaxft: warning: {SETTING}={setting} is neither auto, mimalloc, tcmalloc, system nor a file, so this runs "
          "on the system malloc; point it at a malloc library such as libmimalloc.so, or set it to auto or system",
          file=sys.stderr)
    return None


def reexec_on(library: str) -> None:
    """Replace this process by the same command line with `library` preloaded (OSError if exec fails)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, allocator_env(os.environ, library))


def preload_host_malloc() -> None:
    """Re-execute this command on mimalloc (or tcmalloc) when it runs on glibc's malloc.

    Call it first thing in a command-line entry point, before JAX allocates anything. Returns normally when
    there is nothing to do (or the exec fails); on success it does not return.
    """
    library = chosen_library(os.environ)
    if library is None or host_allocator() != "system":
        return
    try:
        reexec_on(library)
    except OSError:
        return  # run on as we are: slower on CPU, otherwise the same


if __name__ == "__main__":  # the environment line for Python API users: eval "$(python -m flaxft.host_memory)"
    lib = chosen_library({k: v for k, v in os.environ.items() if k != REEXECUTED})
    if lib is None:
        sys.exit(f"no malloc library found: {INSTALL_HINT}")
    env = allocator_env({}, lib)
    print(" ".join(f"export {k}={v!r};" for k, v in env.items() if k != REEXECUTED))
