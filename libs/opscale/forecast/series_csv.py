"""Read one evenly spaced numeric series from a CSV file (optionally gzip'd) for backtests.

The file has a header. The series is the column named by `column`, else the first of `rate`, `rps`,
`value`, `arrival_rps`, else the last column. Empty cells and `nan` are missing points; anything else
that is not a non-negative number is an error naming the file, line and column.
"""

from __future__ import annotations

import csv
import gzip
import math
from pathlib import Path

import numpy as np

PREFERRED_COLUMNS = ("rate", "rps", "value", "arrival_rps")


def load_series_csv(path: Path, column: str | None = None) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"series file {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="") as handle:  # type: ignore[operator]
            reader = csv.reader(handle)
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise ValueError(f"{path}: empty file; expected a header line and one value per line")
            index = _column_index(path, header, column)
            values: list[float] = []
            for line_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                values.append(_cell(path, line_no, header[index], row[index] if index < len(row) else ""))
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read as CSV ({exc})") from None
    if not values:
        raise ValueError(f"{path}: no data lines after the header")
    return np.array(values, dtype=float)


def _column_index(path: Path, header: list[str], column: str | None) -> int:
    if column is not None:
        if column not in header:
            raise ValueError(f"{path}: no column {column!r}; columns are {', '.join(header)}")
        return header.index(column)
    for name in PREFERRED_COLUMNS:
        if name in header:
            return header.index(name)
    return len(header) - 1


def _cell(path: Path, line_no: int, column: str, text: str) -> float:
    text = text.strip()
    if text == "" or text.lower() == "nan":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path}:{line_no}: column {column!r}: {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{path}:{line_no}: column {column!r}: {text!r} is not a non-negative number")
    return value
