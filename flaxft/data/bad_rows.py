"""Rows a run cannot use: a CSV/TSV row with the wrong number of fields or with bytes that are not UTF-8, empty
or missing text, a missing (empty, NaN) label, a label never seen in training, a label of the wrong kind (a
number among class names, a name among numbers).

Each is an error naming the file, the row (data rows counted from 1 after the header) and the value. With
`data.skip_bad_rows=true` the rows of training and validation files are dropped instead, counted by reason,
logged, and reported in summary.json (`skipped_rows`). Files whose every row is predicted (test files,
`flaxft.predict --file`) keep every row: there a bad row is always an error, and empty text is predicted as
it is.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Optional

from flaxft.errors import FlaxftError

log = logging.getLogger("flaxft")

# why a row was skipped: summary.json's skipped_rows counts rows per split and reason
WRONG_FIELD_COUNT, NOT_UTF8, EMPTY_TEXT = "wrong_field_count", "not_utf8", "empty_text"
MISSING_LABEL, UNKNOWN_LABEL, BAD_LABEL = "missing_label", "unknown_label", "bad_label"


def shown(value, limit: int = 80) -> str:
    """A cell or line for a message: its repr, cut to `limit` characters; bytes that are not UTF-8 as \\xNN."""
    text = re.sub(r"\\udc([89a-f][0-9a-f])", r"\\x\1", repr(value))  # surrogateescape's stand-ins: the bytes
    return text if len(text) <= limit else text[:limit - 4] + "...'"


@dataclasses.dataclass
class BadRows:
    """The bad rows of one file (or in-memory split): `found` raises the row's error, or with `skip` drops it."""
    source: str
    skip: bool = False       # data.skip_bad_rows
    keep_all: bool = False   # every row is predicted (a test file): never drop one
    dropped: dict[int, str] = dataclasses.field(default_factory=dict)  # row number (from 1) -> reason
    first: Optional[str] = None                                        # the first dropped row's problem

    def found(self, row: int, reason: str, problem: str, fix: str) -> None:
        where = f"{self.source}, row {row}"
        if not self.skip or self.keep_all:
            hint = "" if self.keep_all else " (or set data.skip_bad_rows=true to skip such rows)"
            raise FlaxftError(f"{where}: {problem}; {fix}{hint}")
        self.dropped.setdefault(row, reason)
        self.first = self.first or f"{where}: {problem}"

    def counts(self) -> dict[str, int]:
        """Rows dropped per reason."""
        counts: dict[str, int] = {}
        for reason in self.dropped.values():
            counts[reason] = counts.get(reason, 0) + 1
        return counts

    def report(self) -> None:
        if self.dropped:
            log.warning("%s: skipped %d bad row(s) (%s; data.skip_bad_rows=true); the first: %s", self.source,
                        len(self.dropped), ", ".join(f"{k}: {n}" for k, n in sorted(self.counts().items())),
                        self.first)
