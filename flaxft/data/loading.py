"""Load raw train/eval/test splits as `datasets.Dataset`s.

Three sources, chosen from the `data` config section:

1. GLUE task + local folder (`data.task=mrpc data.path=../shared/data/glue/MRPC`): the official GLUE TSVs,
   parsed like the original Hugging Face GLUE loader (tab-separated, no quoting, UTF-8 with optional BOM).
2. GLUE task, no path (or `data.path=<Hub dataset id>`): `datasets.load_dataset(data.hub_dataset, task)`.
3. The user's own files (`data.train_file`, optional `data.validation_file`, `data.test_file`).

Every split holds the text column(s) and a column named "label" (int64 class id, or float32 for regression;
-1 / NaN for unlabelled test rows).
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import datasets
import huggingface_hub
from etils import epath

from flaxft import storage
from flaxft.data.tasks import TaskSpec, get_task
from flaxft.errors import FlaxftError
from flaxft.hub import hub_reachable

# Text columns used for custom files when data.text_columns is not set; the first fully present set wins.
DEFAULT_TEXT_COLUMNS = (
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
    ("question", "sentence"),
    ("sentence",),
    ("text",),
)
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass
class RawData:
    """Loaded splits plus what the model head and metrics need to know about the labels."""

    splits: dict[str, datasets.Dataset]
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...] | None  # class names in id order; None for regression
    is_regression: bool
    num_labels: int
    task: TaskSpec | None
    eval_splits: tuple[str, ...]
    test_splits: tuple[str, ...]
    source: str

    @property
    def id2label(self) -> dict[int, str]:
        names = self.label_names or tuple(f"LABEL_{i}" for i in range(self.num_labels))
        return dict(enumerate(names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}


def load_splits(data) -> RawData:
    """Load the splits described by the `data` config section (see the module docstring).

    Custom files: the format comes from the extension (.csv, .tsv, .json, .jsonl, .parquet). CSV/TSV cells
    are kept as strings ("NA" stays "NA"); TSVs are read without quote handling, like GLUE's.
    `data.text_columns` (one or two names) defaults to the first of DEFAULT_TEXT_COLUMNS present in the
    training file. Labels (`data.label_column`, default "label") are typed from the training file:
    all integers -> class ids 0..max; all numbers but not all integers -> regression; otherwise strings,
    whose sorted unique values become the class names. Test files may lack labels (-1 / NaN).
    `data.max_train_samples` keeps the first N training rows, `data.max_eval_samples` the first N rows of
    every eval and test split.
    """
    if data.task:
        task = get_task(data.task)
        if data.train_file:
            raise FlaxftError(
                f"data.task={data.task} and data.train_file are both set; "
                "unset data.train_file to use GLUE, or unset data.task to use your own files"
            )
        if data.path and _is_local(data.path):
            raw = _load_glue_folder(task, _glue_folder(task, data.path))
        else:
            raw = _load_glue_hub(task, data.path or data.hub_dataset)
    else:
        raw = _load_custom(data)
    for name, ds in raw.splits.items():
        key = "max_train_samples" if name == "train" else "max_eval_samples"
        limit = getattr(data, key)
        if limit is not None and limit < 1:
            raise FlaxftError(f"data.{key}={limit} must be at least 1; unset it to use every row")
        if limit is not None and limit < len(ds):
            raw.splits[name] = ds.select(range(limit))
    return raw


# ---------------------------------------------------------------------------------------------- GLUE TSVs


def _is_local(path: str) -> bool:
    """Whether data.path means a local folder (else it is a Hub dataset id like "nyu-mll/glue")."""
    return (storage.is_remote(path) or Path(path).expanduser().exists() or path.startswith((".", "/", "~"))
            or not _HUB_ID.match(path))


def _glue_folder(task: TaskSpec, path: str) -> epath.Path:
    folder = storage.path(path)  # a local folder or gs://bucket/glue/MRPC
    if not folder.is_dir():
        raise FlaxftError(
            f"data.path: folder '{path}' does not exist; point data.path at the GLUE {task.folder} folder "
            "(or unset it to download from the Hub)"
        )
    # Accept the GLUE root too (the folder holding MRPC/, SST-2/, ...).
    if not (folder / task.train_file).exists() and (folder / task.folder).is_dir():
        folder = folder / task.folder
    return folder


def _load_glue_folder(task: TaskSpec, folder: epath.Path) -> RawData:
    splits = {}
    for split, name in task.split_files.items():
        path = folder / name
        is_test = split in task.test_splits
        if not path.is_file():
            if is_test:  # GLUE test files are optional (unlabelled anyway)
                continue
            needed = ", ".join([task.train_file, *dict(task.eval_files).values()])
            raise FlaxftError(
                f"data.path: '{path}' not found; point data.path at the GLUE {task.folder} folder (with {needed})"
            )
        header, rows = _read_table(path, "\t", csv.QUOTE_NONE, task.headerless_columns if not is_test else None)
        missing = [c for c in task.tsv_text_columns if c not in header]
        if missing:
            raise FlaxftError(
                f"{path}: no column {missing[0]!r} (columns: {', '.join(header)}); "
                f"is this the GLUE {task.folder} file?"
            )
        texts = {
            col: [r[header.index(tsv)] for r in rows] for col, tsv in zip(task.text_columns, task.tsv_text_columns)
        }
        if task.tsv_label_column in header:
            i = header.index(task.tsv_label_column)
            labels = [_glue_label(task, r[i], path, n) for n, r in enumerate(rows, 1)]
        else:
            labels = [math.nan if task.is_regression else -1] * len(rows)
        splits[split] = _dataset(texts, labels, task.is_regression, path)
    return _glue_raw(task, splits, f"GLUE {task.name} from {folder.resolve()}")


def _glue_label(task: TaskSpec, value: str, path: Path, row: int) -> int | float:
    """A TSV label as the Hub stores it: float score, or class id (from a class name or a 0/1 string)."""
    if task.is_regression:
        number = _as_float(value)
        if number is None:
            raise FlaxftError(f"{path}, row {row}: score {value!r} is not a number; fix that row")
        return number
    if value in task.label_names:
        return task.label_names.index(value)
    class_id = _as_int(value)
    if class_id is None or not 0 <= class_id < task.num_labels:
        raise FlaxftError(
            f"{path}, row {row}: label {value!r} is not one of {', '.join(task.label_names)} "
            f"or 0..{task.num_labels - 1}; fix that row"
        )
    return class_id


def _glue_raw(task: TaskSpec, splits: dict[str, datasets.Dataset], source: str) -> RawData:
    return RawData(
        splits=splits,
        text_columns=task.text_columns,
        label_names=task.label_names,
        is_regression=task.is_regression,
        num_labels=task.num_labels,
        task=task,
        eval_splits=tuple(s for s in task.eval_splits if s in splits),
        test_splits=tuple(s for s in task.test_splits if s in splits),
        source=source,
    )


# ------------------------------------------------------------------------------------------------ the Hub


def _load_glue_hub(task: TaskSpec, repo: str) -> RawData:
    offline = datasets.config.HF_HUB_OFFLINE
    local_hint = f"set data.path=<local GLUE {task.folder} folder with {task.train_file}>"
    if not offline and not hub_reachable():
        raise FlaxftError(
            f"cannot reach the Hugging Face Hub ({huggingface_hub.constants.ENDPOINT}) to download "
            f"{repo} '{task.name}'; {local_hint}, or set HF_HUB_OFFLINE=1 to use a cached copy"
        )
    try:
        hub = datasets.load_dataset(repo, task.name)
    except (OSError, ValueError) as e:
        where = "in the local cache (offline mode)" if offline else "from the Hub"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FlaxftError(f"could not load {repo} '{task.name}' {where} ({reason}); {local_hint}") from e
    label_type = datasets.Value("float32" if task.is_regression else "int64")
    splits = {}
    for split in task.split_files:
        if split not in hub:
            if split in task.test_splits:
                continue
            raise FlaxftError(f"{repo} '{task.name}' has no '{split}' split (it has {', '.join(hub)}); {local_hint}")
        columns = [*task.text_columns, "label"]
        missing = [c for c in columns if c not in hub[split].column_names]
        if missing:
            raise FlaxftError(
                f"{repo} '{task.name}' {split}: no column {missing[0]!r} "
                f"(columns: {', '.join(hub[split].column_names)}); use the nyu-mll/glue layout or {local_hint}"
            )
        # ClassLabel -> plain int64 so every source yields the same features.
        splits[split] = hub[split].select_columns(columns).cast_column("label", label_type)
    return _glue_raw(task, splits, f"GLUE {task.name} from the Hugging Face Hub ({repo})")


# ------------------------------------------------------------------------------------------ custom files


@dataclass(frozen=True)
class _LabelSpec:
    kind: str  # "int", "str" or "float"
    names: tuple[str, ...] | None  # class names in id order (None for "float")


def _load_custom(data) -> RawData:
    if not data.train_file:
        if data.path:
            raise FlaxftError(
                f"data.path={data.path} needs data.task (a GLUE task name); for your own data set data.train_file"
            )
        raise FlaxftError("no data given; set data.task=<GLUE task, e.g. mrpc> or data.train_file=<your file>")
    files = {
        split: file
        for split, file in (("train", data.train_file), ("validation", data.validation_file), ("test", data.test_file))
        if file
    }
    tables = {split: _read_file(f"{split}_file", file) for split, file in files.items()}
    return _raw_from_tables(tables, files, data.text_columns, data.label_column or "label")


def from_datasets(splits: dict, text_columns=None, label_column: str = "label") -> RawData:
    """RawData from your own in-memory splits, for `Trainer(cfg, raw=...)` in a notebook.

    `splits` maps "train" (required), "validation" and "test" to `datasets.Dataset`s or dicts of
    columns; labels are typed exactly as for files (integers, strings or floats).
    """
    if "train" not in splits:
        raise FlaxftError(f"from_datasets needs a 'train' split; got {sorted(splits)}")
    tables = {name: ds.to_dict() if isinstance(ds, datasets.Dataset) else dict(ds) for name, ds in splits.items()}
    return _raw_from_tables(tables, {name: f"the {name} split" for name in tables}, text_columns, label_column)


def _raw_from_tables(tables: dict[str, dict], files: dict[str, str], text_columns, label_column: str) -> RawData:
    text_columns = _pick_text_columns(text_columns, tables["train"], files["train"])
    if label_column in text_columns:
        raise FlaxftError(f"data.label_column={label_column} is also a text column; use different columns")

    for split, table in tables.items():
        needed = [*text_columns, label_column] if split != "test" else text_columns
        missing = [c for c in needed if c not in table]
        if missing:
            raise FlaxftError(
                f"{files[split]}: no column {missing[0]!r} (columns: {', '.join(table)}); "
                "set data.text_columns / data.label_column to the right names"
            )

    spec = _infer_labels(tables["train"][label_column], files["train"])
    is_regression = spec.kind == "float"
    splits = {}
    for split, table in tables.items():
        texts = {c: _texts(table[c], c, files[split]) for c in text_columns}
        values = table.get(label_column, [None] * len(table[text_columns[0]]))
        labels = _encode_labels(spec, values, files[split], is_test=split == "test")
        splits[split] = _dataset(texts, labels, is_regression, files[split])
    return RawData(
        splits=splits,
        text_columns=text_columns,
        label_names=spec.names,
        is_regression=is_regression,
        num_labels=1 if is_regression else len(spec.names),
        task=None,
        eval_splits=("validation",) if "validation" in splits else (),
        test_splits=("test",) if "test" in splits else (),
        source="files: " + ", ".join(f"{split}={file}" for split, file in files.items()),
    )


def _read_file(key: str, file: str) -> dict[str, list]:
    """Column name -> values of a .csv/.tsv/.json/.jsonl/.parquet file."""
    path = storage.path(file)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise FlaxftError(
            f"data.{key}: unsupported file type '{path.suffix}' ({file}); use .csv, .tsv, .json, .jsonl or .parquet"
        )
    if not path.is_file():
        raise FlaxftError(f"data.{key}: file '{file}' not found; check the path (relative to the current directory)")
    if path.stat().length == 0:
        raise FlaxftError(f"data.{key}: file '{file}' is empty; it needs a header and at least one row")
    if fmt in ("csv", "tsv"):
        # csv module, not pandas: cells stay strings ("NA", "001") and bad rows are reported by line.
        quoting = csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE
        header, rows = _read_table(path, "," if fmt == "csv" else "\t", quoting)
        return {col: [r[i] for r in rows] for i, col in enumerate(header)}
    try:
        return datasets.load_dataset(fmt, data_files=str(path), split="train").to_dict()
    except (datasets.exceptions.DatasetGenerationError, ValueError, OSError) as e:
        if isinstance(e, UnicodeDecodeError) or isinstance(e.__cause__, UnicodeDecodeError):
            raise FlaxftError(_not_utf8(path)) from e
        reason = str(e.__cause__ or e).strip().splitlines()[0]
        raise FlaxftError(f"data.{key}: cannot read '{file}' as {fmt} ({reason}); check the file's format") from e


def _read_table(path: epath.Path, delimiter: str, quoting: int, names=None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a delimited UTF-8 file (BOM allowed); every row must have as many fields as the
    header. `names` replaces a missing header row. Blank lines are skipped."""
    kind = "tab" if delimiter == "\t" else repr(delimiter)
    try:
        with storage.open_text(path) as f:
            reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
            header = list(names) if names else next(reader, [])
            rows = []
            for row in reader:
                if len(row) != len(header) and row:
                    raise FlaxftError(
                        f"{path}, line {reader.line_num}: {len(row)} {kind}-separated fields, expected "
                        f"{len(header)} like the header; fix or remove that line"
                    )
                if row:
                    rows.append(row)
    except UnicodeDecodeError as e:
        raise FlaxftError(_not_utf8(path)) from e
    except csv.Error as e:
        raise FlaxftError(f"{path}, line {reader.line_num}: {e}; fix that line") from e
    if not rows:
        raise FlaxftError(f"{path} has no data rows; give a file with a header and at least one row")
    return header, rows


def _not_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        where = ""
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        where = f" (byte {data[e.start]:#04x} on line {line})"
    return f"{path} is not UTF-8 text{where}; convert it, e.g. iconv -f latin1 -t utf-8 IN > OUT"


def _pick_text_columns(wanted, table: dict[str, list], file: str) -> tuple[str, ...]:
    if isinstance(wanted, str):
        wanted = [wanted]
    if wanted:
        if not 1 <= len(wanted) <= 2:
            raise FlaxftError(f"data.text_columns={list(wanted)}: give one or two column names")
        return tuple(wanted)
    for candidate in DEFAULT_TEXT_COLUMNS:
        if all(c in table for c in candidate):
            return candidate
    raise FlaxftError(
        f"{file}: no 'text' or 'sentence' column (columns: {', '.join(table)}); "
        "set data.text_columns=[COLUMN] or [COLUMN1,COLUMN2]"
    )


def _texts(values: list, column: str, file: str) -> list[str]:
    for row, value in enumerate(values, 1):
        if value is None:
            raise FlaxftError(f"{file}, row {row}: column {column!r} is empty; fill it in or drop the row")
    return [v if isinstance(v, str) else str(v) for v in values]


def _missing(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, float) and math.isnan(value)
    )


def _as_int(value) -> int | None:
    """Integer value of an int, integral float or integer string; None otherwise."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            value = _as_float(value)
    if isinstance(value, (bool, int)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _as_float(value) -> float | None:
    """Finite float value of a number or numeric string; None otherwise."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _infer_labels(values: list, file: str) -> _LabelSpec:
    """Label type and classes from the training labels (see load_splits)."""
    present = [v for v in values if not _missing(v)]
    if not present:
        raise FlaxftError(f"{file}: the label column is empty; fill in the labels or set data.label_column")
    ids = [_as_int(v) for v in present]
    if all(i is not None for i in ids):
        if min(ids) < 0:
            raise FlaxftError(f"{file}: label {min(ids)} is negative; class ids must be 0, 1, 2, ...")
        spec = _LabelSpec("int", tuple(str(i) for i in range(max(ids) + 1)))
    elif all(_as_float(v) is not None for v in present):
        return _LabelSpec("float", None)
    else:
        spec = _LabelSpec("str", tuple(sorted({str(v).strip() for v in present})))
    if len(spec.names) < 2:
        raise FlaxftError(
            f"{file}: all training labels are {spec.names[0]!r}; a classifier needs at least two classes"
        )
    return spec


def _encode_labels(spec: _LabelSpec, values: list, file: str, is_test: bool) -> list:
    """Class ids (or floats) for one split; missing test labels become -1 (NaN for regression)."""
    ids = {name: i for i, name in enumerate(spec.names or ())}
    out = []
    for row, value in enumerate(values, 1):
        if _missing(value):
            if not is_test:
                raise FlaxftError(f"{file}, row {row}: no label; fill it in or drop the row")
            out.append(math.nan if spec.kind == "float" else -1)
        elif spec.kind == "float":
            number = _as_float(value)
            if number is None:
                raise FlaxftError(f"{file}, row {row}: label {value!r} is not a number like the training labels")
            out.append(number)
        elif spec.kind == "str":
            name = str(value).strip()
            if name not in ids:
                raise FlaxftError(
                    f"{file}, row {row}: label {name!r} never appears in the training labels "
                    f"({', '.join(spec.names)}); fix the label or add training examples of it"
                )
            out.append(ids[name])
        else:
            class_id = _as_int(value)
            if class_id is None:
                raise FlaxftError(
                    f"{file}, row {row}: label {value!r} is not an integer class id like the training labels"
                )
            if class_id == -1 and is_test:
                out.append(-1)
            elif class_id < 0:
                raise FlaxftError(f"{file}, row {row}: label {class_id} is negative; class ids must be 0, 1, 2, ...")
            elif class_id >= len(spec.names):
                raise FlaxftError(
                    f"{file}, row {row}: label {class_id} never appears in the training labels "
                    f"(0..{len(spec.names) - 1}); fix the label or add training examples of it"
                )
            else:
                out.append(class_id)
    return out


def _dataset(texts: dict[str, list[str]], labels: list, is_regression: bool, file) -> datasets.Dataset:
    if not labels:
        raise FlaxftError(f"{file} has no data rows; give a file with a header and at least one row")
    label = datasets.Value("float32" if is_regression else "int64")
    features = datasets.Features({**{c: datasets.Value("string") for c in texts}, "label": label})
    return datasets.Dataset.from_dict({**texts, "label": labels}, features=features)
