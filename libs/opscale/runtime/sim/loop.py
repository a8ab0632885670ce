"""A deterministic discrete-event loop on a virtual clock.

Events at the same time run in the order they were scheduled (a sequence number breaks ties), so a
run is a pure function of its inputs and seed.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any


class EventLoop:
    def __init__(self, start_s: float = 0.0) -> None:
        self.now_s = start_s
        self._queue: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = 0
        self.events_run = 0

    def at(self, time_s: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` at `time_s` (never in the past)."""
        self._seq += 1
        heapq.heappush(self._queue, (max(time_s, self.now_s), self._seq, fn, args))

    def after(self, delay_s: float, fn: Callable[..., Any], *args: Any) -> None:
        self.at(self.now_s + delay_s, fn, *args)

    def every(self, period_s: float, fn: Callable[[float], Any], start_s: float | None = None,
              until_s: float = float("inf")) -> None:
        """Call `fn(now_s)` every `period_s` seconds (on the virtual clock, never a count of loop turns)."""

        def fire() -> None:
            fn(self.now_s)
            if self.now_s + period_s <= until_s:
                self.after(period_s, fire)

        self.at(self.now_s if start_s is None else start_s, fire)

    def run(self, until_s: float, on_progress: Callable[[float], None] | None = None,
            progress_every_s: float = 60.0) -> None:
        next_progress = self.now_s + progress_every_s
        queue = self._queue
        while queue and queue[0][0] <= until_s:
            time_s, _, fn, args = heapq.heappop(queue)
            self.now_s = time_s
            fn(*args)
            self.events_run += 1
            if on_progress is not None and time_s >= next_progress:
                on_progress(time_s)
                next_progress = time_s + progress_every_s
        self.now_s = max(self.now_s, until_s)

    def pending(self) -> int:
        return len(self._queue)
