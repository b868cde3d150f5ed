"""Table files -> `datasets.Dataset`: .csv/.tsv through the csv module (every cell stays a string, "NA" and
"001" included; a bad line is named by its number), .json/.jsonl/.parquet through `datasets`. Local files or
gs:// URLs; a file that is not UTF-8 is named with its first bad byte."""

from __future__ import annotations

import csv

import datasets
import pyarrow as pa
from etils import epath

from flaxft import storage
from flaxft.errors import FlaxftError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def read_file(key: str, file: str) -> datasets.Dataset:
    """The table in `file` (the config key `data.<key>` named it)."""
    path = storage.path(file)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise FlaxftError(f"data.{key}: unsupported file type '{path.suffix}' ({file}); "
                          "use .csv, .tsv, .json, .jsonl or .parquet")
    if not path.is_file():
        raise FlaxftError(f"data.{key}: file '{file}' not found; check the path (relative to the current directory)")
    if path.stat().length == 0:
        raise FlaxftError(f"data.{key}: file '{file}' is empty; it needs a header and at least one row")
    if fmt in ("csv", "tsv"):
        quoting = csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE
        return string_table(*read_delimited(path, "," if fmt == "csv" else "\t", quoting))
    try:
        table = datasets.load_dataset(fmt, data_files=str(path), split="train")
    except (datasets.exceptions.DatasetGenerationError, ValueError, OSError) as e:
        if isinstance(e, UnicodeDecodeError) or isinstance(e.__cause__, UnicodeDecodeError):
            raise FlaxftError(not_utf8(path)) from e
        reason = str(e.__cause__ or e).strip().splitlines()[0]
        raise FlaxftError(f"data.{key}: cannot read '{file}' as {fmt} ({reason}); check the file's format") from e
    try:  # Arrow's JSON reader keeps invalid UTF-8 bytes in strings: find them here, not at tokenization
        for column in table.data.columns:
            column.validate(full=True)
    except pa.ArrowInvalid:
        raise FlaxftError(not_utf8(path)) from None
    return table


def string_table(header: list[str], rows: list[list[str]]) -> datasets.Dataset:
    # straight to Arrow: Dataset.from_dict would check every cell against its feature in Python (4x slower)
    columns = {col: pa.array([r[i] for r in rows], pa.string()) for i, col in enumerate(header)}
    return datasets.Dataset(datasets.table.InMemoryTable(pa.table(columns)))


def read_delimited(path: epath.Path, delimiter: str, quoting: int, names=None,
                   keep=None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a delimited UTF-8 file (BOM allowed); every row must have as many fields as the
    header. `names` replaces a missing header row. Blank lines are skipped. `keep` (column names): when the header
    has them all, only those columns are returned (a wide file, MNLI's with its parse trees, is not held whole)."""
    kind = "tab" if delimiter == "\t" else repr(delimiter)
    try:
        with storage.open_text(path) as f:
            reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
            header = list(names) if names else next(reader, [])
            picked = [i for i, column in enumerate(header) if column in keep] \
                if keep is not None and set(keep) <= set(header) else None  # else all: the caller names what is missing
            rows = []
            for row in reader:
                if len(row) != len(header) and row:
                    raise FlaxftError(f"{path}, line {reader.line_num}: {len(row)} {kind}-separated fields, expected "
                                      f"{len(header)} like the header; fix or remove that line")
                if row:
                    rows.append(row if picked is None else [row[i] for i in picked])
    except UnicodeDecodeError as e:
        raise FlaxftError(not_utf8(path)) from e
    except csv.Error as e:
        raise FlaxftError(f"{path}, line {reader.line_num}: {e}; fix that line") from e
    if not rows:
        raise FlaxftError(f"{path} has no data rows; give a file with a header and at least one row")
    return (header if picked is None else [header[i] for i in picked]), rows


def not_utf8(path: epath.Path) -> str:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        where = ""
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        where = f" (byte {data[e.start]:#04x} on line {line})"
    return f"{path} is not UTF-8 text{where}; convert it, e.g. iconv -f latin1 -t utf-8 IN > OUT"
