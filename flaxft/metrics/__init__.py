"""Task metrics that work offline: GLUE configs plus `classification`, `binary` and `regression`.

    load_metric("mrpc")                       -> an `evaluate.Metric` (the Hub-equivalent `glue` metric)
    compute_metrics("mrpc", preds, labels)    -> {"accuracy": ..., "f1": ...} as plain floats

Kinds (see `glue/glue.py` for what each returns):
    GLUE: sst2 mnli mnli_mismatched mnli_matched cola stsb mrpc qqp qnli rte wnli hans
    custom: classification (accuracy, f1_macro), binary (accuracy, f1 of class 1, f1_macro),
            regression (pearson, spearmanr, mse)
"""

from __future__ import annotations

import pathlib

import numpy as np

from flaxft.errors import FlaxftError

# Pass this folder to `evaluate.load(GLUE_METRIC_PATH, kind)` to load the same metric through `evaluate`.
GLUE_METRIC_PATH = str(pathlib.Path(__file__).resolve().parent / "glue")
# Same as glue.ALL_TASKS (a test checks); repeated so that importing this module does not import `evaluate`,
# which pulls in transformers and takes seconds.
KINDS = (
    "sst2", "mnli", "mnli_mismatched", "mnli_matched", "qnli", "rte", "wnli", "hans", "mrpc", "qqp", "cola", "stsb",
    "classification", "binary", "regression",
)  # fmt: skip
FLOAT_KINDS = ("stsb", "regression")


def load_metric(kind: str):
    """The `evaluate.Metric` for `kind`, built from the shipped module: no Hub lookup, no network."""
    if kind not in KINDS:
        raise FlaxftError(f"unknown metric kind {kind!r}; use one of: {', '.join(KINDS)}")
    from flaxft.metrics.glue.glue import Glue

    # Instantiating the class directly skips `evaluate.load`'s copy into ~/.cache/huggingface/modules.
    # keep_in_memory: no Arrow cache files or file locks, so processes and instances never collide.
    return Glue(config_name=kind, keep_in_memory=True)


def compute_metrics(kind: str, predictions, references) -> dict[str, float]:
    """Score argmax'ed class ids (or floats for stsb/regression) against references; values are Python floats."""
    metric = load_metric(kind)
    preds, refs = np.asarray(predictions), np.asarray(references)
    if kind in FLOAT_KINDS and preds.ndim == 2 and preds.shape[1] == 1:
        preds = preds[:, 0]  # regression heads output shape (n, 1)
    if preds.ndim != 1 or refs.ndim != 1 or len(preds) != len(refs):
        raise FlaxftError(
            f"metric {kind!r}: got predictions of shape {preds.shape} and references of shape {refs.shape}; "
            "pass two 1-D arrays of equal length (argmax the logits for classification)"
        )
    return {name: float(value) for name, value in metric.compute(predictions=preds, references=refs).items()}
