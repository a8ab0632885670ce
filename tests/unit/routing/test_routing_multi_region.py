"""Multi-region routing through the router: local first, spill only when local is saturated (and the
crossing pays), shares by the planner's weights."""

from __future__ import annotations

from collections import Counter

import pytest
from _builders import heartbeat, req, status

from opscale.model import Plan
from opscale.services.actions import Dispatch
from opscale.services.events import PlanPublished, RequestArrived
from opscale.services.router import RouterConfig, RouterCore

pytestmark = pytest.mark.unit


def router(**params: object) -> RouterCore:
    core = RouterCore(RouterConfig(policy="multi_region", policy_params={
        "saturation_tokens": 1_000, "spill_penalty_tokens": 100, **params}))
    core.handle(heartbeat("a-eu", "eu", status("e1")), 0.0)
    core.handle(heartbeat("a-us", "us", status("u1")), 0.0)
    core.handle(heartbeat("a-ap", "ap", status("p1")), 0.0)
    return core


def send(core: RouterCore, n: int, prompt: int = 290, region: str = "eu") -> Dispatch:
    [action] = core.handle(RequestArrived(req(n, prompt=prompt, output=10, region=region)), float(n))
    assert isinstance(action, Dispatch)
    return action


def test_local_first_until_saturated_then_spill() -> None:
    core = router()
    first = [send(core, n) for n in range(4)]  # 300 tokens each: 0, 300, 600, 900 < 1 000 before each
    assert {d.region for d in first} == {"eu"} and all(d.reason == "multi_region local" for d in first)
    spilled = send(core, 4)  # eu holds 1 200 >= 1 000: saturated, and an idle region + 100 beats 1 200
    assert spilled.region in {"us", "ap"} and spilled.reason == "multi_region spill-over"


def test_no_spill_when_the_penalty_makes_remote_no_better() -> None:
    core = router(spill_penalty_tokens=5_000)
    assert {send(core, n).region for n in range(8)} == {"eu"}


def test_with_no_local_instance_requests_share_the_remote_regions_that_have_room() -> None:
    core = router()
    assert Counter(send(core, n, prompt=1, region="sa").region for n in range(6)) == {"eu": 2, "ap": 2, "us": 2}
    send(core, 6, prompt=5_000, region="ap")  # ap saturated
    assert {send(core, n, prompt=1, region="sa").region for n in range(7, 13)} == {"eu", "us"}


def test_spilled_requests_follow_the_plan_weights_and_skip_unweighted_regions() -> None:
    core = router(saturation_tokens=100_000, spill_penalty_tokens=0)
    core.handle(PlanPublished(Plan(1, 0.0, routing_weights={("m", "eu"): {"eu": 1.0, "us": 3.0, "ap": 1.0}})), 0.0)
    assert core.routing_weights("m", "eu") == {"eu": 1.0, "us": 3.0, "ap": 1.0}
    send(core, 0, prompt=200_000)  # eu saturated by one large request
    spilled = Counter(send(core, n, prompt=1).region for n in range(1, 41))
    assert spilled == {"us": 30, "ap": 10}
    core.handle(PlanPublished(Plan(2, 1.0, routing_weights={("m", "eu"): {"us": 1.0}})), 1.0)
    assert {send(core, n, prompt=1).region for n in range(41, 50)} == {"us"}  # ap has no weight now


def test_spill_over_off_keeps_requests_local() -> None:
    core = RouterCore(RouterConfig(policy="multi_region", spill_over=False,
                                   policy_params={"saturation_tokens": 10}))
    core.handle(heartbeat("a-eu", "eu", status("e1")), 0.0)
    core.handle(heartbeat("a-us", "us", status("u1")), 0.0)
    assert {send(core, n).region for n in range(5)} == {"eu"}
    assert core.handle(RequestArrived(req(9, region="ap")), 9.0) == []  # held: no local, no spill


def test_follow_plan_routes_by_the_plans_shares_from_the_first_request() -> None:
    core = router(saturation_tokens=100_000, follow_plan=True)
    # before any plan names the pair: local first, as without follow_plan
    assert send(core, 0, prompt=1).region == "eu"
    core.handle(PlanPublished(Plan(1, 0.0, routing_weights={("m", "eu"): {"eu": 0.25, "us": 0.75}})), 0.0)
    shares = Counter(send(core, n, prompt=1).region for n in range(1, 41))
    assert shares == {"eu": 10, "us": 30}  # ap has no share; nothing is saturated
    send(core, 41, prompt=200_000, region="us")  # us saturated: its share falls back to the planned rest
    assert {send(core, n, prompt=1).region for n in range(42, 50)} == {"eu"}
