"""Process-wide set-up, in one place: the command-line entry points call `setup(config)` before training or
predicting; in a notebook, call it yourself to get the same behaviour.

Importing any flaxft module, or constructing a Trainer, changes nothing outside flaxft: JAX's config, its
PRNG registry and the log levels stay as they were. (The host malloc re-execution, which must happen before
JAX starts, is done by the commands' entry points: flaxft.host_memory.preload_host_malloc.)
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Optional

import jax

from flaxft.config import Config


def enable_compilation_cache(folder: Optional[str]) -> None:
    """Keep compiled executables on disk, so an identical rerun (or the next seed) compiles nothing.

    JAX reads the folder setting when it first compiles, so this must run before anything is jitted.
    """
    if folder:
        jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(folder).expanduser()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # every step executable, however fast


def initialize_distributed(cfg) -> None:
    """Join a multi-process run before JAX touches any device.

    Explicit (`distributed.*` keys; CPU processes talk over gloo) or automatic on a multi-host Cloud TPU
    slice, where each worker's environment names all hosts. A single process needs nothing.
    """
    if cfg.coordinator_address is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only affects CPU devices
        jax.distributed.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id)
    elif len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        jax.distributed.initialize()


def setup(config: Optional[Config] = None) -> None:
    """What `python -m flaxft.train` and `flaxft.predict` do before any JAX work: quiet Orbax's per-file INFO
    logs (absl), and with a config, join a multi-process run and turn on the persistent compilation cache."""
    logging.getLogger("absl").setLevel(logging.WARNING)
    if config is not None:
        initialize_distributed(config.distributed)
        enable_compilation_cache(config.train.compilation_cache)
