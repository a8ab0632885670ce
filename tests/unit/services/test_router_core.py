from __future__ import annotations

import pytest
from _builders import heartbeat, outcome, req, status

from opscale.model import InstanceState
from opscale.services.actions import Dispatch, Publish, Reject
from opscale.services.events import DispatchFailed, RequestArrived, RequestFinished, RouterLoad
from opscale.services.router import RouterConfig, RouterCore

pytestmark = pytest.mark.unit


def test_join_shortest_queue_spreads_by_outstanding_tokens() -> None:
    router = RouterCore()
    router.handle(heartbeat("a1", "eu", status("i1"), status("i2")), 0.0)
    first = router.handle(RequestArrived(req(1, prompt=1000, output=100)), 0.1)
    second = router.handle(RequestArrived(req(2, prompt=10, output=10)), 0.2)
    third = router.handle(RequestArrived(req(3, prompt=10, output=10)), 0.3)
    assert [a.instance_id for a in first + second + third] == ["i1", "i2", "i2"]


def test_completion_releases_tokens_once_even_when_delivered_twice() -> None:
    router = RouterCore()
    router.handle(heartbeat("a1", "eu", status("i1"), status("i2")), 0.0)
    router.handle(RequestArrived(req(1, prompt=1000)), 0.1)
    done = RequestFinished(outcome(1, arrival=0.1, ttft=0.1, e2e=1.0))
    router.handle(done, 1.1)
    router.handle(done, 1.2)
    assert router.in_flight() == 0
    # i1 is back to zero load, so the tie goes to i1 again
    assert router.handle(RequestArrived(req(2)), 2.0)[0].instance_id == "i1"


def test_only_ready_instances_take_requests() -> None:
    router = RouterCore()
    router.handle(heartbeat("a1", "eu", status("i1", state=InstanceState.LOADING),
                            status("i2", state=InstanceState.DRAINING), status("i3")), 0.0)
    picks = {router.handle(RequestArrived(req(i)), 0.1)[0].instance_id for i in range(5)}
    assert picks == {"i3"}


def test_unknown_model_is_refused_with_404_naming_it() -> None:
    router = RouterCore()
    router.handle(heartbeat("a1", "eu", status("i1")), 0.0)
    [reject] = router.handle(RequestArrived(req(1, model="gpt-9")), 0.1)
    assert isinstance(reject, Reject) and reject.status == 404 and "gpt-9" in reject.message


def test_requests_wait_for_a_loading_model_then_dispatch_in_order() -> None:
    router = RouterCore()
    router.handle(heartbeat("a1", "eu", status("i1", state=InstanceState.LOADING)), 0.0)
    assert router.handle(RequestArrived(req(1)), 0.5) == []
    assert router.handle(RequestArrived(req(2)), 0.6) == []
    assert router.pending() == {"m": 2}
    actions = router.handle(heartbeat("a1", "eu", status("i1"), at_s=5.0), 5.0)
    assert [a.request.request_id for a in actions if isinstance(a, Dispatch)] == ["r1", "r2"]
    assert router.pending() == {}


def test_held_requests_expire_with_503_and_a_full_queue_answers_429() -> None:
    router = RouterCore(RouterConfig(max_pending_per_model=1, pending_timeout_s=10))
    router.handle(heartbeat("a1", "eu", status("i1", state=InstanceState.LOADING)), 0.0)
    assert router.handle(RequestArrived(req(1)), 0.0) == []
    [full] = router.handle(RequestArrived(req(2)), 0.1)
    assert full.status == 429 and full.retry_after_s
    expired = [a for a in router.tick(10.5) if isinstance(a, Reject)]
    assert [(r.request.request_id, r.status) for r in expired] == [("r1", 503)]


def test_spill_over_to_another_region_only_when_local_has_none() -> None:
    router = RouterCore()
    router.handle(heartbeat("a1", "eu", status("e1")), 0.0)
    router.handle(heartbeat("a2", "us", status("u1")), 0.0)
    local = router.handle(RequestArrived(req(1, region="us")), 0.1)[0]
    assert (local.instance_id, local.reason) == ("u1", "jsq_tokens local")
    router.handle(heartbeat("a2", "us", at_s=1.0), 1.0)  # us instance gone
    spilled = router.handle(RequestArrived(req(2, region="us")), 1.1)[0]
    assert (spilled.instance_id, spilled.region) == ("e1", "eu") and "spill" in spilled.reason


def test_silent_agent_is_forgotten_and_load_is_reported() -> None:
    router = RouterCore(RouterConfig(agent_timeout_s=5))
    router.handle(heartbeat("a1", "eu", status("i1")), 0.0)
    router.tick(6.0)
    assert router.handle(RequestArrived(req(1)), 6.1) == []  # held, nothing ready
    loads = [a.event for a in router.tick(7.5) if isinstance(a, Publish)]
    assert loads and isinstance(loads[0], RouterLoad) and loads[0].pending_by_model == {"m": 1}


def test_load_reports_count_arrivals_once_even_when_rerouted() -> None:
    router = RouterCore(RouterConfig(load_report_interval_s=1.0))
    router.handle(heartbeat("a1", "eu", status("i1"), status("i2")), 0.0)
    router.tick(0.0)
    [first] = router.handle(RequestArrived(req(1, prompt=100, output=10)), 0.2)
    router.handle(DispatchFailed(first.request, first.instance_id, "refused", attempt=1), 0.3)
    router.handle(RequestArrived(req(2, prompt=50, output=5)), 0.4)
    [load] = [a.event for a in router.tick(1.0) if isinstance(a, Publish)]
    assert load.arrivals_by_model == {"m": 2} and load.prompt_tokens_by_model == {"m": 150}
    assert load.output_tokens_by_model == {"m": 15} and load.interval_s == pytest.approx(1.0)


def test_a_failed_dispatch_reroutes_elsewhere_and_gives_up_after_max_attempts() -> None:
    router = RouterCore(RouterConfig(max_attempts=2))
    router.handle(heartbeat("a1", "eu", status("i1"), status("i2")), 0.0)
    [first] = router.handle(RequestArrived(req(1)), 0.1)
    [second] = router.handle(DispatchFailed(first.request, first.instance_id, "refused", attempt=1), 0.2)
    assert isinstance(second, Dispatch) and second.instance_id != first.instance_id
    [gave_up] = router.handle(DispatchFailed(second.request, second.instance_id, "refused", attempt=2), 0.3)
    assert isinstance(gave_up, Reject) and gave_up.status == 502 and router.in_flight() == 0


def test_heartbeats_feed_kv_usage_to_least_kv_even_without_membership_changes() -> None:
    router = RouterCore(RouterConfig(policy="least_kv"))
    router.handle(heartbeat("a1", "eu", status("i1", kv_used_frac=0.7), status("i2", kv_used_frac=0.2)), 0.0)
    assert router.handle(RequestArrived(req(1)), 0.1)[0].instance_id == "i2"
    router.handle(heartbeat("a1", "eu", status("i1", kv_used_frac=0.1), status("i2", kv_used_frac=0.6),
                            at_s=1.0), 1.0)
    assert router.handle(RequestArrived(req(2)), 1.1)[0].instance_id == "i1"


def test_prefill_tokens_and_in_flight_are_charged_on_dispatch_and_released_on_finish() -> None:
    router = RouterCore(RouterConfig(policy="slo_aware", policy_params={"prefill_tokens_per_s": 1000.0}))
    router.handle(heartbeat("a1", "eu", status("i1"), status("i2")), 0.0)
    picks = [router.handle(RequestArrived(req(n, prompt=300 + n)), 0.1)[0].instance_id for n in range(3)]
    assert picks == ["i1", "i2", "i1"]  # least queued prefill each time
    router.handle(RequestFinished(outcome(0, arrival=0.1, ttft=0.1, e2e=1.0)), 1.0)
    router.handle(RequestFinished(outcome(2, arrival=0.1, ttft=0.1, e2e=1.0)), 1.0)
    assert router.handle(RequestArrived(req(3, prompt=10)), 1.1)[0].instance_id == "i1"  # i1 is empty again


def test_admission_limit_holds_until_a_completion_frees_capacity() -> None:
    router = RouterCore(RouterConfig(max_outstanding_tokens_per_instance=200, max_pending_per_model=1))
    router.handle(heartbeat("a1", "eu", status("i1")), 0.0)
    assert len(router.handle(RequestArrived(req(1, prompt=150, output=10)), 0.1)) == 1  # 160 < 200 after
    assert len(router.handle(RequestArrived(req(2, prompt=150, output=10)), 0.2)) == 1  # 160 < 200 before
    assert router.handle(RequestArrived(req(3)), 0.3) == []  # 320 >= 200: held
    [full] = router.handle(RequestArrived(req(4)), 0.4)
    assert isinstance(full, Reject) and full.status == 429
    [dispatch] = router.handle(RequestFinished(outcome(1, arrival=0.1, ttft=0.1, e2e=1.0)), 1.0)
    assert isinstance(dispatch, Dispatch) and dispatch.request.request_id == "r3" and router.pending() == {}
