"""The slice of a trace that a replay sends: read lazily, cut to a time window and a request count.

The one place the load generator reads trace files, so switching readers is one line (`_read`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from opscale.model import Request
from opscale.traces import read_trace


def _read(path: Path, format: str | None) -> Iterator[Request]:
    return read_trace(path, format)


@dataclass(frozen=True, slots=True)
class TraceWindow:
    """Trace seconds [start_s, end_s): requests arriving in it are replayed."""

    start_s: float | None = None
    end_s: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> TraceWindow:
        """`START:END` in trace seconds; either side may be empty (`600:`, `:3600`)."""
        if text is None or not text.strip():
            return cls()
        start_text, sep, end_text = text.partition(":")
        if not sep:
            raise ValueError(f"--window {text!r}: expected START:END in trace seconds, e.g. 3600:7200 or 600:")
        start = _seconds(start_text, "START", text)
        end = _seconds(end_text, "END", text)
        if start is not None and end is not None and end <= start:
            raise ValueError(f"--window {text!r}: END must be after START")
        return cls(start, end)

    def describe(self) -> str:
        return f"{'' if self.start_s is None else f'{self.start_s:g}'}:{'' if self.end_s is None else f'{self.end_s:g}'}"


def _seconds(raw: str, name: str, text: str) -> float | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"--window {text!r}: {name} {raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"--window {text!r}: {name} must be a finite number >= 0")
    return value


def trace_slice(path: Path, format: str | None, window: TraceWindow,
                max_requests: int | None = None) -> Iterator[Request]:
    """The requests of `path` inside `window`, at most `max_requests`, in arrival order, lazily. The trace
    is sorted by arrival, so reading stops at the window's end."""
    requests = _read(path, format)
    if window.start_s is not None:
        requests = itertools.dropwhile(lambda r: r.arrival_s < window.start_s, requests)  # type: ignore[operator]
    if window.end_s is not None:
        requests = itertools.takewhile(lambda r: r.arrival_s < window.end_s, requests)  # type: ignore[operator]
    if max_requests is not None:
        requests = itertools.islice(requests, max_requests)
    return requests


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
