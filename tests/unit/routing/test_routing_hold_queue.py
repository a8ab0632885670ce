"""The router's hold queue: tier priority (interactive first, latency-insensitive work served before
its deadline) and the admission limit that makes requests wait for capacity."""

from __future__ import annotations

import pytest
from _builders import heartbeat, outcome, req, status
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.model import Request, TierSpec
from opscale.routing import make_hold_queue
from opscale.routing.hold_queue import TierPriorityHoldQueue
from opscale.services.actions import Dispatch, Reject
from opscale.services.events import RequestArrived, RequestFinished
from opscale.services.router import RouterConfig, RouterCore

pytestmark = pytest.mark.unit

TIERS = {"interactive": TierSpec("interactive", 2.0, 0.1, priority=0),
         "batch": TierSpec("batch", 600.0, 1.0, deadline_s=100.0, priority=1)}


def r(n: int, tier: str, t: float) -> Request:
    return req(n, tier=tier, t=t)


def test_interactive_goes_first_until_batch_reaches_its_latest_start() -> None:
    queue = TierPriorityHoldQueue(120.0, TIERS, deadline_slack_s=10.0)
    queue.push(r(1, "batch", 0.0), 0.0)
    queue.push(r(2, "interactive", 5.0), 5.0)
    queue.push(r(3, "interactive", 6.0), 6.0)
    assert queue.peek(20.0).request_id == "r2"  # type: ignore[union-attr]
    assert queue.pop(20.0).request_id == "r2"
    assert queue.pop(90.0).request_id == "r1"  # 0 + 100 - 10: the batch request's latest start
    assert queue.pop(90.0).request_id == "r3" and len(queue) == 0 and queue.peek(90.0) is None


def test_each_tier_waits_its_own_limit() -> None:
    queue = TierPriorityHoldQueue(120.0, TIERS)
    queue.push(r(1, "batch", 0.0), 0.0)
    queue.push(r(2, "interactive", 0.0), 0.0)
    assert queue.expire(99.9) == [] and len(queue) == 2
    assert [(e.request.request_id, e.waited_limit_s) for e in queue.expire(100.0)] == [("r1", 100.0)]
    assert queue.requests() == [r(2, "interactive", 0.0)]
    assert [(e.request.request_id, e.waited_limit_s) for e in queue.expire(120.0)] == [("r2", 120.0)]
    assert len(queue) == 0


def test_hold_orders_are_chosen_by_name_and_bad_ones_are_named() -> None:
    assert make_hold_queue("fifo", 10.0).name == "fifo"
    assert make_hold_queue("tier_priority", 10.0, {"deadline_slack_s": 5.0}).name == "tier_priority"
    with pytest.raises(ValueError, match="known: fifo, tier_priority"):
        make_hold_queue("lifo", 10.0)
    with pytest.raises(ValueError, match="deadline_slack_s"):
        make_hold_queue("tier_priority", 10.0, {"deadline_slack_s": -1.0})
    with pytest.raises(ValueError, match="hold order 'fifo'"):
        RouterCore(RouterConfig(hold_order="fifo", hold_order_params={"slack": 1}))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["interactive", "batch", "other"]), st.integers(0, 50)), max_size=60))
def test_every_held_request_comes_out_once_by_priority_then_arrival(shapes: list[tuple[str, int]]) -> None:
    queue = TierPriorityHoldQueue(1e9, TIERS, deadline_slack_s=0.0)
    held = [r(n, tier, float(t)) for n, (tier, t) in enumerate(shapes)]
    for request in held:
        queue.push(request, 0.0)
    out = [queue.pop(0.0) for _ in range(len(held))]  # at t = 0 no batch request is urgent yet
    assert sorted(x.request_id for x in out) == sorted(x.request_id for x in held)
    keys = [(TIERS[x.tier].priority if x.tier in TIERS else 0, x.arrival_s) for x in out]
    assert keys == sorted(keys)


# --- through the router: the admission limit makes requests wait for capacity -------------------------


def saturating_router(hold_order: str = "tier_priority") -> RouterCore:
    # one instance that takes one request at a time: any outstanding token reaches the limit
    core = RouterCore(RouterConfig(hold_order=hold_order, hold_order_params={"deadline_slack_s": 10.0}
                                   if hold_order == "tier_priority" else {},
                                   max_outstanding_tokens_per_instance=1, pending_timeout_s=1_000.0), tiers=TIERS)
    core.handle(heartbeat("a1", "eu", status("i1")), 0.0)
    return core


def finish(core: RouterCore, n: int, now_s: float) -> list[Dispatch]:
    actions = core.handle(RequestFinished(outcome(n, arrival=0.0, ttft=0.1, e2e=1.0)), now_s)
    return [a for a in actions if isinstance(a, Dispatch)]


def test_the_router_serves_held_interactive_work_before_batch() -> None:
    core = saturating_router()
    assert len(core.handle(RequestArrived(r(0, "interactive", 0.0)), 0.0)) == 1  # running
    assert core.handle(RequestArrived(r(1, "batch", 0.1)), 0.1) == []
    assert core.handle(RequestArrived(r(2, "interactive", 0.2)), 0.2) == []
    assert core.pending() == {"m": 2} and [x.request_id for x in core.held()] == ["r2", "r1"]
    assert [d.request.request_id for d in finish(core, 0, 1.0)] == ["r2"]
    assert [d.request.request_id for d in finish(core, 2, 2.0)] == ["r1"]


def test_fifo_hold_order_serves_by_arrival_under_the_same_limit() -> None:
    core = saturating_router("fifo")
    core.handle(RequestArrived(r(0, "interactive", 0.0)), 0.0)
    core.handle(RequestArrived(r(1, "batch", 0.1)), 0.1)
    core.handle(RequestArrived(r(2, "interactive", 0.2)), 0.2)
    assert [d.request.request_id for d in finish(core, 0, 1.0)] == ["r1"]


def test_a_stream_of_interactive_work_never_pushes_batch_past_its_deadline() -> None:
    core = saturating_router()
    core.handle(RequestArrived(r(0, "interactive", 0.0)), 0.0)
    core.handle(RequestArrived(r(1, "batch", 0.0)), 0.0)  # deadline 100 s, latest start 90 s
    running, batch_started_s = 0, None
    for step in range(1, 150):  # every second one request finishes and a new interactive one arrives
        now = float(step)
        assert core.handle(heartbeat("a1", "eu", status("i1"), at_s=now - 0.6), now - 0.6) == []  # all busy
        core.handle(RequestArrived(r(1000 + step, "interactive", now - 0.5)), now - 0.5)
        started = finish(core, running, now)
        assert len(started) == 1  # capacity is never left idle
        running = int(started[0].request.request_id[1:])
        if started[0].request.tier == "batch":
            batch_started_s = now
        assert not [a for a in core.tick(now) if isinstance(a, Reject) and a.request.tier == "batch"]
    assert batch_started_s is not None and 90.0 <= batch_started_s <= 91.0


def test_deadline_fraction_orders_niw_by_arrival_plus_its_share_of_the_deadline() -> None:
    # SageServe's NIW key, arrival + 0.8 x SLA: a later request with a far shorter deadline goes first
    tiers = {**TIERS, "nightly": TierSpec("nightly", 600.0, 1.0, deadline_s=1000.0, priority=1)}
    queue = TierPriorityHoldQueue(120.0, tiers, deadline_fraction=0.8)
    queue.push(r(1, "nightly", 0.0), 0.0)  # key 800
    queue.push(r(2, "batch", 10.0), 10.0)  # key 90
    queue.push(r(3, "interactive", 20.0), 20.0)
    assert queue.latest_start(r(2, "batch", 10.0)) == pytest.approx(90.0)
    assert [queue.pop(30.0).request_id for _ in range(3)] == ["r3", "r2", "r1"]
    with pytest.raises(ValueError, match="deadline_fraction"):
        TierPriorityHoldQueue(120.0, tiers, deadline_fraction=1.5)
