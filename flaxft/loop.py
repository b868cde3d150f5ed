"""The train loop: steps, log lines, evaluations, checkpoints, preemption, and the summary at the end.

The host stays out of the hot loop: batches are prepared ahead on a thread, and device values reach the
host only at log and evaluation points. Every exit path (the end, a preemption notice, an error) commits
the checkpoint being written and closes the log writers.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from typing import Optional

import jax
import numpy as np

from flaxft import storage
from flaxft.checkpoint import CHECKPOINTS
from flaxft.data.pipeline import device_batches
from flaxft.errors import FlaxftError
from flaxft.grid import table as grid_table
from flaxft.host_memory import INSTALL_HINT, host_allocator
from flaxft.monitoring import CompileCounter, PreemptionGuard, Tally, seconds_since_process_start
from flaxft.reporting import RunWriter, summary, write_json
from flaxft.resume import trim_metrics_log

log = logging.getLogger("flaxft")


def itstime(step: int, every: Optional[int], total: Optional[int] = None) -> bool:
    """Whether something done every `every` steps (None: never) is due at `step`; always at `total`, the last."""
    return bool(every and step % every == 0) or step == total


def _batches(trainer, start: int):
    """(epoch, planned batch, device batch) from step `start` on."""
    spe, total, split = trainer.steps_per_epoch, trainer.total_steps, trainer.setup.data.splits["train"]
    for epoch in range(start // spe, math.ceil(total / spe)):
        first = epoch * spe
        plan = trainer.plan.epoch(epoch)[max(start - first, 0):total - first]
        for b, batch in zip(plan, device_batches(split, plan, trainer.compiled.batch_sharding,
                                                 trainer.config.train.prefetch)):
            yield epoch, b, batch


def _log_train(trainer, step: int, epoch: int, pending: list[dict], writer: RunWriter, bar, samples_per_s: float,
               diverged: set) -> None:
    host = jax.device_get(pending)  # the only host sync in the loop
    losses = np.mean([m["loss"] for m in host], axis=0)  # [] or, for a grid, [replicas]
    grad_norms = np.mean([m["grad_norm"] for m in host], axis=0)
    rates = np.asarray(host[-1]["learning_rate"])
    grid = trainer.grid
    if grid is None:
        loss = float(losses)
        if not math.isfinite(loss):
            raise FlaxftError(f"training loss became {loss} at step {step}; lower train.learning_rate "
                              f"(now {trainer.config.train.learning_rate}) or check the labels and inputs")
        writer.write(step, {"epoch": epoch + 1, "loss": loss, "learning_rate": float(rates),
                            "grad_norm": float(grad_norms), "samples_per_second": samples_per_s})
    else:  # one event per replica; a diverged replica is a result of the sweep, not the end of it
        for i in range(grid.size):
            if not math.isfinite(losses[i]) and i not in diverged:
                diverged.add(i)
                log.warning("replica %s: training loss became %s at step %d", grid.name(i), losses[i], step)
            writer.write(step, {"epoch": epoch + 1, **grid.tags(i), "loss": float(losses[i]),
                                "current_learning_rate": float(rates[i]), "grad_norm": float(grad_norms[i]),
                                "samples_per_second": samples_per_s / grid.size}, run=grid.name(i))
    bar.set_postfix(loss=f"{float(np.mean(losses)):.4f}", lr=f"{float(np.max(rates)):.2e}",
                    samples_s=f"{samples_per_s:.1f}")


def _start(trainer, step: int) -> None:
    """Files a (re)started run writes first; the log of a resumed run loses the events past its checkpoint."""
    out = trainer.setup.output_dir
    (out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        storage.write_text(out / "config.yaml", trainer.config.to_yaml())
        if trainer.resumed_step is None:
            (out / "metrics.jsonl").unlink(missing_ok=True)
        else:
            trim_metrics_log(out, step)
    log.info("training %d steps (%d per epoch) on %d devices %s; %s", trainer.total_steps, trainer.steps_per_epoch,
             jax.device_count(), dict(trainer.setup.mesh.shape), trainer.plan_description)
    if jax.default_backend() == "cpu" and host_allocator() == "system":
        log.info("host allocator: glibc malloc, which page-faults XLA:CPU's step buffers back in every step; "
                 "CPU steps run about 15%% faster on tcmalloc: %s (the flaxft commands then preload it)", INSTALL_HINT)


def train(trainer) -> dict:
    """Train `trainer`'s run to the end (or until SIGTERM, or until early stopping), checkpointing on the way;
    returns the summary.

    After SIGTERM it saves a checkpoint at the next step boundary and returns
    {"preempted": True, "global_step": N} without a summary.json: rerunning continues the run.
    Early stopping saves a checkpoint that says so, then ends as the last step does; a rerun trains no further.
    """
    from tqdm.auto import tqdm

    t, c = trainer.config.train, trainer.config.checkpoint
    step, total, spe = trainer.global_step, trainer.total_steps, trainer.steps_per_epoch
    done = trainer.setup.output_dir / "summary.json"
    if trainer.stopped_early:
        log.info("this run already stopped early at step %d (train.early_stopping_patience); not training further",
                 step)
    elif step == total and done.is_file():
        log.info("this run had already finished (%s); nothing to do", done)
    if (step == total or trainer.stopped_early) and done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    _start(trainer, step)
    train_step = functools.partial(trainer.compiled.train, optimizer=trainer.optimizer, learning_rate=t.learning_rate,
                                   grad_accum_steps=t.grad_accum_steps, dropout_rng=t.dropout_rng)
    tally, writer = Tally(trainer.plan.lengths), RunWriter(trainer.setup.output_dir)
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=jax.process_index() != 0,
               dynamic_ncols=True, mininterval=2.0)
    first_step_seconds, pending, eval_metrics, preempted, diverged = None, [], {}, False, set()
    try:
        with CompileCounter() as compiles, PreemptionGuard() as sigterm:
            for epoch, b, batch in () if trainer.stopped_early else _batches(trainer, step):
                execute = train_step(trainer.state, b.num_rows, b.length, trainer.plan.slots)
                trainer.state, m = execute(trainer.state, batch)
                pending.append(m)
                if first_step_seconds is None:  # one sync, for time-to-first-step (load + compile + step)
                    jax.block_until_ready(m)
                    first_step_seconds = tally.train_seconds()
                    trainer.first_step_from_start = seconds_since_process_start()
                tally.add(b)
                step += 1
                bar.update(1)
                if itstime(step, t.log_every_steps, total):
                    _log_train(trainer, step, epoch, pending, writer, bar, tally.examples / tally.train_seconds(),
                               diverged)
                    pending = []
                end_of_epoch = itstime(step, spe)
                evaluated = end_of_epoch or itstime(step, t.eval_every_steps, total)
                stopping = False
                if evaluated:
                    with tally.pause():  # evaluation time is not training time
                        eval_metrics = trainer.evaluate_and_log(step, epoch + 1, writer)
                    stopping = trainer.early_stop(step, eval_metrics)
                if stopping and pending:  # the last losses, as the last step logs them
                    _log_train(trainer, step, epoch, pending, writer, bar, tally.examples / tally.train_seconds(),
                               diverged)
                    pending = []
                preempted = step < total and (sigterm.requested or trainer.checkpoints.reached_preemption(step))
                if preempted:
                    log.warning("preemption notice (SIGTERM): saving a checkpoint at step %d, then stopping", step)
                # a stopped run's checkpoint says so (a rerun trains no further); a preempted one finishes on rerun
                if end_of_epoch or preempted or stopping or itstime(step, c.every_steps, total):
                    with tally.pause():  # only the device-to-host copy blocks; the write is in the background
                        trainer.save(step, eval_metrics if evaluated else {})
                if preempted or stopping:
                    break
    finally:
        bar.close()  # ends the bar's line, so an error message starts on its own line
        trainer.checkpoints.wait()  # a checkpoint being written is committed before we stop, whatever happened
        writer.close()  # buffered metrics (and, for gs://, the staged logs) reach output_dir on every exit path
    if preempted:
        log.warning("preempted at step %d; checkpoint saved in %s; rerun the same command to resume",
                    step, trainer.checkpoints.path(step))
        return {"preempted": True, "global_step": step}
    return _finish(trainer, step, eval_metrics, tally, first_step_seconds, compiles)


def _finish(trainer, step: int, eval_metrics: dict, tally: Tally, first_step_seconds, compiles) -> dict:
    """After the last step: the final metrics (if the loop did not just compute them), export, summary.json."""
    train_seconds = tally.train_seconds()
    if not eval_metrics and trainer.resumed_step == step:  # stopped after its last checkpoint, before the summary
        eval_metrics = trainer.evaluate()
    export_dir = trainer.export() if trainer.config.checkpoint.export != "none" else None
    result = summary(trainer, eval_metrics, step, tally, train_seconds, first_step_seconds, compiles, export_dir)
    if jax.process_index() == 0:
        write_json(trainer.setup.output_dir / "summary.json", result)
    log.info("done: %s", {k: result[k] for k in result if k.startswith("eval_") or k.endswith("_per_second")})
    if trainer.grid and "by_learning_rate" in result:
        log.info("%d replicas, mean +- std over seeds per learning rate:\n%s", trainer.grid.size, grid_table(result))
    return result
