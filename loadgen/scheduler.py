"""Open-loop scheduling of a trace: each request is sent at its trace time, whatever came before.

The scheduler walks the trace (lazily, one request at a time) and, for each request, waits on the replay
clock until `(arrival_s - origin_s) / compress` and starts its send as a task of its own, then moves on:
a slow or stuck answer never holds back a later send (no coordinated omission). The only thing that can
delay a send is the optional concurrency limit: when that many requests are in flight, the next send
waits for a slot. Either way the record keeps the intended time (`scheduled_s`) next to the actual one,
so the report shows the send lateness instead of hiding it.

Every request of the trace produces exactly one record through `sink`: the send's own record, a
`cancelled` one when the replay is stopped while it is in flight, and a `not_sent` one for every request
still unsent when `stop` is set. After the last send the scheduler waits for the answers in flight; once
`stop` is set it waits at most `drain_s` for them (or until `abort` is set), then cancels the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from opscale.model import Request
from opscale.reporting.latency_report import LatencyRecord, RequestStatus

from opscale_loadgen.clock import ReplayClock

log = logging.getLogger(__name__)

# A replay running behind sends what is due back to back; it yields to the event loop this often.
_YIELD_EVERY = 64

SendFn = Callable[[Request, float], Awaitable[LatencyRecord]]
"""Sends one request now, given its scheduled time; returns its record (never raises on a failed request)."""
Sink = Callable[[LatencyRecord], None]


@dataclass(frozen=True, slots=True)
class ReplayCounts:
    scheduled: int
    sent: int
    not_sent: int
    cancelled: int
    stopped_early: bool


def unsent_record(request: Request, scheduled_s: float, status: RequestStatus, error: str = "",
                  sent_s: float | None = None) -> LatencyRecord:
    """The record of a request that has no answer: never sent, or cancelled in flight."""
    return LatencyRecord(
        request_id=request.request_id, tier=request.tier, arrival_s=sent_s, first_token_s=None, finish_s=None,
        output_tokens=0, status=status, model=request.model, prompt_tokens=request.prompt_tokens,
        requested_tokens=request.output_tokens, scheduled_s=scheduled_s, error=error)


class OpenLoopScheduler:
    """Replays `requests` (sorted by arrival) through `send`; see the module docstring."""

    def __init__(self, requests: Iterable[Request], send: SendFn, sink: Sink, clock: ReplayClock, *,
                 origin_s: float = 0.0, compress: float = 1.0, concurrency_limit: int | None = None,
                 stop: asyncio.Event | None = None, abort: asyncio.Event | None = None,
                 drain_s: float = 30.0) -> None:
        if not compress > 0:
            raise ValueError(f"compress must be > 0, got {compress!r}")
        if concurrency_limit is not None and concurrency_limit < 1:
            raise ValueError(f"concurrency_limit must be >= 1, got {concurrency_limit!r}")
        self._requests = requests
        self._send = send
        self._sink = sink
        self._clock = clock
        self._origin_s = origin_s
        self._compress = compress
        self._slots = asyncio.Semaphore(concurrency_limit) if concurrency_limit else None
        self.stop = stop or asyncio.Event()
        self.abort = abort or asyncio.Event()
        self._drain_s = drain_s
        self._in_flight: set[asyncio.Task[None]] = set()
        self._unrecorded: dict[asyncio.Task[None], tuple[Request, float]] = {}
        self._sent = 0
        self._cancelled = 0
        self._due_in_a_row = 0

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def scheduled_s(self, request: Request) -> float:
        """When `request` is due on the replay clock."""
        return (request.arrival_s - self._origin_s) / self._compress

    async def run(self) -> ReplayCounts:
        scheduled = not_sent = 0
        requests = iter(self._requests)
        try:
            for request in requests:
                scheduled += 1
                due_s = self.scheduled_s(request)
                if not await self._wait_until(due_s) or not await self._take_slot():
                    self._sink(unsent_record(request, due_s, RequestStatus.NOT_SENT, "replay stopped"))
                    not_sent += 1
                    break
                self._start(request, due_s)
            # Stopped: every request left in the slice still gets its record.
            for request in requests:
                scheduled += 1
                self._sink(unsent_record(request, self.scheduled_s(request), RequestStatus.NOT_SENT, "replay stopped"))
                not_sent += 1
        finally:
            await self._drain()
        return ReplayCounts(scheduled, self._sent, not_sent, self._cancelled, self.stop.is_set())

    def _start(self, request: Request, due_s: float) -> None:
        task = asyncio.create_task(self._one(request, due_s), name=f"send-{request.request_id}")
        self._in_flight.add(task)
        self._unrecorded[task] = (request, due_s)
        task.add_done_callback(self._in_flight.discard)
        self._sent += 1

    def _record(self, record: LatencyRecord) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._unrecorded.pop(task, None)  # type: ignore[arg-type]
        self._sink(record)

    async def _one(self, request: Request, due_s: float) -> None:
        sent_s = self._clock.now()
        try:
            record = await self._send(request, due_s)
        except asyncio.CancelledError:
            self._cancelled += 1
            self._record(unsent_record(request, due_s, RequestStatus.CANCELLED, "in flight when the replay stopped",
                                       sent_s=sent_s))
            raise
        except Exception as exc:
            # A bug in the client, not a failed request; still counted, so no request goes missing.
            log.exception("sending request %s failed unexpectedly", request.request_id)
            record = unsent_record(request, due_s, RequestStatus.PROTOCOL_ERROR, f"{type(exc).__name__}: {exc}",
                                   sent_s=sent_s)
        finally:
            if self._slots is not None:
                self._slots.release()
        self._record(record)

    def _record_never_started(self) -> None:
        """A task cancelled before its first step never ran its body: record it (and free its slot) here."""
        for task, (request, due_s) in list(self._unrecorded.items()):
            if task.done():
                del self._unrecorded[task]
                self._cancelled += 1
                if self._slots is not None:
                    self._slots.release()
                self._sink(unsent_record(request, due_s, RequestStatus.CANCELLED, "in flight when the replay stopped"))

    async def _wait_until(self, due_s: float) -> bool:
        """Wait until `due_s` unless stopped first. A send already due goes at once: a replay running
        behind catches up without a wake-up task per request."""
        if self.stop.is_set():
            return False
        if due_s <= self._clock.now():
            self._due_in_a_row += 1
            if self._due_in_a_row % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let the sends begin and a stop be seen
            return not self.stop.is_set()
        self._due_in_a_row = 0
        return await self._until(self._clock.sleep_until(due_s))

    async def _take_slot(self) -> bool:
        if self._slots is None:
            return not self.stop.is_set()
        return await self._until(self._slots.acquire())

    async def _until(self, waiting: Coroutine[Any, Any, object]) -> bool:
        """Await `waiting` unless `stop` is set first; True when it completed (a tie counts as completed:
        the send goes out and the next wait sees the stop)."""
        if self.stop.is_set():
            waiting.close()
            return False
        step = asyncio.ensure_future(waiting)
        if not step.done():
            stopped = asyncio.ensure_future(self.stop.wait())
            await asyncio.wait({step, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
        if step.done():
            return True
        step.cancel()  # a semaphore acquire that is cancelled gives back a slot it was just handed
        await asyncio.gather(step, return_exceptions=True)
        return False

    async def _drain(self) -> None:
        """Wait for the answers in flight; once stopped, at most `drain_s` more or until `abort`; then
        cancel what is left (each cancelled send records itself as `cancelled`)."""
        if self._in_flight and not self.stop.is_set():
            await self._wait_all_or(self.stop, timeout_s=None)
        if self._in_flight and not self.abort.is_set():
            await self._wait_all_or(self.abort, timeout_s=self._drain_s)
        for task in list(self._in_flight):
            task.cancel()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        self._record_never_started()

    async def _wait_all_or(self, event: asyncio.Event, timeout_s: float | None) -> None:
        # asyncio.wait, unlike gather, does not cancel the sends when this wait is given up.
        everything = asyncio.ensure_future(asyncio.wait(set(self._in_flight)))
        signalled = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({everything, signalled}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            everything.cancel()
            signalled.cancel()
