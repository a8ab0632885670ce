"""Clocks: the only module that reads the wall clock.

The decision core never reads time; it receives `now_s` from a shell, which gets it from a `Clock`.
`WallClock` gives epoch seconds so that times stamped in different processes (a router's request
record, an agent's heartbeat) can be compared. `VirtualClock` is set by the simulator's event loop and
by tests; it never moves backwards, so a policy can rely on `now_s` being non-decreasing.
"""

from __future__ import annotations

import math
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Something that tells the current time in seconds."""

    def now_s(self) -> float: ...


class WallClock:
    """Seconds since the Unix epoch (time.time()), comparable across processes and hosts with NTP."""

    __slots__ = ()

    def now_s(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "WallClock()"


class VirtualClock:
    """A settable clock for simulation and tests. Time only moves forward.

    >>> clock = VirtualClock(start_s=10.0)
    >>> clock.advance(2.5)
    12.5
    >>> clock.set(20.0)
    20.0
    """

    __slots__ = ("_now_s",)

    def __init__(self, start_s: float = 0.0) -> None:
        self._now_s = _checked_time(start_s, "start_s")

    def now_s(self) -> float:
        return self._now_s

    def set(self, now_s: float) -> float:
        """Move to `now_s`; moving backwards is refused because policies assume monotonic time."""
        value = _checked_time(now_s, "now_s")
        if value < self._now_s:
            raise ValueError(f"VirtualClock cannot move backwards: now_s={value!r} < current {self._now_s!r}")
        self._now_s = value
        return value

    def advance(self, delta_s: float) -> float:
        """Move forward by `delta_s` seconds (>= 0) and return the new time."""
        if not (math.isfinite(delta_s) and delta_s >= 0):
            raise ValueError(f"VirtualClock.advance: delta_s must be a finite number >= 0, got {delta_s!r}")
        return self.set(self._now_s + delta_s)

    def __repr__(self) -> str:
        return f"VirtualClock(now_s={self._now_s!r})"


def _checked_time(value: float, label: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"VirtualClock: {label} must be a finite number, got {value!r}")
    return float(value)
