"""Shared command-line plumbing: one-line errors, --debug for tracebacks, error.log, logging set-up."""

from __future__ import annotations

import datetime
import logging
import os
import socket
import sys
import traceback
from typing import Callable, Optional

from flaxft.errors import FlaxftError, first_line, out_of_memory

ERROR_LOG = "error.log"
_error_log_dir: Optional[str] = None  # the output_dir of the command being run, once its config is known


def keep_traceback_in(output_dir) -> None:
    """Have run_main write an unexpected error's full traceback to output_dir/error.log: a detached worker's
    stderr may be gone by the time someone looks. The commands call this as soon as their config is read."""
    global _error_log_dir
    _error_log_dir = str(output_dir)


def run_main(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Run `main`; bad input becomes `flaxft: error: ...` on stderr and exit 2 (1 for bugs), no traceback.

    An unexpected exception is one line too, naming output_dir/error.log, where its traceback is kept.
    `--debug` (or FLAXFT_DEBUG=1) lets exceptions through with their traceback.
    """
    global _error_log_dir
    _error_log_dir = None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("FLAXFT_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    # flaxft's own progress at INFO; other libraries only when they warn (no "JAX version available" noise)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("flaxft").setLevel(logging.INFO)
    if not debug:
        quiet_background_failures()
    try:
        return main(argv)
    except FlaxftError as e:
        if debug:
            raise
        print(f"flaxft: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print("flaxft: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug or an environment failure: still one line
        kept = _write_error_log(e)
        if debug:
            raise
        where = out_of_memory(e)
        traceback_hint = f"traceback in {kept}" if kept else "rerun with --debug for the traceback"
        if where:
            print(f"flaxft: error: out of {where} memory ({first_line(e)}); use smaller batches or shorter "
                  f"sequences: lower train.batch_size (or train.eval_batch_size), raise train.grad_accum_steps, "
                  f"set model.remat=true, lower data.max_seq_length, or shard the weights with mesh.fsdp "
                  f"({traceback_hint})", file=sys.stderr)
            return 2
        print(f"flaxft: error: {first_line(e)} ({traceback_hint})", file=sys.stderr)
        return 1


def _write_error_log(e: BaseException) -> Optional[str]:
    """Write `e`'s traceback to output_dir/error.log (one file per process in a multi-process run); its path,
    or None where no output_dir is known yet or the file cannot be written."""
    if _error_log_dir is None:
        return None
    try:
        from flaxft import storage

        path = storage.path(_error_log_dir) / _error_log_name()
        path.parent.mkdir(parents=True, exist_ok=True)
        when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        header = f"{when} {socket.gethostname()} pid {os.getpid()}: {' '.join(sys.argv)}\n"
        storage.write_text(path, header + "".join(traceback.format_exception(e)))
        return str(path)
    except Exception:  # noqa: BLE001 - keeping the traceback must not hide the error itself
        return None


def _error_log_name() -> str:
    jax = sys.modules.get("jax")
    if jax is not None and jax.distributed.is_initialized() and jax.process_count() > 1:
        return f"error.process-{jax.process_index()}.log"
    return ERROR_LOG


class _BackgroundFailures(logging.Filter):
    """Drops what Orbax's background threads and event loops print when a checkpoint write or read fails (a full
    disk, a damaged file): a traceback per array. The failure itself reaches flaxft, which reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "asyncio":
            return "exception was never retrieved" not in record.getMessage()
        return not (record.name == "absl" and record.exc_info and
                    ("orbax" in record.pathname or _from_orbax(record.exc_info[2])))


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
