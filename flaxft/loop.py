"""The train loop: steps, log lines, evaluations, checkpoints, preemption, and the summary at the end.

The host stays out of the hot loop: batches are prepared ahead on a thread, and device values reach the
host only at log and evaluation points. Every exit path (the end, a preemption notice, an error) commits
the checkpoint being written and closes the log writers.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
from typing import Optional

import jax
import numpy as np

from flaxft import run_lock, storage
from flaxft.checkpoint import CHECKPOINTS
from flaxft.data.pipeline import device_batches
from flaxft.errors import FlaxftError, first_line, out_of_memory
from flaxft.grid import table as grid_table
from flaxft.host_memory import INSTALL_HINT, host_allocator
from flaxft.monitoring import CompileCounter, Preempted, PreemptionGuard, Tally, seconds_since_process_start
from flaxft.parallel import data_parallel_size
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
                 "CPU steps run about 15%% faster on mimalloc, which the flaxft commands preload unless "
                 "FLAXFT_MALLOC=system: %s", INSTALL_HINT)


def train(trainer) -> dict:
    """`_train` holding output_dir's run lock (see flaxft.run_lock)."""
    with run_lock.hold(trainer.setup.output_dir):
        return _train(trainer)


def _train(trainer) -> dict:
    """Train `trainer`'s run to the end (or until SIGTERM, or until early stopping), checkpointing on the way;
    returns the summary.

    SIGTERM is honoured at the next point where stopping loses nothing: the next step boundary (after the
    evaluation or checkpoint write it interrupted), where a checkpoint is saved; or, after the last step, before
    or during the export, which is then abandoned whole. It returns {"preempted": True, "global_step": N} without
    a summary.json: rerunning continues the run (after the last step: evaluates, exports and summarizes).
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
    with contextlib.ExitStack() as run:
        sigterm = run.enter_context(PreemptionGuard())  # up to the end of the export
        trainer.stop_requested = lambda: sigterm.requested  # the export asks too
        run.callback(setattr, trainer, "stop_requested", lambda: False)
        doing = _Doing()
        try:
            with CompileCounter() as compiles:
                for epoch, b, batch in () if trainer.stopped_early else _batches(trainer, step):
                    doing.step(b.num_rows, b.length)
                    execute = train_step(trainer.state, b.num_rows, b.length, trainer.plan.slots)
                    doing.phase = "running"
                    trainer.state, m = execute(trainer.state, batch)
                    pending.append(m)
                    if first_step_seconds is None:  # one sync, for time-to-first-step (load + compile + step)
                        jax.block_until_ready(m)
                        first_step_seconds = tally.train_seconds()
                        trainer.first_step_from_start = seconds_since_process_start()
                        doing.synced()
                    tally.add(b)
                    step += 1
                    bar.update(1)
                    if itstime(step, t.log_every_steps, total):
                        _log_train(trainer, step, epoch, pending, writer, bar, tally.examples / tally.train_seconds(),
                                   diverged)
                        pending = []
                        doing.synced()
                    end_of_epoch = itstime(step, spe)
                    evaluated = end_of_epoch or itstime(step, t.eval_every_steps, total)
                    stopping = False
                    if evaluated:
                        with tally.pause():  # evaluation time is not training time
                            doing.phase = "evaluating"
                            eval_metrics = trainer.evaluate_and_log(step, epoch + 1, writer)
                            doing.phase = "running"
                        stopping = trainer.early_stop(step, eval_metrics)
                    if stopping and pending:  # the last losses, as the last step logs them
                        _log_train(trainer, step, epoch, pending, writer, bar, tally.examples / tally.train_seconds(),
                                   diverged)
                        pending = []
                    preempted = sigterm.requested or trainer.checkpoints.reached_preemption(step)
                    if preempted:
                        log.warning("preemption notice (SIGTERM): saving a checkpoint at step %d, then stopping", step)
                    # a stopped run's checkpoint says so (a rerun trains no further); a preempted one finishes on rerun
                    if end_of_epoch or preempted or stopping or itstime(step, c.every_steps, total):
                        with tally.pause():  # only the device-to-host copy blocks; the write is in the background
                            trainer.save(step, eval_metrics if evaluated else {})
                    if preempted or stopping:
                        break
        except BaseException as e:
            _wind_down(trainer, writer, bar, failing=True)
            where = out_of_memory(e) if isinstance(e, Exception) else None
            if where is None:
                raise
            raise FlaxftError(_out_of_memory_message(trainer, where, doing, e)) from e
        _wind_down(trainer, writer, bar)
        try:
            if not preempted:
                return _finish(trainer, step, eval_metrics, tally, first_step_seconds, compiles)
        except Preempted as e:
            log.warning("preemption notice (SIGTERM) %s: stopping; the export was not written", e)
    log.warning("preempted at step %d; checkpoint saved in %s; rerun the same command to %s", step,
                trainer.checkpoints.path(step), "resume" if step < total else "finish (evaluation, export, summary)")
    return {"preempted": True, "global_step": step}


def _wind_down(trainer, writer: RunWriter, bar, failing: bool = False) -> None:
    """On every exit path: end the bar's line (an error message starts on its own line), commit the checkpoint
    being written, close the logs (buffered metrics and, for gs://, the staged logs reach output_dir). After an
    error, a second one from these (say the same full disk) is not allowed to replace the first."""
    bar.close()
    for close in (trainer.checkpoints.wait, writer.close):
        try:
            close()
        except Exception:  # noqa: BLE001
            if not failing:
                raise
            log.debug("while stopping after an error", exc_info=True)


class _Doing:
    """What the loop was doing, to say so when memory runs out: compiling, running or evaluating, and the
    largest train batch shape dispatched since the last host sync (a step's error surfaces at a later sync)."""

    def __init__(self):
        self.phase, self.rows, self.length, self.fresh = "compiling", 0, 0, True

    def step(self, rows: int, length: int) -> None:
        self.phase = "compiling"  # the step's executable is built (or looked up) first
        if self.fresh or rows * length > self.rows * self.length:
            self.rows, self.length, self.fresh = rows, length, False

    def synced(self) -> None:
        self.fresh = True


def _out_of_memory_message(trainer, where: str, doing: _Doing, e: Exception) -> str:
    """One line: which shape ran out of memory, XLA's first line, and the config keys that lower the need."""
    t, d, s = trainer.config.train, trainer.config.data, trainer.setup
    devices = data_parallel_size(s.mesh)
    if doing.phase == "evaluating":
        batch = t.eval_batch_size or t.batch_size
        what = (f"evaluating (batches of {batch // devices} rows per device, up to {s.data.boundaries[-1]} tokens "
                f"long)")
        levers = [f"lower train.eval_batch_size (now {batch})", f"lower data.max_seq_length (now {d.max_seq_length})"]
    else:
        rows = doing.rows // devices
        shape = f"{'packed length' if trainer.plan.slots else 'bucket'} {doing.length} x {rows} rows per device"
        if t.grad_accum_steps > 1:
            shape += f" ({t.grad_accum_steps} micro-batches of {rows // t.grad_accum_steps})"
        if trainer.grid:
            shape += f", {trainer.grid.size} replicas over mesh.replica={s.mesh.shape['replica']}"
        what = f"{doing.phase} the train step for {shape}"
        levers = [f"lower train.batch_size (now {t.batch_size})",
                  f"raise train.grad_accum_steps (now {t.grad_accum_steps})"]
        if not trainer.config.model.remat:
            levers.append("set model.remat=true")
        levers.append(f"lower data.packed_length (now {trainer.plan.length})" if trainer.plan.slots
                      else f"lower data.max_seq_length (now {d.max_seq_length})")
    if jax.device_count() > s.mesh.shape["fsdp"]:
        levers.append(f"shard the weights over more devices with mesh.fsdp (now {s.mesh.shape['fsdp']})")
    return f"out of {where} memory {what}: {first_line(e)}; {', '.join(levers[:-1])} or {levers[-1]}"


def _finish(trainer, step: int, eval_metrics: dict, tally: Tally, first_step_seconds, compiles) -> dict:
    """After the last step: the final metrics (if the loop did not just compute them), export, summary.json.
    A SIGTERM before or during the export raises Preempted (the run's last checkpoint is committed)."""
    train_seconds = tally.train_seconds()
    if not eval_metrics and trainer.resumed_step == step:  # stopped after its last checkpoint, before the summary
        eval_metrics = trainer.evaluate()
    if trainer.stop_requested():
        raise Preempted("before the export")
    export_dir = trainer.export() if trainer.config.checkpoint.export != "none" else None
    result = summary(trainer, eval_metrics, step, tally, train_seconds, first_step_seconds, compiles, export_dir)
    if jax.process_index() == 0:
        write_json(trainer.setup.output_dir / "summary.json", result)
    log.info("done: %s", {k: result[k] for k in result if k.startswith("eval_") or k.endswith("_per_second")})
    if trainer.grid and "by_learning_rate" in result:
        log.info("%d replicas, mean +- std over seeds per learning rate:\n%s", trainer.grid.size, grid_table(result))
    return result
