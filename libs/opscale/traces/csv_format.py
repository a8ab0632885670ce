"""The simple CSV trace format: one request per row, sorted by arrival.

    arrival_s,model,tier,region,prompt_tokens,output_tokens[,request_id]

A header row is required and names the columns (any order; other columns are ignored). `arrival_s`
is seconds from the start of the trace, non-decreasing; token counts are integers >= 1; a missing or
empty `request_id` becomes `<file stem>-<row index>`. Files ending in `.gz` are gzip-compressed.

Reading streams (a file of any size costs one row of memory, plus the set of ids seen) and every
problem raises TraceFormatError as `path:line: column 'x': message`, or, with
`ReadOptions(skip_invalid=True)`, a bad row is counted in `ReadOptions.stats` and skipped (a bad header
always raises). This module is the trace reader's edge: it opens files, and nothing else.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from opscale.model import Request
from opscale.traces.csv_rows import csv_rows, read_header
from opscale.traces.reading import ReadOptions, ReadStats, TraceFormatError, guarded

REQUIRED_COLUMNS = ("arrival_s", "model", "tier", "region", "prompt_tokens", "output_tokens")
OPTIONAL_COLUMNS = ("request_id",)


def read_csv_trace(path: str | Path, options: ReadOptions | None = None) -> Iterator[Request]:
    """Yield the requests of the CSV trace at `path`, in file order (which must be arrival order)."""
    path = Path(path)
    options = options or ReadOptions()
    yield from guarded(path, lambda handle: _read(path, handle, options))


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


def _read(path: Path, handle: IO[str], options: ReadOptions) -> Iterator[Request]:
    reader, rows = csv_rows(path, handle)
    columns = read_header(path, reader, REQUIRED_COLUMNS, OPTIONAL_COLUMNS)
    col = columns.index
    width = columns.width
    id_col = col.get("request_id")
    stem = path.name.removesuffix(".gz").removesuffix(".csv")
    stats = options.stats if options.stats is not None else ReadStats()
    seen: set[str] = set()
    last_s = -math.inf
    index = 0
    for line, row in rows:
        stats.records += 1
        where = f"{path}:{line}"
        try:
            if len(row) < width:
                raise TraceFormatError(f"{where}: expected at least {width} columns, got {len(row)}")
            arrival_s = _float(row[col["arrival_s"]], where, "arrival_s")
            if arrival_s < last_s:
                raise TraceFormatError(f"{where}: column 'arrival_s': {arrival_s!r} is before the previous "
                                       f"row's {last_s!r}; the trace must be sorted by arrival")
            request_id = row[id_col].strip() if id_col is not None else ""
            if not request_id:
                request_id = f"{stem}-{index}"
            if request_id in seen:
                raise TraceFormatError(f"{where}: column 'request_id': {request_id!r} appears twice")
            request = Request(
                request_id=request_id,
                model=_text(row[col["model"]], where, "model"),
                tier=_text(row[col["tier"]], where, "tier"),
                region=_text(row[col["region"]], where, "region"),
                arrival_s=arrival_s,
                prompt_tokens=_count(row[col["prompt_tokens"]], where, "prompt_tokens"),
                output_tokens=_count(row[col["output_tokens"]], where, "output_tokens"),
            )
        except TraceFormatError as exc:
            if not options.skip_invalid:
                raise
            stats.note_invalid(str(exc))
            index += 1
            continue
        last_s = arrival_s
        seen.add(request_id)
        stats.requests += 1
        yield request
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
