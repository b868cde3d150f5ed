"""The Trainer: train, evaluate, predict and export, in the style of the Hugging Face Trainer, over the parts
of a run that each live in a module of their own:

    run_setup   the mesh, the model (family, config, module), the data (tokenized splits, buckets)
    data.prepare  the training plan: length buckets or packed rows
    optim       the optimizer (adamw, adafactor, lion, sgd) under a learning-rate schedule (schedules)
    compiled    state placed on the mesh; train/eval steps compiled once per batch shape
    resume      what checkpoints record, whether one fits, which step to continue from
    loop        the train loop (logging, evaluation, checkpoints, preemption, summary)
    grid        a grid of (seed, learning rate) replicas trained in one program, and its statistics
    evaluation  metrics and predictions
    export      the Hugging Face folder

Constructing a Trainer changes no process-wide state; `flaxft.runtime.setup(config)` does what the
command line does before training (compilation cache, log levels, multi-process start-up).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import pathlib
import time
from typing import Callable, Optional

import jax

import numpy as np

from flaxft import grid as grids
from flaxft import early_stopping, loop, storage
from flaxft.checkpoint import CHECKPOINTS, Checkpoints, abstract, default_best_metric, metric_value
from flaxft.compiled import CompiledSteps
from flaxft.config import Config
from flaxft.data.grid_plan import GridPlan
from flaxft.data.prepare import training_plan
from flaxft.data.sources import RawData
from flaxft.evaluation import EvalPrediction, Evaluator, PredictionOutput
from flaxft.export import EXPORT, export_model
from flaxft.errors import FlaxftError
from flaxft.metrics import lower_is_better
from flaxft.model import load_pretrained, param_shapes
from flaxft.monitoring import sigterm_hook
from flaxft.optim import make_optimizer
from flaxft.parallel import data_parallel_size
from flaxft.reporting import RunWriter
from flaxft.resume import check_compatible, newest_intact, resume_point, run_meta, step_meta
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
        if t.early_stopping_patience is not None and not any(s.data.splits[n].has_labels
                                                             for n in s.data.raw.eval_splits):
            raise FlaxftError("train.early_stopping_patience needs a labelled evaluation split to watch; set "
                              "data.validation_file (or data.path to a GLUE folder with its dev file), or unset it")
        self.grid = grids.Grid.of(t)
        seeds = self.grid.seeds if self.grid else (t.seed,)
        plans = [training_plan(config.data, t, s.data, data_parallel_size(s.mesh), seed) for seed in seeds]
        self.plan = GridPlan(tuple(plans), tuple(self.grid.seed_index)) if self.grid else plans[0]
        d = config.data
        self.plan_description = (f"packed rows of {plans[0].length}" if plans[0].slots
                                 else f"buckets {s.data.boundaries}" + ("" if d.length_grouping == "bucket"
                                                                        else f" ({d.length_grouping} batches)")
                                 + (", label-stratified batches" if d.stratify_labels else "")
                                 + (", leftovers carried to the next bucket" if d.carry_leftovers else ""))
        if self.grid:
            self.plan_description += f"; a grid of {self.grid.size} replicas (seeds {list(self.grid.seeds)} x " \
                                     f"learning rates {list(self.grid.learning_rates)})"
            grids.check_fits(self.grid, sum(int(np.prod(x.shape)) for x in param_shapes(
                s.model_config, s.data.raw.num_labels).values()), s.mesh, grids.device_memory_bytes(jax.devices()[0]))
        self.steps_per_epoch = len(self.plan.epoch(0))
        self.total_steps = t.max_steps or math.ceil(t.epochs * self.steps_per_epoch)
        if t.early_stopping_patience is not None:
            self._check_early_stopping_can_stop()
        self.optimizer = functools.partial(make_optimizer, t, self.total_steps)
        rates = self.grid.learning_rates if self.grid else (t.learning_rate,)
        self.tx, self.schedule = self.optimizer(rates[0])  # a grid's optimizer state does not depend on the rate
        self.compiled = CompiledSteps(s.mesh, s.module, s.family.partition_rules, objective=s.objective,
                                      token_type_ids=s.family.token_type_ids, grid=self.grid)
        self.state = self.compiled.place(self._initial_params(seeds), self.tx, seed=t.seed)
        self.best_metric = c.best_metric or default_best_metric(s.data.raw.task, s.objective.problem_type)
        self.checkpoints = Checkpoints(s.output_dir / CHECKPOINTS, keep=c.keep, best_metric=self.best_metric,
                                       async_save=c.async_save)
        self.evaluator = Evaluator(s, self.compiled, compute_metrics)
        self.meta = run_meta(s, self.plan, self.steps_per_epoch, self.total_steps, self.grid)
        self.checkpoint_seconds = 0.0
        self.first_step_from_start: Optional[float] = None  # process start to the end of step 1 (the loop sets it)
        self.early_stopping = early_stopping.EarlyStopping()
        self.stop_requested: Callable[[], bool] = lambda: False  # train() sets it: whether SIGTERM came
        self.resumed_step = self._resume()

    def _initial_params(self, seeds):
        """The checkpoint's weights and a head initialised from each seed; a grid stacks them per replica."""
        s = self.setup
        per_seed = [load_pretrained(s.model_dir, s.data.raw.num_labels, rng=jax.random.key(seed),
                                    random_init=self.config.model.random_init)[1] for seed in seeds]
        if not self.grid:
            return per_seed[0]
        return jax.tree.map(lambda *xs: np.stack([np.asarray(xs[k]) for k in self.grid.seed_index]), *per_seed)

    def _check_early_stopping_can_stop(self) -> None:
        """Warn when too few evaluations come before the last step for the patience to ever run out."""
        t, spe, total = self.config.train, self.steps_per_epoch, self.total_steps
        before_end = sum(loop.itstime(s, spe) or loop.itstime(s, t.eval_every_steps) for s in range(1, total))
        if before_end <= t.early_stopping_patience:  # the first evaluation sets the best; `patience` more can stop
            log.warning("train.early_stopping_patience=%d can never stop this run: only %d evaluations come before "
                        "its last step; set train.eval_every_steps to evaluate more often", t.early_stopping_patience,
                        before_end)

    @property
    def raw(self) -> RawData:
        """The run's splits as loaded and what its labels are (names, regression or not)."""
        return self.setup.data.raw

    @property
    def global_step(self) -> int:
        """Optimizer steps taken (a grid's replicas all take the same)."""
        return int(np.max(jax.device_get(self.state.step)))

    def _resume(self) -> Optional[int]:
        """Restore the checkpoint this run continues from (see flaxft.resume); its step, or None."""
        found = resume_point(self.checkpoints, self.config.checkpoint.resume_from)
        if found is None:
            return None
        source, steps = found

        def restore(step: int):
            meta = source.read_meta(step)
            check_compatible(meta, self.meta, source.path(step))  # a different run is an error, not damage
            return meta, source.restore(step, self.state)

        step, (meta, self.state) = newest_intact(source, steps, restore)
        log.info("resuming from %s: step %d (epoch %d, batch %d of %d)", source.path(step), self.global_step,
                 meta["epoch"] + 1, meta["batch_in_epoch"], self.steps_per_epoch)
        saved = early_stopping.EarlyStopping.from_meta(meta.get("early_stopping") or {})
        if self.config.train.early_stopping_patience is not None:
            self.early_stopping = saved
        elif saved.stopped:  # turning early stopping off is how to train a stopped run further
            log.info("the run had stopped early at step %d; train.early_stopping_patience is null now, so it trains on",
                     step)
        return self.global_step

    # ------------------------------------------------------------------ the Hugging Face Trainer's verbs

    def train(self) -> dict:
        """Train to the end (or until SIGTERM); returns the summary (see flaxft.loop.train)."""
        return loop.train(self)

    def evaluate(self, split: Optional[str] = None) -> dict:
        """Metrics named eval_<metric> on the task's evaluation splits (or on `split`). A grid's: per replica
        (`replicas`), per learning rate (`by_learning_rate`), `best_learning_rate`, and that rate's
        eval_<metric>_mean and _std (see flaxft.grid.aggregate)."""
        if not self.grid:
            return self.evaluator.evaluate(self.state.params, split)
        return grids.aggregate(self.grid, self.evaluator.evaluate_replicas(self.state.params, split), self.best_metric)

    def predict(self, split: str = "test") -> PredictionOutput:
        """Predictions for a split; metrics too when it has labels."""
        if self.grid:
            raise FlaxftError("Trainer.predict on a grid of replicas: predict with its exported best replica "
                              "(python -m flaxft.predict --model OUTPUT_DIR) or one of export/seed-<s>_lr-<lr>/")
        return self.evaluator.predict(self.state.params, split)

    def export(self, folder=None, which: Optional[str] = None) -> pathlib.Path:
        """Write the best (by checkpoint.best_metric) or final model in Hugging Face format (to output_dir/export).
        A grid writes its best replica at that step there (which="all": every replica too, in
        export/seed-<s>_lr-<lr>/)."""
        which = which or self.config.checkpoint.export
        folder = storage.path(folder) if folder else self.setup.output_dir / EXPORT
        params, step, metrics = self.state.params, self.global_step, {}
        self.checkpoints.wait()
        best = self.checkpoints.best_step() if which in ("best", "all") else None
        if best is not None:
            metrics = self.checkpoints.read_meta(best)["metrics"]
            if best != step:
                params, step = self.checkpoints.restore_params(best, abstract(self.state.params)), best
        info = {k: v for k, v in step_meta(self.meta, step, metrics).items()
                if k not in ("model_config", "num_devices", "mesh")}
        why = f"best by {self.best_metric}={metrics[self.best_metric]:.4f}" if metrics else "final"
        if not self.grid:
            self._export_one(folder, params, info)
            log.info("exported the model of step %d (%s) to %s", step, why, folder)
            return folder
        per_replica = self._replica_metrics(step)
        best_replica = grids.best_replica(self.grid, per_replica, self.best_metric)
        targets = [(best_replica, folder)]  # first: writing export/ replaces the folder, replica folders included
        if which == "all":
            targets += [(i, folder / self.grid.name(i)) for i in range(self.grid.size)]
        for i, where in targets:
            self._export_one(where, jax.tree.map(lambda x: x[i], params), self._replica_info(info, i, per_replica))
        log.info("exported replica %s of step %d (%s; the best replica by %s=%.4f) to %s", self.grid.name(best_replica),
                 step, why, self.best_metric, per_replica[best_replica][self.best_metric], folder)
        return folder

    def _export_one(self, folder, params, info: dict) -> None:
        raw = self.setup.data.raw
        export_model(folder, params, self.setup.model_config, label_names=raw.label_names,
                     problem_type=raw.problem_type, tokenizer=self.setup.data.tokenizer, info=info,
                     stop=self.stop_requested)

    def _replica_metrics(self, step: int) -> list[dict]:
        """Each replica's eval metrics at `step`: from its checkpoint, else evaluated now."""
        if step in self.checkpoints.steps():
            saved = self.checkpoints.read_meta(step).get("replica_metrics")
            if saved:
                return saved
        return self.evaluator.evaluate_replicas(self.state.params)

    def _replica_info(self, info: dict, i: int, per_replica: list[dict]) -> dict:
        """An exported replica's info: the single run it equals (train.seed, train.learning_rate) and its metrics."""
        seed, lr = self.grid.replicas[i]
        config = {**info["config"], "train": {**info["config"]["train"], "seed": seed, "learning_rate": lr, "seeds": None}}
        return {**info, "config": config, "replica": self.grid.tags(i), "metrics": per_replica[i]}

    # ------------------------------------------------------------------ what the loop calls

    def early_stop(self, step: int, metrics: dict) -> bool:
        """Count the evaluation at `step` for early stopping (see flaxft.early_stopping); whether to stop now.

        Every process computes the same metrics from the same (replicated) logits, so all stop at the same step."""
        t = self.config.train
        if t.early_stopping_patience is None:
            return False
        value = metric_value(self._checkpoint_metrics(metrics), self.best_metric)
        state = early_stopping.update(self.early_stopping, value, patience=t.early_stopping_patience,
                                      threshold=t.early_stopping_threshold,
                                      greater_is_better=not lower_is_better(self.best_metric))
        if state.stopped and step == self.total_steps:  # the run ends here anyway: that is not stopping early
            state = dataclasses.replace(state, stopped=False)
        self.early_stopping = state
        if state.stopped:
            log.info("early stopping at step %d: %s has not improved by more than %g on %.4f in %d evaluations",
                     step, self.best_metric, t.early_stopping_threshold, state.best, state.patience_counter)
        return state.stopped

    @property
    def stopped_early(self) -> bool:
        return self.early_stopping.stopped

    def _checkpoint_metrics(self, metrics: dict) -> dict:
        """The metrics that pick the best checkpoint: a grid's are the best learning rate's means over seeds."""
        return grids.checkpoint_metrics(metrics) if self.grid and metrics else metrics

    def evaluate_and_log(self, step: int, epoch: int, writer: RunWriter) -> dict:
        sigterm_hook("evaluation")  # (tests: a SIGTERM while the evaluation runs)
        metrics = self.evaluate()
        if metrics and self.grid:
            for i, m in enumerate(metrics["replicas"]):
                writer.write(step, {"epoch": epoch, **self.grid.tags(i), **{k: v for k, v in m.items()
                                                                            if k.startswith("eval_")}},
                             run=self.grid.name(i))
            writer.flush()
            log.info("eval @ step %d (epoch %d): best learning rate %g: %s", step, epoch, metrics["best_learning_rate"],
                     " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.endswith(("_mean", "_std"))))
        elif metrics:
            writer.write(step, {"epoch": epoch, **metrics})
            writer.flush()  # a remote output_dir gets the log and TensorBoard events now
            log.info("eval @ step %d (epoch %d): %s", step, epoch, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return metrics

    def save(self, step: int, metrics: dict) -> None:
        start = time.perf_counter()
        meta_extra = {}
        if self.grid and metrics:  # the best step is the best rate's mean; export picks the replica from these
            meta_extra = {"replica_metrics": [{k: v for k, v in r.items() if k.startswith("eval_")}
                                              for r in metrics["replicas"]]}
        metrics = self._checkpoint_metrics(metrics)
        if self.config.train.early_stopping_patience is not None:  # with the checkpoint: a resumed run stops alike
            meta_extra["early_stopping"] = self.early_stopping.to_meta()
        if self.checkpoints.save(step, self.state, {**step_meta(self.meta, step, metrics), **meta_extra}, metrics):
            seconds = time.perf_counter() - start
            self.checkpoint_seconds += seconds
            log.info("checkpoint at step %d %s(%.2f s blocking)", step, "with metrics " if metrics else "", seconds)
