"""Table files -> `datasets.Dataset`: .csv/.tsv through the csv module (every cell stays a string, "NA" and
"001" included; a row with the wrong number of fields or bytes that are not UTF-8 is a bad row, named by its
number: see flaxft.data.bad_rows), .json/.jsonl/.parquet through `datasets`. Local files or gs:// URLs; a
JSON or Parquet file that is not UTF-8 is named with its first bad byte."""

from __future__ import annotations

import csv
import re
from typing import Optional

import datasets
import pyarrow as pa
from etils import epath

from flaxft import storage
from flaxft.data.bad_rows import NOT_UTF8, WRONG_FIELD_COUNT, BadRows, shown
from flaxft.errors import FlaxftError

NOT_UTF8_BYTE = re.compile("[\udc80-\udcff]")  # a byte that is not UTF-8, as decoding with surrogateescape keeps it
ICONV = "convert the file, e.g. iconv -f latin1 -t utf-8 IN > OUT"

FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def read_file(key: str, file: str, bad: Optional[BadRows] = None) -> datasets.Dataset:
    """The table in `file` (the config key `data.<key>` named it); `bad` takes its bad CSV/TSV rows."""
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
        return string_table(*read_delimited(path, "," if fmt == "csv" else "\t", quoting, bad=bad))
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
                   bad: Optional[BadRows] = None, keep=None) -> tuple[list[str], list[list[Optional[str]]]]:
    """Header and rows of a delimited UTF-8 file (BOM allowed). `names` replaces a missing header row. Blank
    lines are skipped. A row with another number of fields than the header, or with bytes that are not UTF-8,
    goes to `bad` (an error, or with data.skip_bad_rows a row of Nones that keeps the rows' numbers). `keep`
    (column names): when the header has them all, only those columns are returned (a wide file, MNLI's with its
    parse trees, is not held whole)."""
    bad = bad or BadRows(str(path))
    kind = "tab" if delimiter == "\t" else repr(delimiter)
    with storage.open_text(path, errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        try:
            header = list(names) if names else next(reader, [])
            if any(NOT_UTF8_BYTE.search(name) for name in header):
                raise FlaxftError(not_utf8(path))
            picked = [i for i, column in enumerate(header) if column in keep] \
                if keep is not None and set(keep) <= set(header) else None  # else all: the caller names what is missing
            rows: list[list[Optional[str]]] = []
            for row in reader:
                if not row:
                    continue
                number, line = len(rows) + 1, reader.line_num
                text = delimiter.join(row)
                if len(row) != len(header):
                    bad.found(number, WRONG_FIELD_COUNT, f"{len(row)} {kind}-separated fields, expected {len(header)} "
                              f"like the header (line {line}: {shown(text)})", "fix or remove that line")
                elif NOT_UTF8_BYTE.search(text):
                    byte = ord(NOT_UTF8_BYTE.search(text).group()) - 0xDC00
                    bad.found(number, NOT_UTF8, f"not UTF-8 text (byte {byte:#04x} on line {line}: {shown(text)})",
                              ICONV)
                if number in bad.dropped:
                    rows.append([None] * (len(header) if picked is None else len(picked)))
                else:
                    rows.append(row if picked is None else [row[i] for i in picked])
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
        row = f", row {line}" if path.suffix.lower() == ".jsonl" else ""  # one JSON object per line
        where = f" (byte {data[e.start]:#04x} on line {line}{row})"
    return f"{path} is not UTF-8 text{where}; {ICONV}"
