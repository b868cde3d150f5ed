"""The training objective against PyTorch's losses: label smoothing, class weights (and torch's weighted mean
over any batch layout), multi-label binary cross-entropy; balanced weights against scikit-learn; the config's
contradictions as one-line errors."""

import numpy as np
import pytest

import jax.numpy as jnp

from flaxft.config import load_config
from flaxft.errors import FlaxftError
from flaxft.losses import MULTI_LABEL, REGRESSION, Objective, balanced_class_weights

from tests.conftest import ROOT

torch = pytest.importorskip("torch")


def batch_loss(objective: Objective, logits, labels, weights):
    """The train step's reduction: sum(numerators * weights) / sum(denominators * weights)."""
    num, den = objective.terms(jnp.asarray(logits), jnp.asarray(labels))
    return float(jnp.sum(num * weights) / jnp.sum(den * weights))


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("class_weights", [None, (0.5, 2.0, 1.25, 4.0)])
def test_cross_entropy_matches_torch(smoothing, class_weights):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 4)).astype(np.float32) * 3
    labels = rng.integers(0, 4, size=12).astype(np.int32)
    objective = Objective(num_labels=4, label_smoothing=smoothing, class_weights=class_weights)
    weight = None if class_weights is None else torch.tensor(class_weights)
    want = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)(
        torch.as_tensor(logits), torch.as_tensor(labels, dtype=torch.long)).item()
    assert batch_loss(objective, logits, labels, np.ones(12, np.float32)) == pytest.approx(want, rel=1e-5)

    # packed slots [rows, K] with filler slots of weight 0 reduce exactly as the real examples alone
    packed_logits = np.zeros((4, 4, 4), np.float32)
    packed_labels = np.zeros((4, 4), np.int32)
    weights = np.zeros((4, 4), np.float32)
    slots = [(r, k) for r in range(4) for k in range(3)]
    for i, (r, k) in enumerate(slots):
        packed_logits[r, k], packed_labels[r, k], weights[r, k] = logits[i], labels[i], 1.0
    packed_logits[:, 3] = 50.0  # filler slots: anything
    assert batch_loss(objective, packed_logits, packed_labels, weights) == pytest.approx(want, rel=1e-5)


def test_multi_label_and_regression_losses_match_torch():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(10, 5)).astype(np.float32) * 2
    labels = (rng.random((10, 5)) < 0.4).astype(np.float32)
    want = torch.nn.BCEWithLogitsLoss()(torch.as_tensor(logits), torch.as_tensor(labels)).item()
    objective = Objective(MULTI_LABEL, num_labels=5)
    assert objective.label_shape == (5,) and objective.label_dtype == np.float32
    assert batch_loss(objective, logits, labels, np.ones(10, np.float32)) == pytest.approx(want, rel=1e-5)

    targets = rng.normal(size=10).astype(np.float32)
    want = torch.nn.MSELoss()(torch.as_tensor(logits[:, :1]).squeeze(-1), torch.as_tensor(targets)).item()
    assert batch_loss(Objective(REGRESSION, 1), logits[:, :1], targets, np.ones(10, np.float32)) == \
        pytest.approx(want, rel=1e-5)


def test_balanced_class_weights_match_scikit_learn():
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([0, 0, 0, 0, 1, 2, 2, 0, 1, 0])
    want = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose(balanced_class_weights(labels, ("a", "b", "c")), want, rtol=1e-12)
    with pytest.raises(FlaxftError, match="class 'c' has no training examples"):
        balanced_class_weights(np.array([0, 1, 1]), ("a", "b", "c"))


@pytest.mark.parametrize("overrides, message", [
    (["data.problem_type=regression", "train.class_weights=balanced"], "class_weights applies to single-label"),
    (["data.problem_type=multi_label", "train.label_smoothing=0.1"], "label_smoothing applies to single-label"),
    (["train.label_smoothing=1.0"], "label_smoothing=1.0 must be in"),
    (["train.class_weights=[1.0,-2.0]"], "list of positive weights"),
    (["train.class_weights=heavy"], "balanced or a list"),
    (["data.problem_type=multilabel"], "data.problem_type='multilabel' is not known"),
    (["predict.threshold=1.5"], "predict.threshold=1.5 must be between 0 and 1"),
])
def test_contradictions_are_one_line_errors(overrides, message):
    with pytest.raises(FlaxftError, match=message) as e:
        load_config(ROOT / "configs/custom.yaml", ["data.train_file=x.csv", *overrides])
    assert "\n" not in str(e.value)


def test_class_weighted_smoothed_run(tiny_model, toy_data, tmp_path):
    """A run with balanced class weights and label smoothing: the weights come from the training labels as
    scikit-learn computes them, and the summary says that eval_loss is class-weighted."""
    import csv
    import json

    from sklearn.utils.class_weight import compute_class_weight

    from flaxft.cli import run_main
    from flaxft.train import main as train_main
    from tests.conftest import toy_args

    out = tmp_path / "run"
    assert run_main(train_main, toy_args(tiny_model, toy_data, out, "train.max_steps=2", "train.class_weights=balanced",
                                         "train.label_smoothing=0.1", "data.bucket_boundaries=[48]")) == 0
    with open(toy_data / "train.csv", encoding="utf-8") as f:
        labels = np.array([["neg", "pos"].index(r["label"]) for r in csv.DictReader(f)])
    summary = json.loads((out / "summary.json").read_text())
    np.testing.assert_allclose(summary["class_weights"], compute_class_weight("balanced", classes=np.arange(2), y=labels),
                               rtol=1e-6)
    assert summary["eval_loss_class_weighted"] is True and summary["label_smoothing"] == 0.1
    assert np.isfinite(summary["eval_loss"])
