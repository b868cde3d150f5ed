"""GLUE scores (https://gluebenchmark.com/) computed with scikit-learn and scipy, plus `classification`,
`binary` and `regression` for custom tasks. Plain functions: flaxft scores evaluations with them directly,
and the `evaluate` module beside this file (glue.py) wraps them for `evaluate.load`.

This file must stay self-contained (library imports only): `evaluate.load` copies it beside glue.py.

    sst2, mnli, mnli_matched, mnli_mismatched, qnli, rte, wnli, hans  -> accuracy
    mrpc, qqp                                                           -> accuracy, f1 (positive class 1)
    cola                                                                -> matthews_correlation
    stsb                                                                -> pearson, spearmanr
    classification (any number of classes)                              -> accuracy, f1_macro
    binary (labels 0/1, 1 = positive)                                   -> accuracy, f1, f1_macro
    regression                                                          -> pearson, spearmanr, mse
"""

import numpy as np

ACCURACY_TASKS = ("sst2", "mnli", "mnli_mismatched", "mnli_matched", "qnli", "rte", "wnli", "hans")
ACC_F1_TASKS = ("mrpc", "qqp")
GLUE_TASKS = ACCURACY_TASKS + ACC_F1_TASKS + ("cola", "stsb")
CUSTOM_TASKS = ("classification", "binary", "regression")
ALL_TASKS = GLUE_TASKS + CUSTOM_TASKS
FLOAT_TASKS = ("stsb", "regression")


def _accuracy(preds, labels) -> float:
    return float((preds == labels).mean())


def _correlations(preds, labels) -> dict:
    from scipy.stats import pearsonr, spearmanr  # here: importing this module stays cheap

    return {"pearson": float(pearsonr(preds, labels)[0]), "spearmanr": float(spearmanr(preds, labels)[0])}


def score(task: str, predictions, references) -> dict:
    """The task's scores as Python floats (class ids, or floats for stsb/regression, in both arrays)."""
    from sklearn.metrics import f1_score, matthews_corrcoef

    predictions, references = np.asarray(predictions), np.asarray(references)
    if task in ACCURACY_TASKS:
        return {"accuracy": _accuracy(predictions, references)}
    if task in ACC_F1_TASKS:
        return {"accuracy": _accuracy(predictions, references), "f1": float(f1_score(references, predictions))}
    if task == "cola":
        return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
    if task == "stsb":
        return _correlations(predictions, references)
    if task == "regression":
        return {**_correlations(predictions, references), "mse": float(np.mean((predictions - references) ** 2))}
    out = {"accuracy": _accuracy(predictions, references)}
    if task == "binary":
        out["f1"] = float(f1_score(references, predictions))
    out["f1_macro"] = float(f1_score(references, predictions, average="macro"))
    return out
