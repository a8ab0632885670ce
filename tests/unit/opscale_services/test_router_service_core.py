"""RouterCore under scale-in and failures: a planned-away instance takes no new work at once, a retry
never returns to an instance that already failed the request, and the hold queue is bounded per model
and in total (429 with a Retry-After)."""

from __future__ import annotations

import pytest
from _builders import heartbeat, outcome, req, status
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.model import InstanceSpec, InstanceState, Plan
from opscale.services.actions import Dispatch, Reject
from opscale.services.events import DispatchFailed, PlanPublished, RequestArrived, RequestFinished
from opscale.services.router import RouterConfig, RouterCore

pytestmark = pytest.mark.unit


def plan(epoch: int, *instance_ids: str, agent: str = "a1") -> PlanPublished:
    specs = tuple(InstanceSpec(i, "m", "H100-80GB") for i in instance_ids)
    return PlanPublished(Plan(epoch, float(epoch), {agent: specs}, {agent: "eu"}))


def eight_ready() -> RouterCore:
    router = RouterCore()
    ids = [f"i{k}" for k in range(8)]
    router.handle(plan(1, *ids), 0.0)
    router.handle(heartbeat("a1", "eu", *(status(i) for i in ids)), 0.0)
    return router


def test_instances_the_newest_plan_drops_take_no_new_work_before_their_heartbeat_says_draining() -> None:
    router = eight_ready()
    router.handle(plan(2, "i0", "i1", "i2", "i3"), 10.0)  # the pool is halved; no heartbeat yet
    picks = {router.handle(RequestArrived(req(n)), 10.5)[0].instance_id for n in range(40)}
    assert picks <= {"i0", "i1", "i2", "i3"}
    # the agent's next heartbeat still lists them ready (the drain has not started): still excluded
    router.handle(heartbeat("a1", "eu", *(status(f"i{k}") for k in range(8)), at_s=11.0), 11.0)
    picks = {router.handle(RequestArrived(req(100 + n)), 11.5)[0].instance_id for n in range(40)}
    assert picks <= {"i0", "i1", "i2", "i3"}


def test_an_older_plan_delivered_late_changes_nothing() -> None:
    router = eight_ready()
    router.handle(plan(3, "i0", "i1"), 10.0)
    router.handle(plan(2, *(f"i{k}" for k in range(8))), 10.1)  # redelivered out of order
    picks = {router.handle(RequestArrived(req(n)), 10.5)[0].instance_id for n in range(20)}
    assert picks <= {"i0", "i1"}


def test_an_instance_planned_again_takes_work_again() -> None:
    router = eight_ready()
    router.handle(plan(2, "i0"), 10.0)
    router.handle(plan(3, "i0", "i1"), 20.0)
    router.handle(heartbeat("a1", "eu", status("i0"), status("i1"), at_s=20.0), 20.0)
    picks = {router.handle(RequestArrived(req(n)), 20.5)[0].instance_id for n in range(20)}
    assert picks == {"i0", "i1"}


def test_draining_in_a_heartbeat_stops_new_work_without_any_plan() -> None:
    router = RouterCore()
    router.handle(heartbeat("a1", "eu", status("i1"), status("i2")), 0.0)
    router.handle(heartbeat("a1", "eu", status("i1", state=InstanceState.DRAINING), status("i2"), at_s=1.0), 1.0)
    assert {router.handle(RequestArrived(req(n)), 1.5)[0].instance_id for n in range(10)} == {"i2"}


def test_a_retry_never_returns_to_an_instance_it_failed_on_even_after_a_heartbeat_restores_it() -> None:
    router = RouterCore(RouterConfig(max_attempts=3))
    router.handle(heartbeat("a1", "eu", status("i1"), status("i2"), status("i3")), 0.0)
    request = req(1)
    [first] = router.handle(RequestArrived(request), 0.1)
    assert isinstance(first, Dispatch)
    # the heartbeat between failure and retry lists the failed instance ready again
    router.handle(heartbeat("a1", "eu", status("i1"), status("i2"), status("i3"), at_s=0.2), 0.2)
    [second] = router.handle(DispatchFailed(request, first.instance_id, "connect", 1), 0.2)
    router.handle(heartbeat("a1", "eu", status("i1"), status("i2"), status("i3"), at_s=0.3), 0.3)
    [third] = router.handle(DispatchFailed(request, second.instance_id, "reset", 2), 0.3)
    assert isinstance(second, Dispatch) and isinstance(third, Dispatch)
    assert len({first.instance_id, second.instance_id, third.instance_id}) == 3
    [refused] = router.handle(DispatchFailed(request, third.instance_id, "HTTP 503", 3), 0.4)
    assert isinstance(refused, Reject) and refused.status == 502 and "3 instances" in refused.message
    assert router.in_flight() == 0


def test_a_retry_with_every_instance_tried_waits_for_a_new_one() -> None:
    router = RouterCore(RouterConfig(max_attempts=5))
    router.handle(heartbeat("a1", "eu", status("i1")), 0.0)
    request = req(1)
    router.handle(RequestArrived(request), 0.1)
    assert router.handle(DispatchFailed(request, "i1", "connect", 1), 0.2) == []
    assert router.pending() == {"m": 1}
    # i1 comes back: not for this request; i2 appears: it takes it
    assert router.handle(heartbeat("a1", "eu", status("i1"), at_s=1.0), 1.0) == []
    [dispatch] = router.handle(heartbeat("a1", "eu", status("i1"), status("i2"), at_s=2.0), 2.0)
    assert isinstance(dispatch, Dispatch) and dispatch.instance_id == "i2"
    router.handle(RequestFinished(outcome(1, arrival=0.1, ttft=2.0, e2e=3.0)), 3.0)
    assert router.in_flight() == 0
    # a finished request's history is forgotten: a new request with the same id may use i1 again
    [again] = router.handle(RequestArrived(req(1)), 4.0)
    assert isinstance(again, Dispatch) and again.instance_id == "i1"


def test_hold_queue_per_model_bound_refuses_with_429_and_retry_after() -> None:
    router = RouterCore(RouterConfig(models=["m"], max_pending_per_model=2, pending_retry_after_s=3.0))
    assert router.handle(RequestArrived(req(1)), 0.0) == []
    assert router.handle(RequestArrived(req(2)), 0.0) == []
    [reject] = router.handle(RequestArrived(req(3)), 0.0)
    assert isinstance(reject, Reject) and reject.status == 429 and reject.retry_after_s == 3.0
    assert "queue is full" in reject.message and "'m'" in reject.message


def test_hold_queue_total_bound_covers_every_model() -> None:
    router = RouterCore(RouterConfig(models=["m", "n"], max_pending_per_model=10, max_pending_total=3))
    for n in range(2):
        assert router.handle(RequestArrived(req(n, model="m")), 0.0) == []
    assert router.handle(RequestArrived(req(2, model="n")), 0.0) == []
    [reject] = router.handle(RequestArrived(req(3, model="n")), 0.0)
    assert isinstance(reject, Reject) and reject.status == 429 and "3 held over all models" in reject.message
    assert sum(router.pending().values()) == 3


@settings(max_examples=60, deadline=None)
@given(kept=st.sets(st.integers(0, 7), min_size=1), failures=st.lists(st.integers(0, 7), max_size=6))
def test_dispatches_only_go_to_planned_untried_instances(kept: set[int], failures: list[int]) -> None:
    router = eight_ready()
    router.handle(plan(2, *(f"i{k}" for k in sorted(kept))), 5.0)
    request = req(1)
    actions = router.handle(RequestArrived(request), 5.1)
    tried: set[str] = set()
    attempt = 1
    while actions and isinstance(actions[0], Dispatch):
        target = actions[0].instance_id
        assert target in {f"i{k}" for k in kept} and target not in tried
        if attempt > len(failures):
            break
        tried.add(target)
        actions = router.handle(DispatchFailed(request, target, "failed", attempt), 5.2)
        attempt += 1
    assert router.in_flight() <= 1
