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
