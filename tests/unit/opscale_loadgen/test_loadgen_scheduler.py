"""The open-loop scheduler: sends follow the trace clock (divided by the compression factor) on a virtual
clock, exactly; a response held back by the server does not delay any later send (a real local server);
a concurrency limit delays sends and the lateness shows; a stop leaves every unsent request in the
records as not_sent and every request in flight as cancelled."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_loadgen_endpoint import ScriptedHost, running_endpoint

from opscale.model import Request
from opscale.reporting.latency_report import LatencyRecord, RequestStatus

from opscale_loadgen.client import SendOptions, send_request
from opscale_loadgen.clock import MonotonicClock, VirtualClock
from opscale_loadgen.scheduler import OpenLoopScheduler

pytestmark = pytest.mark.unit


def _trace(arrivals: list[float], output_tokens: int = 3) -> list[Request]:
    return [Request(f"r{i}", "m", "interactive", "eu-west", t, prompt_tokens=10, output_tokens=output_tokens)
            for i, t in enumerate(arrivals)]


def _ok(request: Request, scheduled_s: float, sent_s: float, finish_s: float | None = None) -> LatencyRecord:
    return LatencyRecord(request.request_id, request.tier, sent_s, sent_s, finish_s or sent_s, 1,
                         scheduled_s=scheduled_s)


@settings(max_examples=40, deadline=None)
@given(gaps=st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=30),
       start=st.floats(0, 1000, allow_nan=False), compress=st.sampled_from([1.0, 2.5, 10.0, 60.0]))
def test_sends_follow_the_trace_clock_divided_by_the_compression(gaps: list[float], start: float,
                                                                 compress: float) -> None:
    arrivals = [start]
    for gap in gaps[1:]:
        arrivals.append(arrivals[-1] + gap)
    requests = _trace(arrivals)
    clock = VirtualClock()
    sent_at: dict[str, float] = {}
    records: list[LatencyRecord] = []

    async def send(request: Request, scheduled_s: float) -> LatencyRecord:
        sent_at[request.request_id] = clock.now()
        return _ok(request, scheduled_s, clock.now())

    async def main() -> None:
        await OpenLoopScheduler(requests, send, records.append, clock, origin_s=start, compress=compress).run()

    asyncio.run(main())
    assert [sent_at[r.request_id] for r in requests] == [(r.arrival_s - start) / compress for r in requests]
    assert sorted(r.request_id for r in records) == sorted(r.request_id for r in requests)


async def test_slow_answers_do_not_delay_later_sends() -> None:
    # The server holds the first request's answer until every later request has reached it: a sender
    # that waited for answers (closed loop) would never send the second one, and the test would hang.
    host = ScriptedHost()
    requests = _trace([0.0, 0.01, 0.02, 0.03, 0.04], output_tokens=2)
    clock = MonotonicClock()
    records: list[LatencyRecord] = []
    async with running_endpoint(host) as url, aiohttp.ClientSession() as session:
        options = SendOptions(url + "/instances/hold")

        async def send(request: Request, scheduled_s: float) -> LatencyRecord:
            return await send_request(session, request, scheduled_s, clock, options)

        async def release_when_all_arrived() -> None:
            while len(host.seen) < len(requests):
                await asyncio.sleep(0.01)  # noqa: TID251 - polling a real server
            host.release.set()

        releaser = asyncio.create_task(release_when_all_arrived())
        counts = await asyncio.wait_for(OpenLoopScheduler(requests, send, records.append, clock).run(), 30)
        await releaser
    by_id = {r.request_id: r for r in records}
    assert counts.sent == 5 and all(r.status == RequestStatus.OK for r in records)
    # the held request finished last, after the others were sent and answered
    first = by_id["r0"]
    assert first.finish_s is not None
    assert all(r.arrival_s is not None and r.arrival_s < first.finish_s for r in records)
    assert all(r.finish_s is not None and r.finish_s <= first.finish_s for r in records)
    # no send was early (lateness is never negative)
    assert all(r.arrival_s is not None and r.scheduled_s is not None and r.arrival_s >= r.scheduled_s
               for r in records)


async def test_a_concurrency_limit_delays_sends_and_the_lateness_is_recorded() -> None:
    clock = VirtualClock()
    requests = _trace([0.0, 1.0, 2.0, 3.0])
    records: list[LatencyRecord] = []

    async def send(request: Request, scheduled_s: float) -> LatencyRecord:
        sent_s = clock.now()
        await clock.sleep_until(sent_s + 10.0)  # every answer takes 10 s
        return _ok(request, scheduled_s, sent_s, clock.now())

    await OpenLoopScheduler(requests, send, records.append, clock, concurrency_limit=1).run()
    late = {r.request_id: r.arrival_s - r.scheduled_s for r in records}  # type: ignore[operator]
    # one at a time: r1 waits for r0's answer (due at 1, sent at 10), r2 for r1's (due 2, sent 20), ...
    assert late == {"r0": 0.0, "r1": 9.0, "r2": 18.0, "r3": 27.0}


async def test_stop_records_unsent_requests_and_cancels_those_in_flight() -> None:
    clock = VirtualClock()
    requests = _trace([float(i) for i in range(10)])
    records: list[LatencyRecord] = []
    stop = asyncio.Event()

    async def send(request: Request, scheduled_s: float) -> LatencyRecord:
        if request.request_id == "r3":
            stop.set()  # Ctrl-C while r3 is being sent
        await asyncio.Event().wait()  # no answer ever comes
        raise AssertionError("unreachable")

    scheduler = OpenLoopScheduler(requests, send, records.append, clock, stop=stop, drain_s=0.0)
    counts = await asyncio.wait_for(scheduler.run(), 30)
    statuses = {r.request_id: r.status for r in records}
    assert len(records) == 10 and len(statuses) == 10  # each request exactly once
    assert counts.stopped_early and counts.scheduled == 10
    assert counts.sent + counts.not_sent == 10 and counts.cancelled == counts.sent
    assert {statuses[f"r{i}"] for i in range(counts.sent)} == {RequestStatus.CANCELLED}
    assert {statuses[f"r{i}"] for i in range(counts.sent, 10)} == {RequestStatus.NOT_SENT}
    assert scheduler.in_flight == 0


async def test_abort_cancels_a_send_that_had_not_started_yet() -> None:
    # Stop and abort set before the scheduler's tasks ever ran: each still leaves one record.
    clock = VirtualClock()
    requests = _trace([0.0, 1.0, 2.0])
    records: list[LatencyRecord] = []
    stop, abort = asyncio.Event(), asyncio.Event()
    sent: list[str] = []

    async def send(request: Request, scheduled_s: float) -> LatencyRecord:
        sent.append(request.request_id)
        return _ok(request, scheduled_s, clock.now())

    def sink(record: LatencyRecord) -> None:
        records.append(record)

    scheduler = OpenLoopScheduler(requests, send, sink, clock, stop=stop, abort=abort)
    original = scheduler._start

    def start_then_stop(request: Request, due_s: float) -> None:
        original(request, due_s)
        if request.request_id == "r1":
            stop.set()
            abort.set()

    scheduler._start = start_then_stop  # type: ignore[method-assign]
    counts = await scheduler.run()
    assert sorted(r.request_id for r in records) == ["r0", "r1", "r2"]
    statuses = {r.request_id: r.status for r in records}
    assert statuses == {"r0": RequestStatus.OK, "r1": RequestStatus.CANCELLED, "r2": RequestStatus.NOT_SENT}
    assert sent == ["r0"]  # r1's task was cancelled before its first step
    assert counts.sent == 2 and counts.not_sent == 1


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="compress"):
        OpenLoopScheduler([], None, print, VirtualClock(), compress=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="concurrency_limit"):
        OpenLoopScheduler([], None, print, VirtualClock(), concurrency_limit=0)  # type: ignore[arg-type]
