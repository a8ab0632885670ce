"""Tier-priority holding (SageServe's NIW deferral) in the router core: batch work waits while
interactive work needs the room, is fed as it frees, goes ahead near its deadline, and is never lost."""

from __future__ import annotations

import pytest
from _builders import heartbeat, outcome, req, status
from pydantic import ValidationError

from opscale.model import TierSpec
from opscale.services.actions import Dispatch, Reject
from opscale.services.events import RequestArrived, RequestFinished
from opscale.services.router import RouterConfig, RouterCore

pytestmark = pytest.mark.unit

TIERS = {"interactive": TierSpec("interactive", 2.0, 0.1),
         "batch": TierSpec("batch", 600.0, 1.0, deadline_s=1000.0, priority=1)}


def holding_router() -> RouterCore:
    # admission limit 1000 tokens; batch only below half of it; NIW latest start at 0.8 x deadline
    config = RouterConfig(max_outstanding_tokens_per_instance=1000, batch_admission_share=0.5,
                          hold_order="tier_priority", hold_order_params={"deadline_fraction": 0.8},
                          max_pending_per_model=100, pending_timeout_s=60.0)
    router = RouterCore(config, tiers=TIERS)
    router.handle(heartbeat("a1", "eu", status("i1")), 0.0)
    return router


def alive(router: RouterCore, now_s: float) -> list:
    """A heartbeat from the one agent (so it is not forgotten), then a tick, at `now_s`."""
    return router.handle(heartbeat("a1", "eu", status("i1"), at_s=now_s), now_s) + router.tick(now_s)


def dispatched(actions: list) -> list[str]:
    return [a.request.request_id for a in actions if isinstance(a, Dispatch)]


def test_batch_is_held_above_its_share_while_interactive_still_gets_the_room() -> None:
    router = holding_router()
    assert dispatched(router.handle(RequestArrived(req(1, prompt=590)), 0.1)) == ["r1"]  # 600 outstanding
    assert router.handle(RequestArrived(req(2, tier="batch", t=0.2)), 0.2) == []  # 600 >= 500: held
    assert dispatched(router.handle(RequestArrived(req(3, prompt=290)), 0.3)) == ["r3"]  # 600 < 1000
    assert router.pending() == {"m": 1}


def test_the_feeder_admits_held_batch_as_capacity_frees_oldest_deadline_first() -> None:
    router = holding_router()
    router.handle(RequestArrived(req(1, prompt=590)), 0.1)
    router.handle(RequestArrived(req(2, tier="batch", t=0.3)), 0.3)
    router.handle(RequestArrived(req(3, tier="batch", t=0.2)), 0.2)
    fed = router.handle(RequestFinished(outcome(1, arrival=0.1, ttft=0.1, e2e=1.0)), 1.0)
    assert dispatched(fed) == ["r3", "r2"]  # arrival + 0.8 x deadline: r3 first
    assert router.pending() == {}


def test_a_batch_request_at_its_latest_start_takes_the_whole_limit() -> None:
    router = holding_router()
    router.handle(RequestArrived(req(1, prompt=590)), 0.1)
    assert router.handle(RequestArrived(req(2, tier="batch", t=0.0)), 0.2) == []
    assert dispatched(alive(router, 700.0)) == []  # before 0.8 x 1000 s: still held
    assert dispatched(alive(router, 800.0)) == ["r2"]  # 600 < 1000: the whole limit is open to it


def test_a_held_batch_request_that_never_finds_room_is_refused_by_its_deadline_not_lost() -> None:
    router = holding_router()
    router.handle(RequestArrived(req(1, prompt=990)), 0.1)  # 1000 outstanding: nothing else fits
    router.handle(RequestArrived(req(2, tier="batch", t=0.0)), 0.2)
    assert dispatched(alive(router, 900.0)) == []
    refused = [a for a in alive(router, 1000.0) if isinstance(a, Reject)]
    assert [(r.request.request_id, r.status) for r in refused] == [("r2", 503)] and router.pending() == {}


def test_batch_holding_needs_the_tier_order() -> None:
    with pytest.raises(ValidationError, match="tier_priority"):
        RouterConfig(batch_admission_share=0.5)


def test_the_batch_share_is_of_each_instance_kv_capacity_when_known() -> None:
    router = RouterCore(RouterConfig(batch_admission_share=0.5, hold_order="tier_priority"), tiers=TIERS)
    router.handle(heartbeat("a1", "eu", status("small", kv_capacity_tokens=1000),
                            status("big", kv_capacity_tokens=10_000)), 0.0)
    router.handle(RequestArrived(req(1, prompt=590)), 0.1)  # 600 on each instance
    router.handle(RequestArrived(req(2, prompt=590)), 0.1)
    picks = [router.handle(RequestArrived(req(i, tier="batch", prompt=2990)), 0.2) for i in (3, 4, 5)]
    # small: 600 >= 0.5 x 1000, no batch room; big: 600 and 3600 < 0.5 x 10 000, then 6600: held
    assert [dispatched(p) for p in picks] == [["r3"], ["r4"], []]
    assert {a.instance_id for p in picks for a in p} == {"big"} and router.pending() == {"m": 1}
