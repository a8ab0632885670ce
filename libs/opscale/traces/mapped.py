"""Any CSV (with a header) or JSONL trace, read through a column mapping that says which column holds
the arrival time (and its unit), the prompt and output token counts, and optionally model, tier,
region, request id and prefix block ids.

Arrivals in seconds, milliseconds or microseconds are kept as numbers from the trace's own origin
unless `rebase` asks for offsets from the first record; wall-clock datetimes are always offsets from
the first record. Prefix ids are a JSON list in JSONL, or integers separated by spaces, commas,
semicolons or `|` (brackets allowed) in a CSV cell. Missing labels come from `ReadOptions.labels`.

Memory: one record at a time, plus the set of ids seen when the mapping names an id column (ids must
be unique).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from opscale.model import Request
from opscale.traces.csv_rows import CsvColumns, csv_rows, read_header
from opscale.traces.jsonl_rows import as_object, jsonl_records, required
from opscale.traces.mooncake import parse_hash_ids
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
from opscale.traces.wallclock import WallTime, parse_wall_time

_UNIT_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_ID_SEPARATORS = re.compile(r"[\s,;|]+")


class ColumnMapping(BaseModel):
    """Which column (CSV header name or JSON key) holds each request field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arrival: str = Field(min_length=1, description="Column of the arrival time.")
    arrival_unit: Literal["s", "ms", "us", "datetime"] = Field(
        "s", description="Unit of the arrival column: seconds, milliseconds, microseconds, or a wall-clock "
                         "date and time (YYYY-MM-DD HH:MM:SS[.fraction][zone]).")
    rebase: bool = Field(False, description="Make numeric arrivals offsets from the first record "
                                            "(datetimes always are).")
    prompt_tokens: str = Field(min_length=1, description="Column of the prompt token count.")
    output_tokens: str = Field(min_length=1, description="Column of the output token count.")
    model: str | None = Field(None, description="Column of the model name (default: the reader's label).")
    tier: str | None = Field(None, description="Column of the tier (default: the reader's label).")
    region: str | None = Field(None, description="Column of the origin region (default: the reader's label).")
    request_id: str | None = Field(None, description="Column of the request id (default: <file stem>-<index>).")
    prefix_hashes: str | None = Field(None, description="Column of the prompt's prefix block ids.")

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        seen: dict[str, str] = {}
        for key, column in self.columns().items():
            if column in seen:
                raise ValueError(f"column {column!r} is mapped to both {seen[column]!r} and {key!r}")
            seen[column] = key
        return self

    def columns(self) -> dict[str, str]:
        """Request field -> column, for the fields this mapping names."""
        fields = ("arrival", "prompt_tokens", "output_tokens", "model", "tier", "region", "request_id",
                  "prefix_hashes")
        return {f: getattr(self, f) for f in fields if getattr(self, f) is not None}


def read_mapped_csv(path: str | Path, mapping: ColumnMapping, options: ReadOptions | None = None) -> Iterator[Request]:
    """Yield the requests of a headed CSV trace through `mapping`, in arrival order."""
    path = Path(path)
    opts = options or ReadOptions()

    def records(handle: IO[str]) -> Iterator[Request]:
        reader, rows = csv_rows(path, handle)
        # Every column the mapping names is read from each row, so the header must have it; only the
        # prefix ids may be absent (a trace without them).
        named = mapping.columns()
        optional = [named["prefix_hashes"]] if "prefix_hashes" in named else []
        required_columns = [c for c in named.values() if c not in optional]
        columns = read_header(path, reader, required_columns, optional)
        return validated(path, rows, _parser(path, mapping, opts, _csv_getter(columns), _csv_hashes),
                         opts, mapping.arrival)

    return guarded(path, records)


def read_mapped_jsonl(path: str | Path, mapping: ColumnMapping,
                      options: ReadOptions | None = None) -> Iterator[Request]:
    """Yield the requests of a JSONL trace through `mapping`, in arrival order."""
    path = Path(path)
    opts = options or ReadOptions()

    def get(record: object, column: str, optional: bool) -> Any:
        obj = as_object(record)
        return obj.get(column) if optional else required(obj, column)

    def records(handle: IO[str]) -> Iterator[Request]:
        return validated(path, jsonl_records(handle), _parser(path, mapping, opts, get, _json_hashes),
                         opts, mapping.arrival)

    return guarded(path, records)


Getter = Callable[[object, str, bool], Any]


def _csv_getter(columns: CsvColumns) -> Getter:
    def get(record: object, column: str, optional: bool) -> Any:
        row: list[str] = record  # type: ignore[assignment]
        columns.check_width(row)
        if optional and not columns.has(column):
            return None
        return columns.get(row, column)

    return get


def _csv_hashes(raw: object, column: str) -> tuple[int, ...]:
    text = str(raw).strip().strip("[]").strip() if raw is not None else ""
    if not text:
        return ()
    try:
        return tuple(int(part) for part in _ID_SEPARATORS.split(text) if part)
    except ValueError:
        raise FieldError(column, f"expected integers separated by spaces, commas or semicolons, "
                                 f"got {str(raw)[:60]!r}") from None


def _json_hashes(raw: object, column: str) -> tuple[int, ...]:
    return _csv_hashes(raw, column) if isinstance(raw, str) else parse_hash_ids(raw, column)


def _parser(path: Path, mapping: ColumnMapping, options: ReadOptions, get: Getter,
            hashes: Callable[[object, str], tuple[int, ...]]) -> Callable[[object, int], Request]:
    labels = options.labels
    stem = file_stem(path)
    seen_ids: set[str] = set()
    origin: list[float | WallTime] = []

    def arrival(record: object) -> float:
        raw = get(record, mapping.arrival, False)
        if mapping.arrival_unit == "datetime":
            try:
                at = parse_wall_time(str(raw))
            except ValueError as exc:
                raise FieldError(mapping.arrival, str(exc)) from None
            if not origin:
                origin.append(at)
            start = origin[0]
            assert isinstance(start, WallTime)
            offset_s = at.seconds_since(start)
            if offset_s < 0:
                raise FieldError(mapping.arrival, f"{raw!r} is before the first record's time; the trace must "
                                                  f"be sorted by arrival")
            return offset_s
        value_s = parse_seconds(raw, mapping.arrival, unit_s=_UNIT_S[mapping.arrival_unit])
        if not mapping.rebase:
            return value_s
        if not origin:
            origin.append(value_s)
        return value_s - float(origin[0])  # type: ignore[arg-type]

    def label(record: object, column: str | None, default: str) -> str:
        if column is None:
            return default
        return parse_text(get(record, column, False), column)

    def parse(record: object, index: int) -> Request:
        arrival_s = arrival(record)
        prompt = parse_count(get(record, mapping.prompt_tokens, False), mapping.prompt_tokens)
        output = parse_count(get(record, mapping.output_tokens, False), mapping.output_tokens)
        request_id = f"{stem}-{index}"
        if mapping.request_id is not None:
            request_id = parse_text(get(record, mapping.request_id, False), mapping.request_id)
            if request_id in seen_ids:
                raise FieldError(mapping.request_id, f"{request_id!r} appears twice")
        prefix = hashes(get(record, mapping.prefix_hashes, True), mapping.prefix_hashes) \
            if mapping.prefix_hashes is not None else ()
        request = Request(
            request_id=request_id,
            model=label(record, mapping.model, labels.model),
            tier=label(record, mapping.tier, labels.tier),
            region=label(record, mapping.region, labels.region),
            arrival_s=arrival_s, prompt_tokens=prompt, output_tokens=output, prefix_hashes=prefix)
        if mapping.request_id is not None:
            seen_ids.add(request_id)
        return request

    return parse
