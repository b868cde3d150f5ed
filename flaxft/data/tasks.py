"""GLUE task registry: Hub (`nyu-mll/glue`) column names and label order, plus the official TSV layout."""

from __future__ import annotations

import re
from dataclasses import dataclass

from flaxft.errors import FlaxftError

_DEV = (("validation", "dev.tsv"),)
_TEST = (("test", "test.tsv"),)


@dataclass(frozen=True)
class TaskSpec:
    """One GLUE task.

    `text_columns` and `label_names` follow the Hub dataset `nyu-mll/glue` (ClassLabel order), so a model
    trained from the local TSVs and one trained from the Hub use the same class ids.
    `label_names` is None for the regression task (STS-B).
    """

    name: str
    folder: str  # GLUE folder name, e.g. "SST-2"
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...] | None
    metric: str  # `evaluate.load("glue", metric)` config name
    tsv_text_columns: tuple[str, ...]  # TSV header names, same order as text_columns
    tsv_label_column: str  # absent from test files (unlabelled)
    eval_files: tuple[tuple[str, str], ...] = _DEV  # (split, TSV file name)
    test_files: tuple[tuple[str, str], ...] = _TEST
    train_file: str = "train.tsv"
    # CoLA's train/dev files have no header row (its test file has one).
    headerless_columns: tuple[str, ...] | None = None

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def eval_splits(self) -> tuple[str, ...]:
        return tuple(split for split, _ in self.eval_files)

    @property
    def test_splits(self) -> tuple[str, ...]:
        return tuple(split for split, _ in self.test_files)

    @property
    def split_files(self) -> dict[str, str]:
        """Split name -> TSV file name, train first."""
        return {"train": self.train_file, **dict(self.eval_files), **dict(self.test_files)}


_NLI2 = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            "cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"), "cola",
            ("sentence",), "label", headerless_columns=("source", "label", "mark", "sentence"),
        ),
        TaskSpec("sst2", "SST-2", ("sentence",), ("negative", "positive"), "sst2", ("sentence",), "label"),
        TaskSpec(
            "mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), "mrpc",
            ("#1 String", "#2 String"), "Quality",
        ),
        TaskSpec(
            "stsb", "STS-B", ("sentence1", "sentence2"), None, "stsb",
            ("sentence1", "sentence2"), "score",
        ),
        TaskSpec(
            "qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), "qqp",
            ("question1", "question2"), "is_duplicate",
        ),
        TaskSpec(
            "mnli", "MNLI", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), "mnli",
            ("sentence1", "sentence2"), "gold_label",
            eval_files=(("validation_matched", "dev_matched.tsv"), ("validation_mismatched", "dev_mismatched.tsv")),
            test_files=(("test_matched", "test_matched.tsv"), ("test_mismatched", "test_mismatched.tsv")),
        ),
        TaskSpec("qnli", "QNLI", ("question", "sentence"), _NLI2, "qnli", ("question", "sentence"), "label"),
        TaskSpec("rte", "RTE", ("sentence1", "sentence2"), _NLI2, "rte", ("sentence1", "sentence2"), "label"),
        TaskSpec(
            "wnli", "WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment"), "wnli",
            ("sentence1", "sentence2"), "label",
        ),
    )
}


def get_task(name: str) -> TaskSpec:
    """Look up a GLUE task by name, ignoring case, '-' and '_' ("SST-2", "sts_b", "MRPC" all work)."""
    key = re.sub(r"[-_\s]", "", str(name)).lower()
    if key not in GLUE_TASKS:
        raise FlaxftError(
            f"data.task: unknown GLUE task {name!r}; use one of {', '.join(GLUE_TASKS)} "
            "(or leave data.task unset and give data.train_file for your own data)"
        )
    return GLUE_TASKS[key]
