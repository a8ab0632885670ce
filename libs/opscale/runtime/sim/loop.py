"""A deterministic discrete-event loop on a virtual clock.

Events at the same time run in the order they were scheduled (a sequence number breaks ties), so a
run is a pure function of its inputs and seed. A shell that delivers some work itself, outside the
queue (the simulation's batched request records), takes a sequence number for each item with
`take_seq` and compares it with `current_seq`, so that work keeps the place in that order it would
have had as an event. Hooks registered with `on_stop` run whenever `run` returns, for such a shell to
catch up to the time the loop stopped at.

This is the innermost loop of every simulation: it avoids per-event allocations beyond the queue
entry itself, and `at` / `after` are written out rather than calling each other.

While `run` runs, Python's cyclic garbage collector makes a pass every GC_PASS_EVERY net allocations
instead of its default 700 (the process's own setting is put back when `run` returns). A simulation
makes millions of short-lived objects (queue entries, plans, outcomes) that reference counting frees,
and next to no reference cycles (a 100k-request run leaves a few hundred objects to the collector), so
at the default cadence the collector spends about 5% of a run finding nothing. Cycles are still
collected, only later; nothing a run reports depends on when.
"""

from __future__ import annotations

import gc
import heapq
from collections.abc import Callable
from typing import Any

GC_PASS_EVERY = 50_000  # net allocations of container objects between two youngest-generation passes


class EventLoop:
    __slots__ = ("now_s", "current_seq", "events_run", "_queue", "_seq", "_on_stop")

    def __init__(self, start_s: float = 0.0) -> None:
        self.now_s = start_s
        self.current_seq = 0  # sequence number of the event running now (0 outside any event)
        self.events_run = 0
        self._queue: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = 0
        self._on_stop: list[Callable[[float], None]] = []

    def at(self, time_s: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` at `time_s` (never in the past)."""
        self._seq += 1
        now_s = self.now_s
        heapq.heappush(self._queue, (time_s if time_s > now_s else now_s, self._seq, fn, args))

    def after(self, delay_s: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` `delay_s` seconds from now (a negative delay means now)."""
        self._seq += 1
        now_s = self.now_s
        time_s = now_s + delay_s
        heapq.heappush(self._queue, (time_s if time_s > now_s else now_s, self._seq, fn, args))

    def take_seq(self) -> int:
        """A sequence number, as the next scheduled event would get, for work delivered outside the queue."""
        self._seq += 1
        return self._seq

    def every(self, period_s: float, fn: Callable[[float], Any], start_s: float | None = None,
              until_s: float = float("inf")) -> None:
        """Call `fn(now_s)` every `period_s` seconds (on the virtual clock, never a count of loop turns)."""

        def fire() -> None:
            fn(self.now_s)
            if self.now_s + period_s <= until_s:
                self.after(period_s, fire)

        self.at(self.now_s if start_s is None else start_s, fire)

    def on_stop(self, hook: Callable[[float], None]) -> None:
        """Call `hook(until_s)` each time `run` returns, after every event due by until_s has run."""
        self._on_stop.append(hook)

    def run(self, until_s: float, on_progress: Callable[[float], None] | None = None,
            progress_every_s: float = 60.0) -> None:
        next_progress = self.now_s + progress_every_s if on_progress is not None else float("inf")
        queue = self._queue
        pop = heapq.heappop
        ran = 0
        young, middle, old = gc.get_threshold()
        gc.set_threshold(max(young, GC_PASS_EVERY), middle, old)
        try:
            while queue and queue[0][0] <= until_s:
                time_s, seq, fn, args = pop(queue)
                self.now_s = time_s
                self.current_seq = seq
                fn(*args)
                ran += 1
                if time_s >= next_progress:
                    assert on_progress is not None  # next_progress is infinite without one
                    on_progress(time_s)
                    next_progress = time_s + progress_every_s
        finally:
            gc.set_threshold(young, middle, old)
            self.events_run += ran
            self.current_seq = 0
        self.now_s = max(self.now_s, until_s)
        for hook in self._on_stop:
            hook(until_s)

    def pending(self) -> int:
        return len(self._queue)
