"""The replay clock: seconds since the replay started, and sleeping until a time on it.

The scheduler reads time only through a `ReplayClock`, so its tests can run on `VirtualClock` (time
moves only when the scheduler sleeps) and check send times exactly, with no wall-clock tolerance.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class ReplayClock(Protocol):
    def now(self) -> float:
        """Seconds since the replay started."""
        ...

    async def sleep_until(self, at_s: float) -> None:
        """Return at or after `at_s` (at once when it has passed)."""
        ...


class MonotonicClock:
    """The real clock: `time.perf_counter`, which never jumps (NTP adjustments do not move it)."""

    def __init__(self) -> None:
        self._origin = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self._origin

    async def sleep_until(self, at_s: float) -> None:
        delay_s = at_s - self.now()
        if delay_s > 0:
            await asyncio.sleep(delay_s)


class VirtualClock:
    """A clock for tests: sleeping moves time forward to the wake-up time at once (and yields to the
    event loop, so other tasks run as they would while a real clock slept)."""

    def __init__(self, start_s: float = 0.0) -> None:
        self.t = start_s

    def now(self) -> float:
        return self.t

    async def sleep_until(self, at_s: float) -> None:
        self.t = max(self.t, at_s)
        await asyncio.sleep(0)
