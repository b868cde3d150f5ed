"""User-facing errors: one line saying what is wrong and what to do."""

from __future__ import annotations

from typing import Optional


class FlaxftError(Exception):
    """A problem with the user's input (config, files, data, environment).

    The CLI prints its message as a single line (no traceback unless --debug) and exits non-zero.
    Messages say what is wrong and how to fix it, e.g.
    ``FlaxftError("data.path: folder '/x/MRPC' does not exist; point data.path at a GLUE task folder")``.
    """


def first_line(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0].rstrip('.')}" if lines else type(e).__name__


def out_of_memory(e: BaseException) -> Optional[str]:
    """Where `e` ran out of memory ("device" or "host"), or None if it is another error: XLA's
    RESOURCE_EXHAUSTED (a JaxRuntimeError, at compile or run time; on a CPU the device memory is the host's)
    or Python's MemoryError."""
    if isinstance(e, MemoryError):
        return "host"
    if type(e).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and "RESOURCE_EXHAUSTED" in str(e):
        return "device"
    return None
