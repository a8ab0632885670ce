"""The simple CSV trace format: one request per row, sorted by arrival.

    arrival_s,model,tier,region,prompt_tokens,output_tokens[,request_id]

A header row is required and names the columns (any order; other columns are ignored). `arrival_s`
is seconds from the start of the trace, non-decreasing; token counts are integers >= 1; a missing or
empty `request_id` becomes `<file stem>-<row index>`. Files ending in `.gz` are gzip-compressed.

Reading streams (a file of any size costs one row of memory, plus the set of ids seen) and every
problem raises TraceFormatError as `path:line: field 'x': message`, or, with
`ReadOptions(skip_invalid=True)`, a bad row is counted in `ReadOptions.stats` and skipped (a bad header
always raises). Validation, parsing and that skip-or-raise loop are the ones every trace reader shares
(opscale.traces.reading); this module only knows the columns.
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
from opscale.traces.reading import (
    FieldError,
    ReadOptions,
    file_stem,
    guarded,
    parse_count,
    parse_seconds,
    parse_text,
    validated,
)

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
    has_id = columns.has("request_id")
    stem = file_stem(path)
    seen: set[str] = set()

    def parse(record: object, index: int) -> Request:
        row: list[str] = record  # type: ignore[assignment]
        columns.check_width(row)
        arrival_s = parse_seconds(columns.get(row, "arrival_s"), "arrival_s")
        request_id = (columns.get(row, "request_id").strip() if has_id else "") or f"{stem}-{index}"
        if request_id in seen:
            raise FieldError("request_id", f"{request_id!r} appears twice")
        return Request(
            request_id=request_id,
            model=parse_text(columns.get(row, "model"), "model"),
            tier=parse_text(columns.get(row, "tier"), "tier"),
            region=parse_text(columns.get(row, "region"), "region"),
            arrival_s=arrival_s,
            prompt_tokens=parse_count(columns.get(row, "prompt_tokens"), "prompt_tokens"),
            output_tokens=parse_count(columns.get(row, "output_tokens"), "output_tokens"),
        )

    # An id counts as seen once its row is accepted (the arrival-order check comes after `parse`):
    # the next row is parsed only after this one is handed on.
    for request in validated(path, rows, parse, options, "arrival_s"):
        seen.add(request.request_id)
        yield request
