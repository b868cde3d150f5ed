"""Where a run's examples come from, as `datasets.Dataset` splits that all look alike.

Sources, chosen from the `data` config section (or passed in):
1. GLUE task + local folder (`data.task=mrpc data.path=../shared/data/glue/MRPC`): the official GLUE TSVs,
   parsed like the original Hugging Face GLUE loader (tab-separated, no quoting, UTF-8 with optional BOM).
2. GLUE task, no path (or `data.path=<Hub dataset id>`): `datasets.load_dataset(data.hub_dataset, task)`.
3. Your own files (`data.train_file`, optional `data.validation_file`, `data.test_file`).
4. Your own `datasets.Dataset`s in memory (`from_datasets`), or a file to predict on (`from_file`).

Every source reaches tokenization through `labelled_split`: the text column(s) as strings and a column
named "label" encoded by the run's LabelCodec (flaxft.data.labels): a ClassLabel, or float32 for regression.
Bad rows (flaxft.data.bad_rows) stop the run, or with `data.skip_bad_rows` are dropped and counted.
"""

from __future__ import annotations

import csv
import dataclasses
from typing import Optional

import datasets
import huggingface_hub
import numpy as np
import pyarrow.compute as pc
from datasets.fingerprint import generate_random_fingerprint
from etils import epath

from flaxft import storage
from flaxft.data.bad_rows import EMPTY_TEXT, BadRows, shown
from flaxft.data.labels import LabelCodec
from flaxft.losses import MULTI_LABEL, REGRESSION, SINGLE_LABEL

# data.problem_type's values (null: inferred from the training labels)
PROBLEM_TYPE_KEYS = {"single_label": SINGLE_LABEL, "multi_label": MULTI_LABEL, "regression": REGRESSION}
from flaxft.data.tables import read_delimited, read_file, string_table
from flaxft.data.tasks import TaskSpec, get_task
from flaxft.errors import FlaxftError
from flaxft.hub import hub_reachable, is_hub_id

# Text columns used for custom files when data.text_columns is not set; the first fully present set wins.
DEFAULT_TEXT_COLUMNS = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"),
                        ("question", "sentence"), ("sentence",), ("text",))


@dataclasses.dataclass
class RawData:
    """Loaded splits plus what the model head and metrics need to know about the labels."""

    splits: dict[str, datasets.Dataset]
    text_columns: tuple[str, ...]
    labels: LabelCodec
    task: Optional[TaskSpec]
    eval_splits: tuple[str, ...]
    test_splits: tuple[str, ...]
    source: str
    skipped_rows: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # split -> reason -> rows

    label_names = property(lambda self: self.labels.names)  # class names in id order; None for regression
    is_regression = property(lambda self: self.labels.is_regression)
    problem_type = property(lambda self: self.labels.problem_type)  # flaxft.losses.PROBLEM_TYPES
    num_labels = property(lambda self: self.labels.num_labels)
    id2label = property(lambda self: self.labels.id2label)
    label2id = property(lambda self: {name: i for i, name in self.labels.id2label.items()})


def labelled_split(table: datasets.Dataset, text_columns, label_column: Optional[str], codec: LabelCodec,
                   source: str, *, unlabelled_ok: bool, bad: Optional[BadRows] = None) -> datasets.Dataset:
    """`table` as tokenization reads it: the text columns as strings and `label` encoded by `codec` (a missing
    label column means an unlabelled split). Its bad rows go to `bad` (default: each an error); skipped ones
    are left out."""
    bad = bad or BadRows(source, keep_all=unlabelled_ok)
    if len(table) == 0:
        raise FlaxftError(f"{source} has no data rows; give a file with a header and at least one row")
    split = table.select_columns(list(text_columns))
    for column in text_columns:
        if split.features[column] != datasets.Value("string"):
            split = split.cast_column(column, datasets.Value("string"))
        values = split.with_format("arrow")[column]
        # a row without text; in a file whose every row is predicted, only a missing cell (empty text is predicted)
        empty = values.is_null() if bad.keep_all else pc.or_kleene(values.is_null(), pc.equal(
            pc.utf8_trim_whitespace(values), ""))
        for row in np.flatnonzero(np.asarray(empty.fill_null(True))) + 1:
            if int(row) not in bad.dropped:
                value = values[int(row) - 1].as_py()
                bad.found(int(row), EMPTY_TEXT, f"column {column!r} is empty"
                          + (f" ({shown(value)})" if value is not None else ""), "fill it in or drop the row")
    values = column_values(table, label_column) if label_column in table.column_names else [None] * len(table)
    labels = codec.encode(values, source, unlabelled_ok=unlabelled_ok, bad=bad)
    if bad.dropped:
        keep = [i for i in range(len(table)) if i + 1 not in bad.dropped]
        if not keep:
            raise FlaxftError(f"{source}: every row is bad ({bad.first}); fix the file")
        split, labels = split.select(keep), [labels[i] for i in keep]
    return split.add_column("label", labels, feature=codec.feature,
                            new_fingerprint=generate_random_fingerprint())  # not a hash of a million labels


def column_values(table: datasets.Dataset, column: str) -> list:
    """A column as Python values, read column-wise (indexing a Dataset by a column name formats row by row)."""
    return table.with_format("arrow")[column].to_pylist()


def load_splits(data) -> RawData:
    """The splits described by the `data` config section (see the module docstring).

    Custom files: the format comes from the extension; `data.text_columns` defaults to the first of
    DEFAULT_TEXT_COLUMNS present in the training file; the LabelCodec is inferred from its labels.
    Test files may lack labels. `data.max_train_samples` keeps the first N training rows,
    `data.max_eval_samples` the first N rows of every eval and test split.
    """
    if data.task:
        task = get_task(data.task)
        if data.train_file:
            raise FlaxftError(f"data.task={data.task} and data.train_file are both set; "
                              "unset data.train_file to use GLUE, or unset data.task to use your own files")
        if data.path and not is_hub_id(data.path):
            raw = _glue_folder(task, data.path, data.skip_bad_rows)
        else:
            raw = _glue_hub(task, data.path or data.hub_dataset, data.skip_bad_rows)
    else:
        raw = _custom_files(data)
    for name, ds in raw.splits.items():
        limit = data.max_train_samples if name == "train" else data.max_eval_samples
        if limit is not None and limit < len(ds):
            raw.splits[name] = ds.select(range(limit))
    return raw


def from_datasets(splits: dict, text_columns=None, label_column: str = "label", problem_type: Optional[str] = None,
                  label_separator: str = ",", skip_bad_rows: bool = False) -> RawData:
    """RawData from your own in-memory splits, for `Trainer(cfg, raw=...)` in a notebook.

    `splits` maps "train" (required), "validation" and "test" to `datasets.Dataset`s or dicts of
    columns; labels are typed exactly as for files (integers, strings, floats, or lists for multi-label);
    `problem_type`, `label_separator` and `skip_bad_rows` as data.problem_type, data.label_separator and
    data.skip_bad_rows.
    """
    if "train" not in splits:
        raise FlaxftError(f"from_datasets needs a 'train' split; got {sorted(splits)}")
    tables = {name: ds if isinstance(ds, datasets.Dataset) else datasets.Dataset.from_dict(dict(ds))
              for name, ds in splits.items()}
    sources = {name: f"the {name} split" for name in tables}
    return _custom(tables, sources, _bad_rows(sources, skip_bad_rows), text_columns, label_column, problem_type,
                   label_separator)


def from_file(file: str, text_columns, label_column: str, codec: LabelCodec, task: Optional[TaskSpec]) -> RawData:
    """One file to predict on, with a trained model's text columns and classes (labels optional)."""
    path = storage.path(file)
    if not path.is_file():
        raise FlaxftError(f"--file: '{file}' not found; check the path")
    bad = BadRows(file, keep_all=True)  # every row gets its prediction: no row is skipped
    table = read_file("test_file", str(path), bad)
    columns = tuple(text_columns) if text_columns else pick_text_columns(None, table, str(path))
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise FlaxftError(f"{file}: no column {missing[0]!r} (columns: {', '.join(table.column_names)}); the model "
                          f"reads [{','.join(columns)}]: rename the file's columns or set data.text_columns=[...]")
    split = labelled_split(table, columns, label_column, codec, file, unlabelled_ok=True, bad=bad)
    return RawData({path.stem: split}, columns, codec, task, (), (), str(path))


def pick_text_columns(wanted, table: datasets.Dataset, source: str) -> tuple[str, ...]:
    if isinstance(wanted, str):
        wanted = [wanted]
    if wanted:
        if not 1 <= len(wanted) <= 2:
            raise FlaxftError(f"data.text_columns={list(wanted)}: give one or two column names")
        return tuple(wanted)
    for candidate in DEFAULT_TEXT_COLUMNS:
        if all(c in table.column_names for c in candidate):
            return candidate
    raise FlaxftError(f"{source}: no 'text' or 'sentence' column (columns: {', '.join(table.column_names)}); "
                      "set data.text_columns=[COLUMN] or [COLUMN1,COLUMN2]")


# ---------------------------------------------------------------------------------------------------- GLUE


def _bad_rows(sources: dict[str, str], skip: bool) -> dict[str, BadRows]:
    """Each split's bad rows; skipped only in training and validation splits (a test split's rows are all
    predicted)."""
    return {split: BadRows(source, skip=skip, keep_all=split.startswith("test")) for split, source in sources.items()}


def _skipped(bad: dict[str, BadRows]) -> dict[str, dict[str, int]]:
    """Rows skipped per split and reason (for summary.json), each split's also in the log."""
    for rows in bad.values():
        rows.report()
    return {split: rows.counts() for split, rows in bad.items() if rows.dropped}


def _glue_raw(task: TaskSpec, splits: dict[str, datasets.Dataset], source: str, bad: dict[str, BadRows]) -> RawData:
    return RawData(splits, task.text_columns, LabelCodec.named(task.label_names), task,
                   tuple(s for s in task.eval_splits if s in splits), tuple(s for s in task.test_splits if s in splits),
                   source, _skipped(bad))


def _glue_folder(task: TaskSpec, path: str, skip_bad_rows: bool = False) -> RawData:
    folder = storage.path(path)  # a local folder or gs://bucket/glue/MRPC
    if not folder.is_dir():
        raise FlaxftError(f"data.path: folder '{path}' does not exist; point data.path at the GLUE {task.folder} "
                          "folder (or unset it to download from the Hub)")
    if not (folder / task.train_file).exists() and (folder / task.folder).is_dir():
        folder = folder / task.folder  # the GLUE root (the folder holding MRPC/, SST-2/, ...) works too
    codec = LabelCodec.named(task.label_names)
    splits, bad = {}, {}
    for split, name in task.split_files.items():
        path = folder / name
        is_test = split in task.test_splits
        if not path.is_file():
            if is_test:  # GLUE test files are optional (unlabelled anyway)
                continue
            needed = ", ".join([task.train_file, *dict(task.eval_files).values()])
            raise FlaxftError(f"data.path: '{path}' not found; point data.path at the GLUE {task.folder} folder "
                              f"(with {needed})")
        bad[split] = BadRows(str(path), skip=skip_bad_rows, keep_all=is_test)
        splits[split] = _glue_file(task, path, codec, is_test, bad[split])
    return _glue_raw(task, splits, f"GLUE {task.name} from {folder.resolve()}", bad)


def _glue_file(task: TaskSpec, path: epath.Path, codec: LabelCodec, is_test: bool, bad: BadRows) -> datasets.Dataset:
    header, rows = read_delimited(path, "\t", csv.QUOTE_NONE, None if is_test else task.headerless_columns, bad,
                                  keep=(*task.tsv_text_columns, task.tsv_label_column))
    missing = [c for c in task.tsv_text_columns if c not in header]
    if missing:
        raise FlaxftError(f"{path}: no column {missing[0]!r} (columns: {', '.join(header)}); "
                          f"is this the GLUE {task.folder} file?")
    table = string_table(header, rows).rename_columns(dict(zip(task.tsv_text_columns, task.text_columns)))
    label = task.tsv_label_column if task.tsv_label_column in header else None
    return labelled_split(table, task.text_columns, label, codec, str(path), unlabelled_ok=label is None, bad=bad)


def _glue_hub(task: TaskSpec, repo: str, skip_bad_rows: bool = False) -> RawData:
    offline = datasets.config.HF_HUB_OFFLINE
    local_hint = f"set data.path=<local GLUE {task.folder} folder with {task.train_file}>"
    if not offline and not hub_reachable():
        raise FlaxftError(f"cannot reach the Hugging Face Hub ({huggingface_hub.constants.ENDPOINT}) to download "
                          f"{repo} '{task.name}'; {local_hint}, or set HF_HUB_OFFLINE=1 to use a cached copy")
    try:
        hub = datasets.load_dataset(repo, task.name)
    except (OSError, ValueError) as e:
        where = "in the local cache (offline mode)" if offline else "from the Hub"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FlaxftError(f"could not load {repo} '{task.name}' {where} ({reason}); {local_hint}") from e
    codec = LabelCodec.named(task.label_names)
    splits, bad = {}, {}
    for split in task.split_files:
        if split not in hub:
            if split in task.test_splits:
                continue
            raise FlaxftError(f"{repo} '{task.name}' has no '{split}' split (it has {', '.join(hub)}); {local_hint}")
        missing = [c for c in [*task.text_columns, "label"] if c not in hub[split].column_names]
        if missing:
            raise FlaxftError(f"{repo} '{task.name}' {split}: no column {missing[0]!r} (columns: "
                              f"{', '.join(hub[split].column_names)}); use the nyu-mll/glue layout or {local_hint}")
        source = f"{repo} '{task.name}' {split}"
        bad[split] = BadRows(source, skip=skip_bad_rows, keep_all=split in task.test_splits)
        splits[split] = labelled_split(hub[split], task.text_columns, "label", codec, source,
                                       unlabelled_ok=split in task.test_splits, bad=bad[split])
    return _glue_raw(task, splits, f"GLUE {task.name} from the Hugging Face Hub ({repo})", bad)


# ----------------------------------------------------------------------------------------- your own data


def _custom_files(data) -> RawData:
    if not data.train_file:
        if data.path:
            raise FlaxftError(f"data.path={data.path} needs data.task (a GLUE task name); "
                              "for your own data set data.train_file")
        raise FlaxftError("no data given; set data.task=<GLUE task, e.g. mrpc> or data.train_file=<your file>")
    files = {split: file for split, file in (("train", data.train_file), ("validation", data.validation_file),
                                             ("test", data.test_file)) if file}
    bad = _bad_rows(files, data.skip_bad_rows)
    tables = {split: read_file(f"{split}_file", file, bad[split]) for split, file in files.items()}
    return _custom(tables, files, bad, data.text_columns, data.label_column or "label", data.problem_type,
                   data.label_separator)


def _custom(tables: dict[str, datasets.Dataset], sources: dict[str, str], bad: dict[str, BadRows], text_columns,
            label_column: str, problem_type: Optional[str] = None, label_separator: str = ",") -> RawData:
    text_columns = pick_text_columns(text_columns, tables["train"], sources["train"])
    if label_column in text_columns:
        raise FlaxftError(f"data.label_column={label_column} is also a text column; use different columns")
    for split, table in tables.items():
        needed = [*text_columns, label_column] if split != "test" else text_columns
        missing = [c for c in needed if c not in table.column_names]
        if missing:
            raise FlaxftError(f"{sources[split]}: no column {missing[0]!r} (columns: {', '.join(table.column_names)}); "
                              "set data.text_columns / data.label_column to the right names")
    codec = LabelCodec.infer(column_values(tables["train"], label_column), sources["train"],
                             PROBLEM_TYPE_KEYS.get(problem_type), label_separator)
    splits = {split: labelled_split(table, text_columns, label_column, codec, sources[split],
                                    unlabelled_ok=split == "test", bad=bad[split]) for split, table in tables.items()}
    return RawData(splits, text_columns, codec, None, ("validation",) if "validation" in splits else (),
                   ("test",) if "test" in splits else (),
                   "files: " + ", ".join(f"{split}={file}" for split, file in sources.items()), _skipped(bad))
