"""BurstGPT traces (HPMLL/BurstGPT, `BurstGPT_*.csv`): ChatGPT and GPT-4 requests through Azure OpenAI.

    Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type
    5,1,0.9,ChatGPT,472,18,490,Conversation log

`Timestamp` is seconds from the start of the trace and is kept as `arrival_s` unchanged. `Model`
becomes the request's model; tier and region come from `ReadOptions.labels`. `Request tokens` is the
prompt (>= 1) and `Response tokens` the output. Only `Timestamp`, `Model`, `Request tokens` and
`Response tokens` are required; the other columns are ignored.

Failed requests: BurstGPT logs a request that failed with `Response tokens` = 0. The rule here is to
**count and skip** them (`ReadStats.failed`), not to replay them as one-token requests: a failure's
cost on the original service is unknown, and inventing a token would bias output-length statistics.
Ids are `<file stem>-<record index>`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO

from opscale.model import Request
from opscale.traces.csv_rows import csv_rows, read_header
from opscale.traces.reading import (
    ReadOptions,
    RecordFailed,
    file_stem,
    guarded,
    parse_count,
    parse_seconds,
    parse_text,
    validated,
)

REQUIRED_COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens")
OPTIONAL_COLUMNS = ("Session ID", "Elapsed time", "Total tokens", "Log Type")


def read_burstgpt_trace(path: str | Path, options: ReadOptions | None = None) -> Iterator[Request]:
    """Yield the requests of a BurstGPT trace in arrival order; zero-token responses are counted as
    failed and skipped."""
    path = Path(path)
    opts = options or ReadOptions()
    return guarded(path, lambda handle: _read(path, handle, opts))


def _read(path: Path, handle: IO[str], options: ReadOptions) -> Iterator[Request]:
    reader, rows = csv_rows(path, handle)
    columns = read_header(path, reader, REQUIRED_COLUMNS, OPTIONAL_COLUMNS)
    labels = options.labels
    stem = file_stem(path)

    def parse(record: object, index: int) -> Request:
        row: list[str] = record  # type: ignore[assignment]
        columns.check_width(row)
        arrival_s = parse_seconds(columns.get(row, "Timestamp"), "Timestamp")
        model = parse_text(columns.get(row, "Model"), "Model")
        prompt = parse_count(columns.get(row, "Request tokens"), "Request tokens")
        output = parse_count(columns.get(row, "Response tokens"), "Response tokens", minimum=0)
        if output == 0:
            raise RecordFailed
        return Request(request_id=f"{stem}-{index}", model=model, tier=labels.tier, region=labels.region,
                       arrival_s=arrival_s, prompt_tokens=prompt, output_tokens=output)

    return validated(path, rows, parse, options, "Timestamp")
