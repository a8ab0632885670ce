"""The simple CSV trace format: one request per row, sorted by arrival.

    arrival_s,model,tier,region,prompt_tokens,output_tokens[,request_id]

A header row is required and names the columns (any order; other columns are ignored). `arrival_s`
is seconds from the start of the trace, non-decreasing; token counts are integers >= 1; a missing or
empty `request_id` becomes `<file stem>-<row index>`. Files ending in `.gz` are gzip-compressed.

Reading streams (a file of any size costs one row of memory, plus the set of ids seen) and every
problem raises TraceFormatError as `path:line: column 'x': message`. This module is the trace
reader's edge: it opens files, and nothing else.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from opscale.model import Request

REQUIRED_COLUMNS = ("arrival_s", "model", "tier", "region", "prompt_tokens", "output_tokens")
OPTIONAL_COLUMNS = ("request_id",)


class TraceFormatError(ValueError):
    """A trace file that cannot be read as a trace; the message names the file, line and column."""


def read_csv_trace(path: str | Path) -> Iterator[Request]:
    """Yield the requests of the CSV trace at `path`, in file order (which must be arrival order)."""
    path = Path(path)
    try:
        handle = _open(path, "r")
    except OSError as exc:
        raise TraceFormatError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    with handle:
        try:
            yield from _read(path, handle)
        except UnicodeDecodeError as exc:
            raise TraceFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except csv.Error as exc:
            raise TraceFormatError(f"{path}: malformed CSV: {exc}") from exc


def write_csv_trace(path: str | Path, requests: Iterable[Request]) -> int:
    """Write `requests` (sorted by arrival) as a CSV trace with a request_id column; return the count.

    Arrival times are written with full precision (repr), so reading the file back gives equal requests
    (prefix hashes are not part of the format).
    """
    path = Path(path)
    count = 0
    last_s = -math.inf
    with _open(path, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow((*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS))
        for r in requests:
            if r.arrival_s < last_s:
                raise ValueError(f"request {r.request_id}: arrival_s {r.arrival_s!r} is before the previous "
                                 f"request's {last_s!r}; a trace must be sorted by arrival")
            last_s = r.arrival_s
            writer.writerow((repr(r.arrival_s), r.model, r.tier, r.region, r.prompt_tokens, r.output_tokens,
                             r.request_id))
            count += 1
    return count


def _open(path: Path, mode: str) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8", newline="")
    return path.open(mode, encoding="utf-8", newline="")


def _read(path: Path, handle: IO[str]) -> Iterator[Request]:
    reader = csv.reader(handle)
    header = next(reader, None)
    if header is None:
        raise TraceFormatError(f"{path}:1: empty file; expected a header row {','.join(REQUIRED_COLUMNS)}")
    names = [h.strip() for h in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise TraceFormatError(f"{path}:1: header lacks column(s) {', '.join(repr(c) for c in missing)}; "
                               f"got {','.join(names)}")
    duplicated = sorted({n for n in names if names.count(n) > 1 and n in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)})
    if duplicated:
        raise TraceFormatError(f"{path}:1: column {duplicated[0]!r} appears more than once in the header")
    col = {name: names.index(name) for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if name in names}
    width = max(col.values()) + 1
    id_col = col.get("request_id")
    stem = path.name.removesuffix(".gz").removesuffix(".csv")
    seen: set[str] = set()
    last_s = -math.inf
    index = 0
    while True:
        line = reader.line_num + 1  # the line this row starts on
        row = next(reader, None)
        if row is None:
            return
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        where = f"{path}:{line}"
        if len(row) < width:
            raise TraceFormatError(f"{where}: expected at least {width} columns, got {len(row)}")
        arrival_s = _float(row[col["arrival_s"]], where, "arrival_s")
        if arrival_s < last_s:
            raise TraceFormatError(f"{where}: column 'arrival_s': {arrival_s!r} is before the previous row's "
                                   f"{last_s!r}; the trace must be sorted by arrival")
        last_s = arrival_s
        request_id = row[id_col].strip() if id_col is not None else ""
        if not request_id:
            request_id = f"{stem}-{index}"
        if request_id in seen:
            raise TraceFormatError(f"{where}: column 'request_id': {request_id!r} appears twice")
        seen.add(request_id)
        yield Request(
            request_id=request_id,
            model=_text(row[col["model"]], where, "model"),
            tier=_text(row[col["tier"]], where, "tier"),
            region=_text(row[col["region"]], where, "region"),
            arrival_s=arrival_s,
            prompt_tokens=_count(row[col["prompt_tokens"]], where, "prompt_tokens"),
            output_tokens=_count(row[col["output_tokens"]], where, "output_tokens"),
        )
        index += 1


def _float(raw: str, where: str, column: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise TraceFormatError(f"{where}: column {column!r}: expected a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise TraceFormatError(f"{where}: column {column!r}: expected a finite number >= 0, got {raw!r}")
    return value


def _count(raw: str, where: str, column: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise TraceFormatError(f"{where}: column {column!r}: expected an integer >= 1, got {raw!r}") from None
    if value < 1:
        raise TraceFormatError(f"{where}: column {column!r}: expected an integer >= 1, got {raw!r}")
    return value


def _text(raw: str, where: str, column: str) -> str:
    value = raw.strip()
    if not value:
        raise TraceFormatError(f"{where}: column {column!r}: must not be empty")
    return value
