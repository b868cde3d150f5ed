"""Time flaxft's jitted train step alone (no data pipeline), per dtype and dropout setting.

    python bench/step_time.py --model DIR [--batch-size 32 --length 64 --steps 10] [--allocator system]

Prints one markdown row per configuration: seconds per step, examples/s, and the page faults and kernel CPU
time per step (the host allocator's share: `--allocator system` vs mimalloc or tcmalloc, see flaxft/host_memory.py),
with the same train_step, optimizer and model code as a real run, on one device.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib
import resource
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from flaxft.config import TrainConfig  # noqa: E402
from flaxft.model import build, load_pretrained  # noqa: E402
from flaxft.optim import make_optimizer  # noqa: E402
from flaxft.losses import Objective  # noqa: E402
from flaxft.steps import TrainState, train_step  # noqa: E402

from common import run_on_allocator  # noqa: E402  (bench/ is on sys.path when run as a script)


def build_step(model_dir, dtype: str, dropout: bool, batch: int, length: int, dropout_rng: str = "hash"):
    """(jitted train step, state, batch): MiniLM-sized state on one device, a batch of one length."""
    cfg, params = load_pretrained(model_dir, 2, rng=jax.random.key(0))
    if not dropout:
        cfg = dataclasses.replace(cfg, hidden_dropout=0.0, attention_dropout=0.0, attention_output_dropout=0.0,
                                  classifier_dropout=0.0)
    model = build(cfg, 2, dtype=dtype)
    tx, schedule = make_optimizer(TrainConfig(), 1000)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(1)))
    data = {"input_ids": jnp.full((batch, length), 1000, jnp.int32),
            "token_type_ids": jnp.zeros((batch, length), jnp.int32),
            "attention_mask": jnp.ones((batch, length), jnp.int32),
            "labels": jnp.zeros((batch,), jnp.int32), "weights": jnp.ones((batch,), jnp.float32)}
    step = jax.jit(functools.partial(train_step, model=model, tx=tx, schedule=schedule, objective=Objective(),
                                     dropout_rng=dropout_rng), donate_argnums=0)
    return step, state, data


def time_step(model_dir, dtype: str, dropout: bool, batch: int, length: int, steps: int,
              trace_dir: str | None = None, dropout_rng: str = "hash", host: dict | None = None) -> float:
    """Seconds per step after one warm-up step; with `trace_dir`, the timed steps are profiled there;
    `host` (a dict) receives the process's page faults and kernel CPU seconds per step."""
    step, state, data = build_step(model_dir, dtype, dropout, batch, length, dropout_rng)
    state, m = step(state, data)  # compile + warm up
    jax.block_until_ready(m)
    if trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, data)
    jax.block_until_ready(m)
    seconds = (time.perf_counter() - start) / steps
    after = resource.getrusage(resource.RUSAGE_SELF)
    if host is not None:
        host.update(page_faults=(after.ru_minflt - before.ru_minflt) / steps,
                    kernel_seconds=(after.ru_stime - before.ru_stime) / steps)
    if trace_dir:
        jax.profiler.stop_trace()
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--allocator", choices=["system", "auto", "mimalloc", "tcmalloc"], default="auto",
                   help="host malloc (auto: what flaxft's commands pick, flaxft/host_memory.py)")
    args = p.parse_args()
    print(f"host malloc: {run_on_allocator(args.allocator)}")
    print(f"| dtype | dropout (train.dropout_rng) | s/step (B={args.batch_size}, L={args.length}) | examples/s "
          "| page faults/step | kernel CPU s/step |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for dtype, dropout, bits in (("float32", True, "hash"), ("float32", True, "threefry"), ("float32", False, "hash"),
                                 ("bfloat16", True, "hash")):
        host = {}
        sec = time_step(args.model, dtype, dropout, args.batch_size, args.length, args.steps, dropout_rng=bits,
                        host=host)
        print(f"| {dtype} | {f'on ({bits})' if dropout else 'off'} | {sec:.3f} | {args.batch_size / sec:.1f} "
              f"| {host['page_faults']:.0f} | {host['kernel_seconds']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
