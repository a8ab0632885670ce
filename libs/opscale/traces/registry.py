"""Registry of trace formats: a format name -> its reader, and detection of the format from a file's
first record when the caller does not name one."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path

from opscale.model import Request
from opscale.traces import azure, burstgpt, csv_format, jsonl_format, mooncake
from opscale.traces.mapped import ColumnMapping, read_mapped_csv, read_mapped_jsonl
from opscale.traces.reading import ReadOptions, TraceFormatError, open_text


class TraceFormat(StrEnum):
    CSV = "csv"  # opscale's CSV
    JSONL = "jsonl"  # opscale's JSON Lines
    AZURE = "azure"  # Azure LLM inference 2023
    AZURE_2024 = "azure2024"  # Azure LLM inference 2024 (same schema; read alike)
    BURSTGPT = "burstgpt"
    MOONCAKE = "mooncake"
    MAPPED_CSV = "mapped-csv"  # any headed CSV, with a ColumnMapping
    MAPPED_JSONL = "mapped-jsonl"  # any JSONL, with a ColumnMapping


Reader = Callable[[Path, ReadOptions, ColumnMapping | None], Iterator[Request]]

_READERS: dict[TraceFormat, Reader] = {
    TraceFormat.CSV: lambda path, options, _: csv_format.read_csv_trace(path, options),
    TraceFormat.JSONL: lambda path, options, _: jsonl_format.read_jsonl_trace(path, options),
    TraceFormat.AZURE: lambda path, options, _: azure.read_azure_trace(path, options),
    TraceFormat.AZURE_2024: lambda path, options, _: azure.read_azure_trace(path, options),
    TraceFormat.BURSTGPT: lambda path, options, _: burstgpt.read_burstgpt_trace(path, options),
    TraceFormat.MOONCAKE: lambda path, options, _: mooncake.read_mooncake_trace(path, options),
    TraceFormat.MAPPED_CSV: lambda path, options, mapping: read_mapped_csv(path, _need(mapping), options),
    TraceFormat.MAPPED_JSONL: lambda path, options, mapping: read_mapped_jsonl(path, _need(mapping), options),
}
_NEEDS_MAPPING = (TraceFormat.MAPPED_CSV, TraceFormat.MAPPED_JSONL)


def known_formats() -> str:
    return ", ".join(f.value for f in TraceFormat)


def trace_format(name: str) -> TraceFormat:
    """The format called `name`; ValueError listing the known ones otherwise."""
    try:
        return TraceFormat(name.strip().lower())
    except ValueError:
        raise ValueError(f"unknown trace format {name!r}; known formats: {known_formats()}") from None


def read_trace(path: str | Path, fmt: str | None = None, options: ReadOptions | None = None,
               mapping: ColumnMapping | None = None) -> Iterator[Request]:
    """Yield the requests of the trace at `path` in arrival order, read as `fmt` (detected from the
    file when None; a mapping implies a mapped format)."""
    path = Path(path)
    if fmt is None:
        chosen = detect_format(path, mapped=mapping is not None)
    else:
        chosen = trace_format(fmt)
    if chosen in _NEEDS_MAPPING and mapping is None:
        raise ValueError(f"trace format {chosen.value!r} needs a column mapping (which column is the arrival, "
                         f"the prompt and the output tokens)")
    return _READERS[chosen](path, options or ReadOptions(), mapping)


def _need(mapping: ColumnMapping | None) -> ColumnMapping:
    assert mapping is not None  # read_trace checked
    return mapping


def detect_format(path: str | Path, *, mapped: bool = False) -> TraceFormat:
    """Tell the format from the header (CSV) or the first record (JSONL); `mapped`: the caller has a
    column mapping, so any CSV or JSONL that is not a known format is read through it."""
    path = Path(path)
    first, second = _first_lines(path)
    if first is None:
        raise TraceFormatError(f"{path}: empty file; cannot tell its trace format")
    if first.lstrip().startswith("{"):
        try:
            record = json.loads(first)
        except (ValueError, RecursionError):  # not JSON, a number too long to convert, nested too deeply
            record = None
        if isinstance(record, dict):
            keys = set(record)
            if mapped:
                return TraceFormat.MAPPED_JSONL
            if set(mooncake.FIELDS) <= keys:
                return TraceFormat.MOONCAKE
            if set(jsonl_format.OPSCALE_JSONL_MAPPING.columns().values()) - {"prefix_hashes"} <= keys:
                return TraceFormat.JSONL
        return _unknown(path, first)
    header = {name.strip().lstrip("\ufeff") for name in next(csv.reader([first]), [])}
    if mapped:
        return TraceFormat.MAPPED_CSV
    if set(azure.COLUMNS) <= header:
        return TraceFormat.AZURE_2024 if second is not None and second.lstrip().startswith("2024") \
            else TraceFormat.AZURE
    if set(burstgpt.REQUIRED_COLUMNS) <= header:
        return TraceFormat.BURSTGPT
    if set(csv_format.REQUIRED_COLUMNS) <= header:
        return TraceFormat.CSV
    return _unknown(path, first)


def _unknown(path: Path, first: str) -> TraceFormat:
    shown = first.strip()
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise TraceFormatError(f"{path}: cannot tell the trace format from its first line {shown!r}; name one with "
                           f"--format ({known_formats()}; the mapped formats need a column mapping)")


def _first_lines(path: Path) -> tuple[str | None, str | None]:
    """The first two non-blank lines (each read up to 64 KiB: enough for a header or one record)."""
    found: list[str] = []
    try:
        with open_text(path) as handle:
            while len(found) < 2:
                line = handle.readline(65_536)
                if not line:
                    break
                if line.strip():
                    found.append(line)
    except UnicodeDecodeError as exc:
        raise TraceFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except (OSError, EOFError) as exc:
        raise TraceFormatError(f"{path}: cannot read: {exc}") from exc
    return (found[0] if found else None), (found[1] if len(found) > 1 else None)
