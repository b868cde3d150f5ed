"""The host allocator: which one a process runs on, and the entry points' re-exec onto tcmalloc."""

import os
import subprocess
import sys

from flaxft.host_memory import (
    SETTING,
    find_tcmalloc,
    host_allocator,
    tcmalloc_env,
    tcmalloc_library,
)

PROBE = "from flaxft.host_memory import preload_tcmalloc, host_allocator; preload_tcmalloc(); print(host_allocator())"


def test_host_allocator_reads_the_loaded_libraries(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert host_allocator(str(maps)) == "system"
    maps.write_text(maps.read_text() + "7f02-7f03 r-xp 0 08:01 2 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4\n")
    assert host_allocator(str(maps)) == "tcmalloc"
    assert host_allocator(str(tmp_path / "missing")) == "system"


def test_tcmalloc_library_follows_the_setting(tmp_path, capsys):
    lib = tmp_path / "libtcmalloc.so"
    lib.write_bytes(b"")
    assert tcmalloc_library({SETTING: "0"}) is None
    assert tcmalloc_library({SETTING: "off"}) is None
    assert tcmalloc_library({SETTING: str(lib)}) == str(lib)
    assert capsys.readouterr().err == ""
    assert tcmalloc_library({SETTING: str(tmp_path / "nope.so")}) is None
    warning = capsys.readouterr().err  # a bad path is said, not silently ignored
    assert warning.startswith("flaxft: warning:") and "nope.so is not a file" in warning and warning.count("\n") == 1
    assert tcmalloc_library({}) == find_tcmalloc()
    assert tcmalloc_library(tcmalloc_env({}, str(lib))) is None  # the re-executed process never re-executes


def test_tcmalloc_env_prepends_to_ld_preload():
    env = tcmalloc_env({"LD_PRELOAD": "/x/libother.so", "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": "5", "A": "b"},
                       "/y/libtcmalloc.so")
    assert env["LD_PRELOAD"] == "/y/libtcmalloc.so /x/libother.so"
    assert env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == "5" and env["A"] == "b"
    assert tcmalloc_env({}, "/y/libtcmalloc.so")["LD_PRELOAD"] == "/y/libtcmalloc.so"


def _probe(**env):
    """The allocator a fresh `python -c` command ends up on (started on glibc's malloc)."""
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", SETTING)}
    proc = subprocess.run([sys.executable, "-c", PROBE], check=False, env={**base, **env}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_a_command_reexecutes_onto_tcmalloc_when_the_machine_has_it():
    """A real process: on glibc it re-executes itself once with tcmalloc preloaded, when the machine has it."""
    assert _probe() == ("tcmalloc" if sys.platform.startswith("linux") and find_tcmalloc() else "system")
    assert _probe(**{SETTING: "0"}) == "system"
