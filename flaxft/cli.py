"""Shared command-line plumbing: one-line errors, --debug for tracebacks, logging set-up."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from flaxft.errors import FlaxftError


def run_main(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Run `main`; bad input becomes `flaxft: error: ...` on stderr and exit 2 (1 for bugs), no traceback.

    `--debug` (or FLAXFT_DEBUG=1) lets exceptions through with their traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("FLAXFT_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    # flaxft's own progress at INFO; other libraries only when they warn (no "JAX version available" noise)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("flaxft").setLevel(logging.INFO)
    if debug:
        return main(argv)
    quiet_background_failures()
    try:
        return main(argv)
    except FlaxftError as e:
        print(f"flaxft: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flaxft: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug or an environment failure: still one line
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"flaxft: error: {type(e).__name__}: {first} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


class _BackgroundFailures(logging.Filter):
    """Drops what Orbax's background threads and event loops print when a checkpoint write or read fails (a full
    disk, a damaged file): a traceback per array. The failure itself reaches flaxft, which reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "asyncio":
            return "exception was never retrieved" not in record.getMessage()
        return not (record.name == "absl" and record.exc_info and "orbax" in record.pathname)


def quiet_background_failures() -> None:
    """Without --debug: no traceback from Orbax's writer threads (absl log records), from its event loops' tasks
    whose errors a failed gather left unread (asyncio), or from TensorStore callbacks into a loop Orbax already
    closed ("Event loop is closed", unraisable)."""
    if getattr(sys.unraisablehook, "flaxft", False):  # once per process
        return
    for handler in logging.getLogger().handlers:  # on the handlers: absl may replace its logger when imported
        handler.addFilter(_BackgroundFailures())
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        e = unraisable.exc_value
        if isinstance(e, RuntimeError) and str(e) == "Event loop is closed" or _from_orbax(unraisable.exc_traceback):
            return
        previous(unraisable)

    hook.flaxft = True
    sys.unraisablehook = hook


def _from_orbax(tb) -> bool:
    while tb is not None:
        if "orbax" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False
