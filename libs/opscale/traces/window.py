"""The slice of a trace that a run replays: arrivals in [start_s, end_s) of trace time, at most a number
of requests. One definition for `opscale trace`, `opscale simulate` and `opscale loadgen replay`, so the
simulator and the load generator replay exactly the same requests from the same `--window`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from opscale.model import Request
from opscale.traces.transforms import time_window


@dataclass(frozen=True, slots=True)
class TraceWindow:
    """Trace seconds [start_s, end_s); either bound may be open (None)."""

    start_s: float | None = None
    end_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("start_s", "end_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"trace window {name} must be a finite number of seconds >= 0, got {value!r}")
        if self.start_s is not None and self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"END ({self.end_s:g} s) must be after START ({self.start_s:g} s)")

    @classmethod
    def parse(cls, text: str | None, option: str = "--window") -> TraceWindow:
        """`START:END` in trace seconds; either side may be empty (`600:`, `:3600`); None or '' is the
        whole trace. The error names `option` and the bad part."""
        if text is None or not text.strip():
            return cls()
        start_text, sep, end_text = text.partition(":")
        if not sep:
            raise ValueError(f"{option} {text!r}: expected START:END in trace seconds, e.g. 3600:7200 or 600:")
        try:
            return cls(_seconds(start_text, "START"), _seconds(end_text, "END"))
        except ValueError as exc:
            raise ValueError(f"{option} {text!r}: {exc}") from None

    @property
    def is_whole(self) -> bool:
        return self.start_s is None and self.end_s is None

    def describe(self) -> str:
        start = "" if self.start_s is None else f"{self.start_s:g}"
        end = "" if self.end_s is None else f"{self.end_s:g}"
        return f"{start}:{end}"

    def select(self, requests: Iterable[Request], *, rebase: bool = False,
               max_requests: int | None = None) -> Iterator[Request]:
        """The requests arriving in the window (at most `max_requests`), lazily; reading stops at the
        window's end (traces are sorted by arrival). `rebase` moves the window's start to time 0."""
        selected: Iterator[Request] = iter(requests)
        if not self.is_whole:
            start = self.start_s if self.start_s is not None else 0.0
            end = self.end_s if self.end_s is not None else math.inf
            selected = time_window(selected, start, end, rebase=rebase)
        if max_requests is not None:
            if max_requests < 0:
                raise ValueError(f"max_requests must be >= 0, got {max_requests}")
            selected = itertools.islice(selected, max_requests)
        return selected


def _seconds(raw: str, name: str) -> float | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} {raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0")
    return value
