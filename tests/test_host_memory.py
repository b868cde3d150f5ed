"""The host allocator: which one a process runs on, and the entry points' re-exec onto mimalloc (or tcmalloc)."""

import os
import resource
import subprocess
import sys

import pytest

from flaxft.host_memory import (
    REEXECUTED,
    SETTING,
    allocator_env,
    chosen_library,
    find_library,
    host_allocator,
)

LINUX = sys.platform.startswith("linux")
PROBE = "from flaxft.host_memory import preload_host_malloc, host_allocator; preload_host_malloc(); print(host_allocator())"


def test_host_allocator_reads_the_loaded_libraries(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert host_allocator(str(maps)) == "system"
    maps.write_text(maps.read_text() + "7f02-7f03 r-xp 0 08:01 2 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4\n")
    assert host_allocator(str(maps)) == "tcmalloc"
    maps.write_text("7f02-7f03 r-xp 0 08:01 2 /venv/lib/python3.11/site-packages/cmeel.prefix/lib/libmimalloc.so.3\n")
    assert host_allocator(str(maps)) == "mimalloc"
    assert host_allocator(str(tmp_path / "missing")) == "system"


@pytest.mark.skipif(not LINUX, reason="cmeel-mimalloc is a Linux-only dependency")
def test_the_pip_install_brings_mimalloc():
    """flaxft's own dependencies put libmimalloc.so on the machine: no apt step for the fast path."""
    lib = find_library("mimalloc")
    assert lib is not None and "cmeel.prefix" in lib and os.path.isfile(lib)
    assert chosen_library({}) == lib  # auto prefers it


def test_the_setting_picks_the_library(tmp_path, capsys):
    lib = tmp_path / "libmymalloc.so"
    lib.write_bytes(b"")
    for off in ("0", "off", "system", "SYSTEM"):
        assert chosen_library({SETTING: off}) is None
    assert chosen_library({SETTING: str(lib)}) == (str(lib) if LINUX else None)
    assert chosen_library({SETTING: "mimalloc"}) == (find_library("mimalloc") if LINUX else None)
    assert capsys.readouterr().err == ""
    assert chosen_library({SETTING: str(tmp_path / "nope.so")}) is None
    warning = capsys.readouterr().err  # a bad setting is said, not silently ignored
    if LINUX:
        assert warning.startswith("flaxft: warning:") and "nope.so is neither" in warning and warning.count("\n") == 1
    assert chosen_library({SETTING: "auto"}) == chosen_library({})
    assert chosen_library(allocator_env({}, str(lib))) is None  # the re-executed process never re-executes


def test_allocator_env_prepends_and_sets_the_library_defaults():
    env = allocator_env({"LD_PRELOAD": "/x/libother.so", "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": "5", "A": "b"},
                        "/y/libtcmalloc.so")
    assert env["LD_PRELOAD"] == "/y/libtcmalloc.so /x/libother.so" and env[REEXECUTED] == "1"
    assert env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == "5" and env["A"] == "b"  # the user's setting stays
    mi = allocator_env({}, "/z/cmeel.prefix/lib/libmimalloc.so.3")
    assert mi["LD_PRELOAD"] == "/z/cmeel.prefix/lib/libmimalloc.so.3"
    assert mi["MIMALLOC_PURGE_DELAY"] == "-1" and "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD" not in mi
    assert allocator_env({"MIMALLOC_PURGE_DELAY": "10"}, "/z/libmimalloc.so")["MIMALLOC_PURGE_DELAY"] == "10"


def _probe(code=PROBE, **env):
    """The stdout of a fresh `python -c` command started on glibc's malloc."""
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", SETTING, REEXECUTED)}
    proc = subprocess.run([sys.executable, "-c", code], check=False, env={**base, **env}, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_a_command_reexecutes_onto_mimalloc():
    """A real process: on glibc it re-executes itself once with mimalloc preloaded (Linux), unless told not to."""
    assert _probe() == ("mimalloc" if LINUX else "system")
    assert _probe(**{SETTING: "system"}) == "system"
    if LINUX and find_library("tcmalloc"):
        assert _probe(**{SETTING: "tcmalloc"}) == "tcmalloc"


@pytest.mark.skipif(not LINUX, reason="LD_PRELOAD and /proc are Linux")
def test_mimalloc_keeps_a_freed_step_buffer_without_page_faults():
    """What the allocator is for: a 256 MB buffer malloc'd, touched and freed again and again (as XLA:CPU does with a
    step's temporaries) page-faults every time on glibc, and not after the first time on flaxft's mimalloc."""
    code = ("import ctypes, resource, flaxft.host_memory as h; h.preload_host_malloc(); libc = ctypes.CDLL(None); "
            "libc.malloc.restype = ctypes.c_void_p; n = 256 << 20\n"
            "def step():\n    p = libc.malloc(n); ctypes.memset(p, 1, n); libc.free(ctypes.c_void_p(p))\n"
            "step(); before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(5): step()\n"
            "print(h.host_allocator(), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)")
    pages = (256 << 20) // resource.getpagesize()
    name, faults = _probe(code).split()
    assert name == "mimalloc" and int(faults) < pages // 100, (name, faults)
    name, faults = _probe(code, **{SETTING: "system"}).split()
    assert name == "system" and int(faults) > pages // 2, (name, faults)


@pytest.mark.skipif(not LINUX, reason="LD_PRELOAD is Linux")
def test_the_module_prints_the_preload_line_for_api_users():
    env = {k: v for k, v in os.environ.items() if k not in (SETTING, REEXECUTED)}
    line = subprocess.run([sys.executable, "-m", "flaxft.host_memory"], capture_output=True, text=True, env=env).stdout
    assert line.startswith("export LD_PRELOAD=") and "libmimalloc" in line and "MIMALLOC_PURGE_DELAY" in line
