"""Task metrics that work offline: GLUE configs plus `classification`, `binary` and `regression`.

    compute_metrics("mrpc", preds, labels)    -> {"accuracy": ..., "f1": ...} as plain floats (what training uses)
    load_metric("mrpc")                       -> an `evaluate.Metric` (the Hub-equivalent `glue` metric)

Both score with the same functions (`glue/scores.py`, scikit-learn and scipy). Kinds:
    GLUE: sst2 mnli mnli_mismatched mnli_matched cola stsb mrpc qqp qnli rte wnli hans
    custom: classification (accuracy, f1_macro), binary (accuracy, f1 of class 1, f1_macro),
            regression (pearson, spearmanr, mse)
    multi_label_scores(predictions, references) -> f1_micro, f1_macro, exact_match, hamming_loss
"""

from __future__ import annotations

import pathlib

import numpy as np

from flaxft.errors import FlaxftError
from flaxft.metrics.glue.scores import ALL_TASKS as KINDS
from flaxft.metrics.glue.scores import FLOAT_TASKS as FLOAT_KINDS
from flaxft.metrics.glue.scores import score

# Pass this folder to `evaluate.load(GLUE_METRIC_PATH, kind)` to load the same metric through `evaluate`.
GLUE_METRIC_PATH = str(pathlib.Path(__file__).resolve().parent / "glue")


def _known(kind: str) -> str:
    if kind not in KINDS:
        raise FlaxftError(f"unknown metric kind {kind!r}; use one of: {', '.join(KINDS)}")
    return kind


def lower_is_better(metric: str) -> bool:
    """Losses (eval_loss, eval_hamming_loss) are minimized, every other metric maximized."""
    return metric.endswith("loss")


def load_metric(kind: str):
    """The `evaluate.Metric` for `kind`, built from the shipped module: no Hub lookup, no network."""
    _known(kind)
    from flaxft.metrics.glue.glue import Glue

    # Instantiating the class directly skips `evaluate.load`'s copy into ~/.cache/huggingface/modules.
    # keep_in_memory: no Arrow cache files or file locks, so processes and instances never collide.
    return Glue(config_name=kind, keep_in_memory=True)


def compute_metrics(kind: str, predictions, references) -> dict[str, float]:
    """Score argmax'ed class ids (or floats for stsb/regression) against references; values are Python floats."""
    # float64 / int64, as the evaluate module's features make them (float32 would move correlations by ~1e-7)
    dtype = np.float64 if _known(kind) in FLOAT_KINDS else np.int64
    preds, refs = np.asarray(predictions), np.asarray(references)
    if kind in FLOAT_KINDS and preds.ndim == 2 and preds.shape[1] == 1:
        preds = preds[:, 0]  # regression heads output shape (n, 1)
    if preds.ndim != 1 or refs.ndim != 1 or len(preds) != len(refs):
        raise FlaxftError(
            f"metric {kind!r}: got predictions of shape {preds.shape} and references of shape {refs.shape}; "
            "pass two 1-D arrays of equal length (argmax the logits for classification)"
        )
    return score(kind, preds.astype(dtype), refs.astype(dtype))


def multi_label_scores(predictions, references) -> dict[str, float]:
    """Multi-label scores of [n, labels] 0/1 predictions against references, with scikit-learn's definitions:
    micro- and macro-averaged F1 (a label never true nor predicted scores 0, as sklearn's default), exact match
    (every label of the row right: sklearn's accuracy_score on label sets) and Hamming loss."""
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss

    preds, refs = np.asarray(predictions).astype(np.int64), np.asarray(references).astype(np.int64)
    if preds.ndim != 2 or preds.shape != refs.shape:
        raise FlaxftError(f"multi-label scores: got predictions of shape {preds.shape} and references of shape "
                          f"{refs.shape}; pass two [examples, labels] 0/1 arrays")
    return {"f1_micro": float(f1_score(refs, preds, average="micro", zero_division=0)),
            "f1_macro": float(f1_score(refs, preds, average="macro", zero_division=0)),
            "exact_match": float(accuracy_score(refs, preds)),
            "hamming_loss": float(hamming_loss(refs, preds))}
