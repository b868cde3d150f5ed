"""Offline GLUE metric for `evaluate`, equivalent to the Hub's `glue` metric, plus configs for custom tasks.

Load it without the Hub, either way:
    evaluate.load("<path>/flaxft/metrics/glue", "mrpc", keep_in_memory=True)
    flaxft.metrics.load_metric("mrpc")   # instantiates `Glue` directly

Besides library imports this file imports only its neighbour scores.py (the scoring itself, which flaxft
also calls directly): `evaluate.load` copies both into its modules cache and imports the copy. It must
define exactly one `evaluate.EvaluationModule` subclass at module level: `evaluate` picks the first one it
finds in the module, so never `from evaluate import Metric` here.

Configs and outputs (all plain Python floats):
    sst2, mnli, mnli_matched, mnli_mismatched, qnli, rte, wnli, hans  -> accuracy
    mrpc, qqp                                                           -> accuracy, f1 (positive class 1)
    cola                                                                -> matthews_correlation
    stsb                                                                -> pearson, spearmanr
    classification (any number of classes)                              -> accuracy, f1_macro
    binary (labels 0/1, 1 = positive)                                   -> accuracy, f1, f1_macro
    regression                                                          -> pearson, spearmanr, mse

Differences from the Hub version: results are Python floats (the Hub returns a numpy float for cola), and
stsb/regression values stay float64 (the Hub stores float32 and its numpy formatter returns float32, which
shifts correlations by ~1e-7).
"""

import datasets

import evaluate

from .scores import ALL_TASKS, FLOAT_TASKS, score

_CITATION = """\
@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  note={In the Proceedings of ICLR.},
  year={2019}
}
"""

_DESCRIPTION = """\
GLUE metrics (https://gluebenchmark.com/) computed with scikit-learn and scipy, plus `classification`,
`binary` and `regression` configs for custom tasks.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: class ids (already argmax'ed) or, for stsb/regression, floats.
    references: gold class ids or floats, same length as predictions.
Returns, depending on the config: accuracy, f1 (binary F1 of class 1), f1_macro (unweighted mean of per-class
F1 over the labels present in predictions or references), matthews_correlation, pearson, spearmanr, mse.
Example:
    >>> metric = evaluate.load("flaxft/metrics/glue", "mrpc", keep_in_memory=True)
    >>> metric.compute(predictions=[0, 1], references=[0, 1])
    {'accuracy': 1.0, 'f1': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Glue(evaluate.Metric):
    def _info(self):
        if self.config_name not in ALL_TASKS:
            raise KeyError(f"unknown config {self.config_name!r}; choose one of {list(ALL_TASKS)}")
        dtype = "float64" if self.config_name in FLOAT_TASKS else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}),
            codebase_urls=[],
            reference_urls=[],
            # Python lists, not "numpy": the datasets numpy formatter downcasts floats to float32.
            format=None,
        )

    def _compute(self, predictions, references):
        return score(self.config_name, predictions, references)
