"""Evaluation and prediction: logits for every example of a split, each exactly once, in the run's length
buckets; GLUE metrics (plus a compute_metrics hook); and a Predictor for a trained model on new data."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import numpy as np
import scipy.special
from flax import traverse_util

from flaxft import metrics as glue_metrics
from flaxft.checkpoint import Checkpoints
from flaxft.compiled import CompiledSteps
from flaxft.config import Config
from flaxft.data import buckets
from flaxft.data.pipeline import device_batches
from flaxft.data.sources import RawData
from flaxft.errors import FlaxftError
from flaxft.losses import MULTI_LABEL, REGRESSION
from flaxft.model import load_pretrained, param_shapes
from flaxft.resume import newest_intact
from flaxft.run_setup import RunSetup, set_up_run


@dataclasses.dataclass
class EvalPrediction:
    """What a compute_metrics hook receives (same fields as transformers.EvalPrediction)."""
    predictions: np.ndarray   # logits [n, num_labels]
    label_ids: np.ndarray


@dataclasses.dataclass
class PredictionOutput:
    predictions: np.ndarray    # class ids, regression values, or multi-label [n, num_labels] booleans
    logits: np.ndarray         # [n, num_labels]
    probabilities: Optional[np.ndarray]  # softmax of logits (sigmoid for multi-label; None for regression)
    label_ids: Optional[np.ndarray]
    metrics: dict[str, float]


class Evaluator:
    def __init__(self, setup: RunSetup, compiled: CompiledSteps,
                 compute_metrics: Optional[Callable[[EvalPrediction], dict]] = None):
        self.setup, self.compiled, self.compute_metrics = setup, compiled, compute_metrics

    def outputs(self, params, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Logits [n, num_labels] and loss terms [n, 2] (numerator, denominator: flaxft.losses) for every example
        of split `name`, in order (a grid's params: [replicas, n, ...])."""
        split, s = self.setup.data.splits[name], self.setup
        plan = buckets.plan_batches(split.lengths, s.data.boundaries, s.eval_batch_size, shuffle=False)
        batches = device_batches(split, plan, self.compiled.eval_batch_sharding, s.config.train.prefetch)
        outs = [self.compiled.eval(params, b.num_rows, b.length)(params, batch) for b, batch in zip(plan, batches)]
        lead = (self.compiled.grid.size,) if self.compiled.grid else ()
        logits = np.zeros(lead + (len(split), s.data.raw.num_labels), np.float32)
        losses = np.zeros(lead + (len(split), 2), np.float32)
        for b, out in zip(plan, jax.device_get(outs)):  # one host transfer for the whole split
            real = b.indices != buckets.FILLER
            logits[..., b.indices[real], :] = out["logits"][..., real, :]
            losses[..., b.indices[real], :] = np.stack([out["loss"], out["loss_weight"]], -1)[..., real, :]
        return logits, losses

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        """Class ids, regression values, or multi-label booleans at predict.threshold."""
        problem = self.setup.objective.problem_type
        if problem == MULTI_LABEL:
            return scipy.special.expit(logits) >= self.setup.config.predict.threshold
        return logits[..., 0] if problem == REGRESSION else logits.argmax(-1)

    def scores(self, logits: np.ndarray, losses: np.ndarray, labels: np.ndarray, prefix: str,
               suffix: str = "") -> dict[str, float]:
        raw = self.setup.data.raw
        preds = self.predictions(logits)
        loss = float(losses[:, 0].sum(dtype=np.float64) / max(losses[:, 1].sum(dtype=np.float64), 1e-12))
        if raw.problem_type == MULTI_LABEL:
            values = {"loss": loss, **glue_metrics.multi_label_scores(preds, labels)}
        else:
            if raw.task:
                kind = raw.task.metric
            else:  # custom data: the key set depends on the label set, never on what one eval split holds
                kind = "regression" if raw.is_regression else "binary" if raw.num_labels == 2 else "classification"
            values = {"loss": loss, **glue_metrics.compute_metrics(kind, preds, labels)}
        if self.compute_metrics is not None:
            values.update(self.compute_metrics(EvalPrediction(predictions=logits, label_ids=labels)))
        return {f"{prefix}{k}{suffix}": float(v) for k, v in values.items()}

    def evaluate(self, params, split: Optional[str] = None) -> dict[str, float]:
        """Metrics named eval_<metric> on the task's evaluation splits (or on `split`).

        Extra evaluation splits get a suffix, as in run_glue: MNLI mismatched gives eval_accuracy_mm.
        """
        if self.compiled.grid:
            raise RuntimeError("internal error: a grid has one result per replica (evaluate_replicas)")
        return self.evaluate_replicas(params, split)[0]

    def evaluate_replicas(self, params, split: Optional[str] = None) -> list[dict[str, float]]:
        """evaluate() for each replica of a grid (a single run: a list of one)."""
        splits = self.setup.data.splits
        names = [split] if split else [s for s in self.setup.data.raw.eval_splits if s in splits]
        out = [{} for _ in range(self.compiled.grid.size if self.compiled.grid else 1)]
        for i, name in enumerate(names):
            if name not in splits:
                raise FlaxftError(f"no '{name}' split to evaluate; available: {sorted(splits)}")
            if not splits[name].has_labels:
                raise FlaxftError(f"split '{name}' has no labels to evaluate; use predict() instead")
            suffix = "" if i == 0 else "_" + ("mm" if name.endswith("mismatched") else name)
            logits, losses = self.outputs(params, name)
            if not self.compiled.grid:
                logits, losses = logits[None], losses[None]
            for metrics, lg, ls in zip(out, logits, losses):
                metrics.update(self.scores(lg, ls, splits[name].labels, "eval_", suffix))
        return out

    def predict(self, params, split: str = "test") -> PredictionOutput:
        """Predictions for a split; metrics too when it has labels."""
        splits, raw = self.setup.data.splits, self.setup.data.raw
        if split not in splits:
            raise FlaxftError(f"no '{split}' split to predict; available: {sorted(splits)}")
        logits, losses = self.outputs(params, split)
        probs = None if raw.is_regression else scipy.special.expit(logits) if raw.problem_type == MULTI_LABEL \
            else scipy.special.softmax(logits, axis=-1)
        preds = self.predictions(logits)
        labels = splits[split].labels if splits[split].has_labels else None
        metrics = self.scores(logits, losses, labels, "test_") if labels is not None else {}
        return PredictionOutput(preds, logits, probs, labels, metrics)


class Predictor:
    """A trained model on new data: a run's checkpoint (`params_from=(Checkpoints, steps)`: the first of `steps`
    that can be read, see flaxft.resume.newest_intact; `step` says which) or an exported Hugging Face folder
    (config.model.name_or_path). No training split, no optimizer; the trained buckets (plus one more only if the
    inputs are longer), one ahead-of-time compilation per bucket at most."""

    def __init__(self, config: Config, raw: RawData, *, boundaries: Optional[list[int]] = None,
                 params_from: Optional[tuple[Checkpoints, list[int]]] = None):
        self.setup = s = set_up_run(config, raw, trained_boundaries=boundaries, training=False)
        self.compiled = CompiledSteps(s.mesh, s.module, s.family.partition_rules, objective=s.objective,
                                      token_type_ids=s.family.token_type_ids)
        self.step: Optional[int] = None  # the checkpoint's step, when params come from a run's checkpoints
        if params_from is None:
            _, params = load_pretrained(s.model_dir, raw.num_labels, rng=jax.random.key(config.train.seed))
            self.params = self.compiled.place(params, seed=config.train.seed).params
        else:
            shapes = traverse_util.unflatten_dict(param_shapes(s.model_config, raw.num_labels))
            checkpoints, steps = params_from
            target = self.compiled.param_target(shapes)
            self.step, self.params = newest_intact(checkpoints, steps, lambda step: checkpoints.restore_params(
                step, target))
        self.evaluator = Evaluator(s, self.compiled)

    @property
    def boundaries(self) -> list[int]:
        return self.setup.data.boundaries

    def predict(self, split: str) -> PredictionOutput:
        return self.evaluator.predict(self.params, split)
