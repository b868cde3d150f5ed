"""The Trainer: train, evaluate, predict and export, in the style of the Hugging Face Trainer, over the parts
of a run that each live in a module of their own:

    run_setup   the mesh, the model (family, config, module), the data (tokenized splits, buckets)
    data.prepare  the training plan: length buckets or packed rows
    optim       AdamW with warmup and decay
    compiled    state placed on the mesh; train/eval steps compiled once per batch shape
    resume      what checkpoints record, whether one fits, which step to continue from
    loop        the train loop (logging, evaluation, checkpoints, preemption, summary)
    evaluation  metrics and predictions
    export      the Hugging Face folder

Constructing a Trainer changes no process-wide state; `flaxft.runtime.setup(config)` does what the
command line does before training (compilation cache, log levels, multi-process start-up).
"""

from __future__ import annotations

import logging
import math
import pathlib
import time
from typing import Callable, Optional

import jax

from flaxft import loop, storage
from flaxft.checkpoint import CHECKPOINTS, Checkpoints, abstract, default_best_metric
from flaxft.compiled import CompiledSteps
from flaxft.config import Config
from flaxft.data.prepare import training_plan
from flaxft.data.sources import RawData
from flaxft.evaluation import EvalPrediction, Evaluator, PredictionOutput
from flaxft.export import EXPORT, export_model
from flaxft.model import load_pretrained
from flaxft.optim import make_optimizer
from flaxft.parallel import data_parallel_size
from flaxft.reporting import RunWriter
from flaxft.resume import check_compatible, resume_point, run_meta, step_meta
from flaxft.run_setup import set_up_run

log = logging.getLogger("flaxft")

__all__ = ["EvalPrediction", "PredictionOutput", "Trainer"]


class Trainer:
    """Fine-tune an encoder classifier/regressor.

    >>> trainer = Trainer(load_config("configs/glue/mrpc.yaml", ["data.path=../shared/data/glue/MRPC"]))
    >>> summary = trainer.train()
    >>> trainer.evaluate()["eval_accuracy"]

    `raw` replaces data loading with your own splits (see flaxft.data.sources.from_datasets);
    `compute_metrics(EvalPrediction) -> dict` adds (or overrides) evaluation metrics.
    If output_dir holds checkpoints, the Trainer starts from the latest (train() then continues the run).
    Everything that can fail on bad input fails here, before anything is written.
    """

    def __init__(self, config: Config, *, raw: Optional[RawData] = None,
                 compute_metrics: Optional[Callable[[EvalPrediction], dict]] = None):
        self.config = config
        t, c = config.train, config.checkpoint
        self.setup = s = set_up_run(config, raw)
        self.plan = training_plan(config.data, t, s.data, data_parallel_size(s.mesh))
        self.plan_description = (f"packed rows of {self.plan.length}" if self.plan.slots
                                 else f"buckets {s.data.boundaries}")
        self.steps_per_epoch = len(self.plan.epoch(0))
        self.total_steps = t.max_steps or math.ceil(t.epochs * self.steps_per_epoch)
        self.tx, self.schedule = make_optimizer(t, self.total_steps)
        self.compiled = CompiledSteps(s.mesh, s.module, s.family.partition_rules,
                                      is_regression=s.data.raw.is_regression, token_type_ids=s.family.token_type_ids)
        _, params = load_pretrained(s.model_dir, s.data.raw.num_labels, rng=jax.random.key(t.seed),
                                    random_init=config.model.random_init)
        self.state = self.compiled.place(params, self.tx, seed=t.seed)
        self.best_metric = c.best_metric or default_best_metric(s.data.raw.task, s.data.raw.is_regression)
        self.checkpoints = Checkpoints(s.output_dir / CHECKPOINTS, keep=c.keep, best_metric=self.best_metric,
                                       async_save=c.async_save)
        self.evaluator = Evaluator(s, self.compiled, compute_metrics)
        self.meta = run_meta(s, self.plan, self.steps_per_epoch, self.total_steps)
        self.checkpoint_seconds = 0.0
        self.resumed_step = self._resume()

    @property
    def raw(self) -> RawData:
        """The run's splits as loaded and what its labels are (names, regression or not)."""
        return self.setup.data.raw

    def _resume(self) -> Optional[int]:
        """Restore the checkpoint this run continues from (see flaxft.resume); its step, or None."""
        found = resume_point(self.checkpoints, self.config.checkpoint.resume_from)
        if found is None:
            return None
        source, step = found
        meta = source.read_meta(step)
        check_compatible(meta, self.meta, source.path(step))
        self.state = source.restore(step, self.state)
        log.info("resuming from %s: step %d (epoch %d, batch %d of %d)", source.path(step), int(self.state.step),
                 meta["epoch"] + 1, meta["batch_in_epoch"], self.steps_per_epoch)
        return int(self.state.step)

    # ------------------------------------------------------------------ the Hugging Face Trainer's verbs

    def train(self) -> dict:
        """Train to the end (or until SIGTERM); returns the summary (see flaxft.loop.train)."""
        return loop.train(self)

    def evaluate(self, split: Optional[str] = None) -> dict[str, float]:
        """Metrics named eval_<metric> on the task's evaluation splits (or on `split`)."""
        return self.evaluator.evaluate(self.state.params, split)

    def predict(self, split: str = "test") -> PredictionOutput:
        """Predictions for a split; metrics too when it has labels."""
        return self.evaluator.predict(self.state.params, split)

    def export(self, folder=None, which: Optional[str] = None) -> pathlib.Path:
        """Write the best (by checkpoint.best_metric) or final model in Hugging Face format (to output_dir/export)."""
        which = which or self.config.checkpoint.export
        folder = storage.path(folder) if folder else self.setup.output_dir / EXPORT
        params, step, metrics = self.state.params, int(self.state.step), {}
        if which == "best":
            self.checkpoints.wait()
            best = self.checkpoints.best_step()
            if best is not None:
                metrics = self.checkpoints.read_meta(best)["metrics"]
                if best != step:
                    params, step = self.checkpoints.restore_params(best, abstract(self.state.params)), best
        info = {k: v for k, v in step_meta(self.meta, step, metrics).items()
                if k not in ("model_config", "num_devices", "mesh")}
        raw = self.setup.data.raw
        export_model(folder, params, self.setup.model_config, label_names=raw.label_names,
                     is_regression=raw.is_regression, tokenizer=self.setup.data.tokenizer, info=info)
        why = f"best by {self.best_metric}={metrics[self.best_metric]:.4f}" if metrics else "final"
        log.info("exported the model of step %d (%s) to %s", step, why, folder)
        return folder

    # ------------------------------------------------------------------ what the loop calls

    def evaluate_and_log(self, step: int, epoch: int, writer: RunWriter) -> dict[str, float]:
        metrics = self.evaluate()
        if metrics:
            writer.write(step, {"epoch": epoch, **metrics})
            writer.flush()  # a remote output_dir gets the log and TensorBoard events now
            log.info("eval @ step %d (epoch %d): %s", step, epoch, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return metrics

    def save(self, step: int, metrics: dict) -> None:
        start = time.perf_counter()
        if self.checkpoints.save(step, self.state, step_meta(self.meta, step, metrics), metrics):
            seconds = time.perf_counter() - start
            self.checkpoint_seconds += seconds
            log.info("checkpoint at step %d %s(%.2f s blocking)", step, "with metrics " if metrics else "", seconds)
