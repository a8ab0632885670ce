"""The router's hold queue: requests that no instance can take yet (a model scaling up from zero, or
every instance at the router's admission limit), in the order they will be dispatched, each with the
time after which it is refused.

Two orders, chosen by name (see registry.HoldOrderName):
- fifo: first come, first served; each request waits at most `pending_timeout_s`.
- tier_priority: interactive ahead of latency-insensitive work. A request of a tier with a `deadline_s`
  (latency-insensitive) may wait until arrival + deadline_s instead of `pending_timeout_s`; it is
  served by tier priority (TierSpec.priority, lower first) and arrival, except that once it reaches its
  latest start (arrival + deadline_s - `deadline_slack_s`, the time kept for serving it) it goes ahead of
  everything, earliest latest start first, so that priority never starves it past its deadline while
  capacity exists.

With `deadline_fraction` set (SageServe's NIW queue: 0.8), a deadline tier's latest start is arrival +
deadline_fraction x deadline_s instead, and its requests are ordered within their priority by that key
(arrival + 0.8 x SLA: deferred, then pulled forward near the deadline) rather than by arrival alone.

Example (tier_priority, slack 60 s, batch deadline 3600 s): a batch request held at t = 0 and an
interactive one at t = 10 -> the interactive one is dispatched first while t < 3540; from t = 3540 the
batch request is first. With deadline_fraction 0.8 the batch request is first from t = 2880.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from opscale.model import Request, TierSpec


@dataclass(frozen=True, slots=True)
class Expired:
    """A held request whose wait is over: refused (503) by the router."""

    request: Request
    waited_limit_s: float


class HoldQueue(Protocol):
    name: str

    def __len__(self) -> int: ...

    def push(self, request: Request, now_s: float) -> None:
        """Hold `request`, which arrived at the router at `now_s`."""
        ...

    def peek(self, now_s: float) -> Request | None:
        """The request to dispatch next, or None when empty."""
        ...

    def pop(self, now_s: float) -> Request:
        """Remove and return what `peek(now_s)` returns (the queue must not be empty)."""
        ...

    def expire(self, now_s: float) -> list[Expired]:
        """Remove and return every request whose wait ended by `now_s`."""
        ...

    def requests(self) -> list[Request]:
        """The held requests, by priority then arrival (fifo: arrival)."""
        ...

    def latest_start(self, request: Request) -> float:
        """When `request` goes ahead of everything (its deadline near); inf for a request without one."""
        ...


@dataclass(slots=True)
class FifoHoldQueue:
    pending_timeout_s: float
    name: str = "fifo"
    _queue: deque[tuple[Request, float]] = field(default_factory=deque)

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, request: Request, now_s: float) -> None:
        self._queue.append((request, now_s + self.pending_timeout_s))

    def peek(self, now_s: float) -> Request | None:
        return self._queue[0][0] if self._queue else None

    def pop(self, now_s: float) -> Request:
        return self._queue.popleft()[0]

    def expire(self, now_s: float) -> list[Expired]:
        queue, gone = self._queue, []
        while queue and queue[0][1] <= now_s:  # one timeout for all: expiry follows arrival order
            gone.append(Expired(queue.popleft()[0], self.pending_timeout_s))
        return gone

    def requests(self) -> list[Request]:
        return [r for r, _ in self._queue]

    def latest_start(self, request: Request) -> float:
        return math.inf


@dataclass(slots=True)
class _Entry:
    request: Request
    seq: int
    expires_s: float
    limit_s: float
    done: bool = False


@dataclass(slots=True)
class TierPriorityHoldQueue:
    """See the module docstring. A tier missing from `tiers` is held like the most urgent tier without a
    deadline (priority 0, `pending_timeout_s`)."""

    pending_timeout_s: float
    tiers: Mapping[str, TierSpec]
    deadline_slack_s: float = 60.0
    deadline_fraction: float | None = None
    name: str = "tier_priority"
    # Three heaps over the same entries, each entry marked done once dispatched or expired and skipped
    # when it surfaces: by (priority, arrival), by latest start (deadline tiers), by expiry.
    _by_priority: list[tuple[int, float, int, _Entry]] = field(default_factory=list)
    _by_latest_start: list[tuple[float, int, _Entry]] = field(default_factory=list)
    _by_expiry: list[tuple[float, int, _Entry]] = field(default_factory=list)
    _live: int = 0
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        if not (self.deadline_slack_s >= 0 and math.isfinite(self.deadline_slack_s)):
            raise ValueError(f"tier_priority: deadline_slack_s must be >= 0, got {self.deadline_slack_s!r}")
        if self.deadline_fraction is not None and not 0.0 < self.deadline_fraction <= 1.0:
            raise ValueError(f"tier_priority: deadline_fraction must be in (0, 1], got {self.deadline_fraction!r}")

    def __len__(self) -> int:
        return self._live

    def push(self, request: Request, now_s: float) -> None:
        tier = self.tiers.get(request.tier)
        priority = tier.priority if tier is not None else 0
        seq = next(self._seq)
        order_s = request.arrival_s
        if tier is not None and tier.deadline_s is not None:
            entry = _Entry(request, seq, request.arrival_s + tier.deadline_s, tier.deadline_s)
            latest = self.latest_start(request)
            heapq.heappush(self._by_latest_start, (latest, seq, entry))
            if self.deadline_fraction is not None:
                order_s = latest
        else:
            entry = _Entry(request, seq, now_s + self.pending_timeout_s, self.pending_timeout_s)
        heapq.heappush(self._by_priority, (priority, order_s, seq, entry))
        heapq.heappush(self._by_expiry, (entry.expires_s, seq, entry))
        self._live += 1

    def _next(self, now_s: float) -> tuple[list[Any], _Entry] | None:
        urgent = self._by_latest_start
        while urgent and urgent[0][-1].done:
            heapq.heappop(urgent)
        if urgent and urgent[0][0] <= now_s:
            return urgent, urgent[0][-1]
        ordered = self._by_priority
        while ordered and ordered[0][-1].done:
            heapq.heappop(ordered)
        return (ordered, ordered[0][-1]) if ordered else None

    def peek(self, now_s: float) -> Request | None:
        found = self._next(now_s)
        return found[1].request if found else None

    def pop(self, now_s: float) -> Request:
        found = self._next(now_s)
        if found is None:
            raise IndexError("pop from an empty hold queue")
        heap, entry = found
        heapq.heappop(heap)
        entry.done = True
        self._live -= 1
        self._compact()
        return entry.request

    def expire(self, now_s: float) -> list[Expired]:
        heap, gone = self._by_expiry, []
        while heap and heap[0][0] <= now_s:
            entry = heapq.heappop(heap)[-1]
            if not entry.done:
                entry.done = True
                self._live -= 1
                gone.append(Expired(entry.request, entry.limit_s))
        if gone:
            self._compact()
        return gone

    def latest_start(self, request: Request) -> float:
        tier = self.tiers.get(request.tier)
        if tier is None or tier.deadline_s is None:
            return math.inf
        if self.deadline_fraction is not None:
            return request.arrival_s + self.deadline_fraction * tier.deadline_s
        return request.arrival_s + tier.deadline_s - self.deadline_slack_s

    def requests(self) -> list[Request]:
        live = sorted((k for k in self._by_priority if not k[-1].done), key=lambda k: k[:3])
        return [k[-1].request for k in live]

    def _compact(self) -> None:
        # Done entries wait in the other heaps until they surface; rebuild when they outnumber the live.
        limit = 2 * self._live + 64
        for heap in (self._by_priority, self._by_latest_start, self._by_expiry):
            if len(heap) > limit:
                heap[:] = [k for k in heap if not k[-1].done]
                heapq.heapify(heap)
