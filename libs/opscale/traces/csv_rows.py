"""Header-addressed CSV rows with their line numbers, for the CSV-based trace readers.

A header problem (empty file, a missing or repeated column) is a fault of the whole file and always
raises; a short row is a fault of its line and goes through the reader's skip-or-raise loop.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from opscale.traces.reading import TraceFormatError


class CsvColumns:
    """Where each named column sits in a row; `get` reads one, raising a line-level error for a short row."""

    def __init__(self, index: dict[str, int]) -> None:
        self.index = index
        self.width = max(index.values()) + 1 if index else 0

    def check_width(self, row: list[str]) -> None:
        if len(row) < self.width:
            raise ValueError(f"expected at least {self.width} columns, got {len(row)}")

    def has(self, name: str) -> bool:
        return name in self.index

    def get(self, row: list[str], name: str) -> str:
        return row[self.index[name]]


def read_header(path: Path, reader: Iterator[list[str]], required: Sequence[str],
                optional: Sequence[str] = ()) -> CsvColumns:
    """Map the header's column names (stripped, compared exactly) to positions."""
    header = next(reader, None)
    if header is None:
        raise TraceFormatError(f"{path}:1: empty file; expected a header row {','.join(required)}")
    names = [h.strip().lstrip("\ufeff") for h in header]
    missing = [c for c in required if c not in names]
    if missing:
        raise TraceFormatError(f"{path}:1: header lacks column(s) {', '.join(repr(c) for c in missing)}; "
                               f"got {','.join(names)}")
    wanted = (*required, *optional)
    duplicated = sorted({n for n in names if names.count(n) > 1 and n in wanted})
    if duplicated:
        raise TraceFormatError(f"{path}:1: column {duplicated[0]!r} appears more than once in the header")
    return CsvColumns({name: names.index(name) for name in wanted if name in names})


def csv_rows(path: Path, handle: IO[str]) -> tuple[Iterator[list[str]], Iterator[tuple[int, list[str]]]]:
    """A csv reader over `handle` (for `read_header`) and the generator of its later non-blank rows as
    `(line, row)`; `line` is the line the row starts on."""
    reader = csv.reader(handle)

    def rows() -> Iterator[tuple[int, list[str]]]:
        while True:
            line = reader.line_num + 1
            try:
                row = next(reader, None)
            except csv.Error as exc:
                raise TraceFormatError(f"{path}:{line}: malformed CSV: {exc}") from None
            if row is None:
                return
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            yield line, row

    return reader, rows()
