"""The simulation's fast paths give exactly what the plain ways they replace give: the event loop's
ordering, the router's load index, and the engine's running sums behind its reports (the batched
request records are checked in tests/scenarios/test_sim_records.py)."""

from __future__ import annotations

import pytest
from _builders import heartbeat, outcome, req, status
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.engine import EngineConfig, Finished, FirstToken, SimEngine, Tokens
from opscale.model import Request
from opscale.perf import RooflineLatencyModel, load_catalog
from opscale.routing import Candidate
from opscale.routing.base import LoadIndex
from opscale.runtime.sim.loop import EventLoop
from opscale.services.events import RequestArrived, RequestFinished
from opscale.services.router import RouterCore

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
LLAMA3_8B = CATALOG.model("Llama-3-8B")
H100 = CATALOG.sku("H100-80GB")
LATENCY = RooflineLatencyModel(LLAMA3_8B, H100, 1)


# --- the event loop ---------------------------------------------------------------------------------------


def test_events_at_one_time_run_in_the_order_they_were_scheduled_and_numbers_taken_keep_their_place() -> None:
    loop = EventLoop()
    ran: list[tuple[str, int]] = []
    loop.at(1.0, lambda: ran.append(("b", loop.current_seq)))
    outside = loop.take_seq()  # work delivered outside the queue, between b and c
    loop.at(1.0, lambda: ran.append(("c", loop.current_seq)))
    loop.at(0.5, lambda: ran.append(("a", loop.current_seq)))
    loop.run(2.0)
    assert [name for name, _ in ran] == ["a", "b", "c"]
    seqs = dict(ran)
    assert seqs["b"] < outside < seqs["c"]
    assert loop.events_run == 3 and loop.current_seq == 0


def test_stop_hooks_run_after_every_event_due_and_a_past_time_means_now() -> None:
    loop = EventLoop()
    seen: list[str] = []
    loop.on_stop(lambda until_s: seen.append(f"stop {until_s} at {loop.now_s}"))
    loop.at(3.0, lambda: seen.append(f"late {loop.now_s}"))
    loop.at(1.0, lambda: loop.after(-5.0, lambda: seen.append(f"now {loop.now_s}")))
    loop.run(2.0)
    assert seen == ["now 1.0", "stop 2.0 at 2.0"]
    loop.run(4.0)
    assert seen[2:] == ["late 3.0", "stop 4.0 at 4.0"]


# --- the router's load index -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=70),
       st.lists(st.tuples(st.integers(0, 69), st.integers(0, 50)), max_size=60))
def test_load_index_finds_the_first_least_loaded_as_a_scan_does(loads: list[int],
                                                               updates: list[tuple[int, int]]) -> None:
    index = LoadIndex(loads)
    plain = list(loads)
    assert index.first_min() == plain.index(min(plain))
    for i, load in updates:
        i %= len(plain)
        index.set(i, load)
        plain[i] = load
        assert index.first_min() == plain.index(min(plain))
        assert [index[j] for j in range(len(index))] == plain


def test_load_index_example() -> None:
    index = LoadIndex([5, 3, 3, 7])
    assert index.first_min() == 1
    index.set(1, 9)
    assert index.first_min() == 2
    with pytest.raises(ValueError, match="at least one"):
        LoadIndex([])


class _ScanningShortestQueue:
    """Join-shortest-queue without the load index: the plain scan over the candidates."""

    name = "jsq_scan"

    def choose(self, request: Request, candidates: list[Candidate]) -> Candidate:
        return min(candidates, key=lambda c: c.outstanding_tokens)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 4000), st.integers(1, 800)), min_size=1, max_size=150),
       st.integers(1, 40))
def test_router_with_the_load_index_routes_as_the_plain_scan(steps: list[tuple[bool, int, int]],
                                                            instances: int) -> None:
    indexed, scanning = RouterCore(), RouterCore(policy=_ScanningShortestQueue())
    beat = heartbeat("a1", "eu", *(status(f"i{n:02d}") for n in range(instances)))
    routed: list[int] = []
    choices: list[list[str]] = [[], []]
    for k, router in enumerate((indexed, scanning)):
        router.handle(beat, 0.0)
        routed.clear()
        for n, (finish_one, prompt, output) in enumerate(steps):
            if finish_one and routed:
                done = routed.pop(n * 7919 % len(routed))  # some earlier request finishes
                router.handle(RequestFinished(outcome(done, arrival=0.0, ttft=0.1, e2e=1.0)), 1.0 + n)
            actions = router.handle(RequestArrived(req(n, prompt=prompt, output=output)), 1.0 + n)
            choices[k].append(actions[0].instance_id)  # type: ignore[union-attr]
            routed.append(n)
    assert choices[0] == choices[1]


# --- the engine's running sums ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 3.0), st.integers(1, 64), st.integers(1, 300)), min_size=1, max_size=40))
def test_outstanding_tokens_are_what_is_left_of_every_request(shapes: list[tuple[float, int, int]]) -> None:
    # Every admission's prompt fits the step's token budget (16 x 64 <= 1024) and the KV cache holds
    # everything, so at every step boundary a request is either queued (all of it left) or decoding (its
    # outputs not yet produced are left).
    e = SimEngine("e", LLAMA3_8B, H100, 1, LATENCY, EngineConfig(max_num_seqs=16, max_batched_tokens=1024))
    arrivals = sorted(shapes)
    requests = [Request(f"r{i}", LLAMA3_8B.name, "interactive", "eu", t, p, o) for i, (t, p, o) in enumerate(arrivals)]
    produced: dict[str, int] = {}
    submitted: list[Request] = []
    pending = iter(requests)
    upcoming = next(pending, None)
    while True:
        event_s = e.next_event_s()
        if upcoming is not None and (event_s is None or upcoming.arrival_s < event_s):
            e.submit(upcoming, upcoming.arrival_s)
            submitted.append(upcoming)
            upcoming = next(pending, None)
            continue
        if event_s is None:
            break
        for out in e.advance(event_s):
            if isinstance(out, FirstToken):
                produced[out.request_id] = 1
            elif isinstance(out, Tokens):
                produced[out.request_id] += out.count
            elif isinstance(out, Finished):
                produced[out.request_id] = out.output_tokens
        left = sum(r.output_tokens - produced[r.request_id] if r.request_id in produced
                   else r.prompt_tokens + r.output_tokens for r in submitted)
        assert e.outstanding_tokens() == left
    assert e.outstanding_tokens() == 0


def test_a_report_covering_a_whole_run_adds_up_to_the_engine_accounting_exactly() -> None:
    e = SimEngine("e", LLAMA3_8B, H100, 1, LATENCY, EngineConfig(report_window_s=30.0))
    requests = [Request(f"r{i}", LLAMA3_8B.name, "interactive", "eu", 0.2 * i, 300 + 37 * i, 40 + 11 * i)
                for i in range(40)]
    for request in requests:
        while (event_s := e.next_event_s()) is not None and event_s <= request.arrival_s:
            e.advance(event_s)
        e.submit(request, request.arrival_s)
    last_s = 0.0
    while (event_s := e.next_event_s()) is not None:
        e.advance(event_s)
        last_s = event_s
    assert last_s < 30.0  # the window holds every run
    report = e.report(last_s)
    assert report.idle and report.outstanding_tokens == 0
    assert report.busy_frac == e.busy_s / 30.0  # the same sum, in the same order
    assert report.tokens_per_s == e.output_tokens / 30.0
    # A report from later on sees the window's start cut into the runs.
    later = e.report(last_s + 25.0)
    assert later.busy_frac < report.busy_frac and later.tokens_per_s <= report.tokens_per_s
