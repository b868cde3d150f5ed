"""The training objective: what a run's loss is, per example, for its problem type.

    single_label_classification   softmax cross-entropy, as torch.nn.CrossEntropyLoss(weight=class_weights,
                                  label_smoothing=label_smoothing)
    regression                    squared error (MSELoss)
    multi_label_classification    sigmoid binary cross-entropy averaged over the classes (BCEWithLogitsLoss)

These are transformers' *ForSequenceClassification losses for its three `problem_type`s. torch reduces a
class-weighted loss by sum_i loss_i / sum_i weight[label_i], so `terms` returns each example's numerator and
denominator: any batch (micro-batches, packed slots, filler rows of weight 0) then reduces exactly as torch does.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxft.errors import FlaxftError

SINGLE_LABEL, REGRESSION, MULTI_LABEL = "single_label_classification", "regression", "multi_label_classification"
PROBLEM_TYPES = (SINGLE_LABEL, REGRESSION, MULTI_LABEL)


@dataclasses.dataclass(frozen=True)
class Objective:
    problem_type: str = SINGLE_LABEL
    num_labels: int = 2
    label_smoothing: float = 0.0
    class_weights: Optional[tuple[float, ...]] = None  # one per class (single-label classification only)

    @property
    def is_regression(self) -> bool:
        return self.problem_type == REGRESSION

    @property
    def is_multi_label(self) -> bool:
        return self.problem_type == MULTI_LABEL

    @property
    def label_dtype(self):
        return np.int32 if self.problem_type == SINGLE_LABEL else np.float32

    @property
    def label_shape(self) -> tuple[int, ...]:
        """Trailing shape of one example's label: a multi-hot vector for multi-label, else a scalar."""
        return (self.num_labels,) if self.is_multi_label else ()

    def terms(self, logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(numerator, denominator) per example, for labels [B] (or [B, K] packed; [..., C] multi-hot) against
        logits [..., num_labels]: the loss of a set of examples is sum(numerators) / sum(denominators)."""
        logits = logits.astype(jnp.float32)
        if self.is_regression:
            loss = jnp.square(logits[..., 0] - labels)
            return loss, jnp.ones_like(loss)
        if self.is_multi_label:
            loss = optax.sigmoid_binary_cross_entropy(logits, labels).mean(-1)
            return loss, jnp.ones_like(loss)
        log_probs = jax.nn.log_softmax(logits)
        weight = self.denominators(labels)
        nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0] * weight
        if not self.label_smoothing:
            return nll, weight
        # torch's smoothing term: -sum_c w_c log p_c / C, reduced over the same sum_i w[y_i]
        table = jnp.ones(self.num_labels) if self.class_weights is None else jnp.asarray(self.class_weights)
        smooth = -(log_probs * table).sum(-1) / self.num_labels
        return (1 - self.label_smoothing) * nll + self.label_smoothing * smooth, weight

    def denominators(self, labels: jax.Array) -> jax.Array:
        """Each example's share of the loss's denominator: its class weight (1 without class weights)."""
        if self.class_weights is None or self.problem_type != SINGLE_LABEL:
            return jnp.ones(labels.shape[:labels.ndim - len(self.label_shape)], jnp.float32)
        return jnp.asarray(self.class_weights, jnp.float32)[labels]


def balanced_class_weights(labels: np.ndarray, names: tuple[str, ...]) -> tuple[float, ...]:
    """scikit-learn's compute_class_weight("balanced"): n_samples / (n_classes * count of each class)."""
    counts = np.bincount(labels, minlength=len(names))
    if not counts.all():
        missing = names[int(np.argmin(counts))]
        raise FlaxftError(f"train.class_weights=balanced: class {missing!r} has no training examples; give "
                          "train.class_weights as a list with one weight per class")
    return tuple(float(w) for w in len(labels) / (len(names) * counts))
