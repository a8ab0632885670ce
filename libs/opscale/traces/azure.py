"""Azure LLM inference traces, 2023 (one hour; Splitwise) and 2024 (one week), which share a schema:

    TIMESTAMP,ContextTokens,GeneratedTokens
    2023-11-16 18:15:46.6805900,374,44

`TIMESTAMP` is wall-clock time (100 ns resolution; an ISO zone suffix is accepted); a request's
`arrival_s` is its offset from the first row's timestamp. `ContextTokens` is the prompt and
`GeneratedTokens` the output; both must be >= 1. The trace names neither model, tier nor region: they
come from `ReadOptions.labels`. Ids are `<file stem>-<record index>`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO

from opscale.model import Request
from opscale.traces.csv_rows import csv_rows, read_header
from opscale.traces.reading import FieldError, ReadOptions, file_stem, guarded, parse_count, validated
from opscale.traces.wallclock import WallTime, parse_wall_time

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def read_azure_trace(path: str | Path, options: ReadOptions | None = None) -> Iterator[Request]:
    """Yield the requests of an Azure LLM inference trace (2023 or 2024) in arrival order."""
    path = Path(path)
    opts = options or ReadOptions()
    return guarded(path, lambda handle: _read(path, handle, opts))


def _read(path: Path, handle: IO[str], options: ReadOptions) -> Iterator[Request]:
    reader, rows = csv_rows(path, handle)
    columns = read_header(path, reader, COLUMNS)
    labels = options.labels
    stem = file_stem(path)
    origin: list[WallTime] = []  # the first valid row's time, once known

    def parse(record: object, index: int) -> Request:
        row: list[str] = record  # type: ignore[assignment]
        columns.check_width(row)
        try:
            at = parse_wall_time(columns.get(row, "TIMESTAMP"))
        except ValueError as exc:
            raise FieldError("TIMESTAMP", str(exc)) from None
        prompt = parse_count(columns.get(row, "ContextTokens"), "ContextTokens")
        output = parse_count(columns.get(row, "GeneratedTokens"), "GeneratedTokens")
        if not origin:
            origin.append(at)
        arrival_s = at.seconds_since(origin[0])
        if arrival_s < 0:
            raise FieldError("TIMESTAMP", f"{columns.get(row, 'TIMESTAMP').strip()!r} is before the first "
                                          f"row's time; the trace must be sorted by arrival")
        return Request(request_id=f"{stem}-{index}", model=labels.model, tier=labels.tier, region=labels.region,
                       arrival_s=arrival_s, prompt_tokens=prompt, output_tokens=output)

    return validated(path, rows, parse, options, "TIMESTAMP")
