"""The slice of a trace that a replay sends: read lazily, cut to a time window and a request count.

The one place the load generator reads trace files, so switching readers is one line (`_read`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from opscale.model import Request
from opscale.traces import TraceWindow, read_trace

__all__ = ["SliceSummary", "TraceWindow", "scan_slice", "trace_slice"]


def _read(path: Path, format: str | None) -> Iterator[Request]:
    return read_trace(path, format)


def trace_slice(path: Path, format: str | None, window: TraceWindow,
                max_requests: int | None = None) -> Iterator[Request]:
    """The requests of `path` inside `window`, at most `max_requests`, in arrival order, lazily. The trace
    is sorted by arrival, so reading stops at the window's end."""
    return window.select(_read(path, format), max_requests=max_requests)


@dataclass(frozen=True, slots=True)
class SliceSummary:
    requests: int
    first_arrival_s: float | None
    last_arrival_s: float | None


def scan_slice(path: Path, format: str | None, window: TraceWindow, max_requests: int | None = None) -> SliceSummary:
    """One pass over the slice before replaying it: validates every row it will send (a bad row fails
    here, before any traffic) and counts them for the progress bar. Memory: one request at a time."""
    count = 0
    first = last = None
    for request in trace_slice(path, format, window, max_requests):
        if first is None:
            first = request.arrival_s
        last = request.arrival_s
        count += 1
    return SliceSummary(count, first, last)
