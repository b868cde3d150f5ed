"""The label codec: what a run's labels are, and how a table cell becomes a label.

Training infers it from the training labels (all integers: class ids 0..max; all numbers, not all
integers: regression; otherwise the sorted distinct strings are the class names), unless
`data.problem_type` says. Multi-label: a cell holds a list of labels (JSON, JSONL, Parquet) or label names
joined by `data.label_separator` (CSV, TSV); the classes are every name seen in training, sorted, and a
label is a multi-hot vector. A GLUE task, or a trained model in flaxft.predict, names its classes up front;
a cell may then hold a name or a class id. Every split of every source is encoded through it, into the
datasets label feature it gives (`ClassLabel`, float32 for regression, a float32 vector for multi-label);
unlabelled rows are -1 (NaN for regression and multi-label).

A missing label is an empty cell, None, NaN or the text "nan". Training labels of mixed kinds (numbers and
names, with data.problem_type unset) take the kind most of them have; the others are bad rows. A label with
spaces around it is read without them, with a warning (flaxft.data.bad_rows has what happens to bad rows).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Optional

import datasets

from flaxft.data.bad_rows import BAD_LABEL, MISSING_LABEL, UNKNOWN_LABEL, BadRows, shown
from flaxft.errors import FlaxftError

log = logging.getLogger("flaxft")
from flaxft.losses import MULTI_LABEL, REGRESSION, SINGLE_LABEL

UNLABELLED = -1


def is_missing(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "nan")) or (
        isinstance(value, float) and math.isnan(value))


class _BadLabel(Exception):
    """One row's label cannot be used: why (a flaxft.data.bad_rows reason), what is wrong, what to do."""

    def __init__(self, reason: str, problem: str, fix: str):
        super().__init__(problem)
        self.reason, self.problem, self.fix = reason, problem, fix


def as_float(value) -> Optional[float]:
    """Finite float value of a number or numeric string; None otherwise."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def as_int(value) -> Optional[int]:
    """Integer value of an int, integral float or integer string; None otherwise."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            value = as_float(value)
    if isinstance(value, (bool, int)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


@dataclasses.dataclass(frozen=True)
class LabelCodec:
    kind: str                                # "float" (regression), "int" (class ids), "str" (class names),
    names: Optional[tuple[str, ...]] = None  # "named": fixed class names, given as names or ids; "multi": label sets
    separator: str = ","                     # "multi": joins label names in a text cell

    @classmethod
    def named(cls, names: Optional[tuple[str, ...]], problem_type: str = SINGLE_LABEL,
              separator: str = ",") -> "LabelCodec":
        """The classes of a GLUE task or a trained model (None: regression)."""
        if problem_type == MULTI_LABEL:
            return cls("multi", tuple(names), separator)
        return cls("float") if names is None else cls("named", tuple(names))

    @classmethod
    def infer(cls, values, source: str, problem_type: Optional[str] = None, separator: str = ",") -> "LabelCodec":
        """The codec the training labels imply (see the module docstring); `problem_type` (data.problem_type)
        overrides the guess."""
        present = _distinct(v for v in values if not is_missing(v))  # the guess depends on the distinct values only
        if not present:
            raise FlaxftError(f"{source}: the label column is empty; fill in the labels or set data.label_column")
        lists = any(isinstance(v, (list, tuple)) for v in present)
        joined = any(isinstance(v, str) and separator in v for v in present)
        if problem_type == MULTI_LABEL or (problem_type is None and (lists or joined)):
            names = sorted({name for v in present for name in _label_set(v, separator)})
            if len(names) < 2:
                raise FlaxftError(f"{source}: the training label sets hold {len(names)} distinct label(s); "
                                  "multi-label classification needs at least two")
            return cls("multi", tuple(names), separator)
        if lists:
            raise FlaxftError(f"{source}: labels are lists but data.problem_type={problem_type}; "
                              "set data.problem_type=multi_label (or null to detect it)")
        numeric = [as_float(v) is not None for v in present]
        if problem_type is None and 0 < sum(numeric) < len(present):  # the kind most labels have; the rest: bad rows
            majority = 2 * sum(numeric) > len(present)
            present = [v for v, n in zip(present, numeric) if n == majority]
        if problem_type == REGRESSION:
            bad = next((v for v in present if as_float(v) is None), None)
            if bad is not None:
                raise FlaxftError(f"{source}: label {bad!r} is not a number but data.problem_type=regression; "
                                  "fix the labels or unset data.problem_type")
            return cls("float")
        ids = [as_int(v) for v in present]
        if all(i is not None for i in ids):
            if min(ids) < 0:
                raise FlaxftError(f"{source}: label {min(ids)} is negative; class ids must be 0, 1, 2, ...")
            codec = cls("int", tuple(str(i) for i in range(max(ids) + 1)))
        elif all(as_float(v) is not None for v in present) and problem_type != SINGLE_LABEL:
            return cls("float")
        else:
            codec = cls("str", tuple(sorted({str(v).strip() for v in present})))
        if len(codec.names) < 2:
            raise FlaxftError(f"{source}: all training labels are {codec.names[0]!r}; a classifier needs at least "
                              "two classes")
        return codec

    @property
    def is_regression(self) -> bool:
        return self.kind == "float"

    @property
    def problem_type(self) -> str:
        return REGRESSION if self.kind == "float" else MULTI_LABEL if self.kind == "multi" else SINGLE_LABEL

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        names = self.names or tuple(f"LABEL_{i}" for i in range(self.num_labels))
        return dict(enumerate(names))

    @property
    def feature(self):
        """The datasets feature of an encoded label column."""
        if self.kind == "multi":
            return datasets.List(datasets.Value("float32"), length=len(self.names))
        return datasets.Value("float32") if self.is_regression else datasets.ClassLabel(names=list(self.names))

    def encode(self, values, source: str, *, unlabelled_ok: bool, bad: Optional[BadRows] = None) -> list:
        """Class ids (or floats) for one split; where a test split lacks a label, -1 (NaN for regression).
        A row's bad label goes to `bad` (an error unless bad rows are skipped; a skipped row's label is None).
        Each distinct label is encoded (and checked) once: a million rows hold a few."""
        bad = bad or BadRows(source)
        codes: dict = {}  # (type, value) -> its code, or the _BadLabel it raised
        labels, padded = [], []
        for row, value in enumerate(values, 1):
            if row in bad.dropped:  # dropped already (its fields could not be read)
                labels.append(None)
                continue
            key = (type(value), value) if isinstance(value, (str, int, float)) and not is_missing(value) else None
            code = codes.get(key) if key is not None else None
            if code is None:
                try:
                    code = self._one(value, unlabelled_ok)
                except _BadLabel as e:
                    code = e
                if key is not None:
                    codes[key] = code
            if isinstance(code, _BadLabel):
                bad.found(row, code.reason, code.problem, code.fix)
                labels.append(None)
                continue
            if self.kind != "multi" and isinstance(value, str) and value != value.strip() and value.strip():
                padded.append(row)
            labels.append(code)
        if padded:
            log.warning("%s: %d label(s) have spaces around them, read without (the first: row %d); strip them in "
                        "the file to silence this", source, len(padded), padded[0])
        return labels

    def _one(self, value, unlabelled_ok: bool):
        if is_missing(value):
            if not unlabelled_ok:
                raise _BadLabel(MISSING_LABEL, f"no label ({shown(value)})", "fill it in or drop the row")
            return [math.nan] * len(self.names) if self.kind == "multi" else math.nan if self.is_regression \
                else UNLABELLED
        if self.kind == "multi":
            hot = [0.0] * len(self.names)
            for name in _label_set(value, self.separator):
                if name not in self.names:
                    raise _BadLabel(UNKNOWN_LABEL, f"label {name!r} never appears in the training labels "
                                    f"({', '.join(self.names)})", "fix the label or add training examples of it")
                hot[self.names.index(name)] = 1.0
            return hot
        if self.is_regression:
            number = as_float(value)
            if number is None:
                raise _BadLabel(BAD_LABEL, f"label {shown(value)} is not a number like the training labels",
                                "fix that row")
            return number
        name = str(value).strip()
        if self.kind != "int" and name in self.names:
            return self.names.index(name)
        if self.kind == "str":
            if as_float(value) is not None:
                raise _BadLabel(BAD_LABEL, f"label {name!r} is a number and the training labels are names "
                                f"({', '.join(self.names)})", "fix the label, or set data.problem_type=single_label "
                                "to take every label as a class name")
            raise _BadLabel(UNKNOWN_LABEL, f"label {name!r} never appears in the training labels "
                            f"({', '.join(self.names)})", "fix the label or add training examples of it")
        class_id = as_int(value)
        if self.kind == "named":
            if class_id is None or not 0 <= class_id < len(self.names):
                raise _BadLabel(BAD_LABEL, f"label {shown(value)} is not one of {', '.join(self.names)} "
                                f"or 0..{len(self.names) - 1}", "fix that row")
            return class_id
        if class_id is None:
            raise _BadLabel(BAD_LABEL, f"label {shown(value)} is not an integer class id like the training labels",
                            "fix the label, or set data.problem_type=single_label to take every label as a class name")
        if class_id == UNLABELLED and unlabelled_ok:
            return UNLABELLED
        if class_id < 0:
            raise _BadLabel(BAD_LABEL, f"label {class_id} is negative", "class ids must be 0, 1, 2, ...")
        if class_id >= len(self.names):
            raise _BadLabel(UNKNOWN_LABEL, f"label {class_id} never appears in the training labels "
                            f"(0..{len(self.names) - 1})", "fix the label or add training examples of it")
        return class_id


def _label_set(value, separator: str) -> list[str]:
    """The label names of one multi-label cell: a list, or names joined by `separator` (blanks dropped)."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(separator)
    return [name for name in (str(v).strip() for v in items) if name]


def _distinct(values) -> list:
    """Each value once, in the order of first appearance (unhashable ones, label lists, are all kept)."""
    seen, out = set(), []
    for v in values:
        key = (type(v), v) if isinstance(v, (str, int, float)) else None
        if key is None or key not in seen:
            seen.add(key)
            out.append(v)
    return out
