"""The SageServe MIP policy on hand-built observations: solves size pools to demand at the headroom,
routing shares follow the MIP when remote serving is allowed, and between solves only bursts add."""

from __future__ import annotations

import math

import pytest

from opscale.model import Observation, PoolKey, PoolObservation
from opscale.planning import DeploymentSpec, make_planning_policy
from opscale.planning.sageserve.mip import SageServeMipConfig, SageServeMipPolicy

pytestmark = pytest.mark.unit

MODEL = "Llama-3-8B"
SKU = "H100-80GB"
DEP = DeploymentSpec(model=MODEL, sku=SKU, tp=1, min_replicas=1, max_replicas=64)
EU, US = PoolKey(MODEL, "eu-west"), PoolKey(MODEL, "us-east")


def ten_rps(*_: object) -> float:
    return 10.0


def observe(now_s: float, rps: dict[PoolKey, float], ready: dict[PoolKey, int], free: int = 32) -> Observation:
    pools = {k: PoolObservation(k, ready=ready[k], arrival_rps=r, prompt_tokens_per_s=r * 1000,
                                output_tokens_per_s=r * 200) for k, r in rps.items()}
    return Observation(now_s, pools, {(k.region, SKU): free for k in rps})


def test_a_solve_sizes_each_pool_to_its_demand_at_the_headroom() -> None:
    policy = SageServeMipPolicy([DEP], ten_rps, SageServeMipConfig(headroom=0.8))
    effects = policy.decide(observe(0.0, {EU: 40.0, US: 12.0}, {EU: 2, US: 2}), policy.initial_state(), 0.0)
    # local only by default: 40 / (10 x 0.8) = 5 and 12 / 8 -> 2
    assert effects.desired == {EU: 5, US: 2}
    assert all(why.startswith("MIP ") for why in effects.reasons.values())
    assert effects.routing_weights == {(MODEL, "eu-west"): {"eu-west": 1.0}, (MODEL, "us-east"): {"us-east": 1.0}}


def test_remote_serving_when_allowed_and_the_origin_runs_short_of_gpus() -> None:
    policy = SageServeMipPolicy([DEP], ten_rps, SageServeMipConfig(headroom=1.0, rtt_budget_ms=500.0))
    # eu-west has 2 GPUs in all; 40 req/s needs 4 instances: the rest must be served from us-east.
    observation = observe(0.0, {EU: 40.0, US: 5.0}, {EU: 1, US: 1}, free=1)
    observation = Observation(0.0, observation.pools, {("eu-west", SKU): 1, ("us-east", SKU): 16})
    effects = policy.decide(observation, policy.initial_state(), 0.0)
    assert effects.desired[EU] <= 2
    shares = effects.routing_weights[(MODEL, "eu-west")]
    assert math.isclose(sum(shares.values()), 1.0) and shares.get("us-east", 0.0) > 0.4
    assert effects.desired[US] >= math.ceil((5.0 + 40.0 * shares["us-east"]) / 10.0 - 1e-9)


def test_between_solves_bursts_add_and_nothing_is_removed() -> None:
    policy = SageServeMipPolicy([DEP], ten_rps, SageServeMipConfig(headroom=0.8, interval_s=300.0,
                                                                   min_resolve_s=30.0))
    first = policy.decide(observe(0.0, {EU: 40.0}, {EU: 2}), policy.initial_state(), 0.0)
    assert first.desired == {EU: 5}
    # too soon to solve again: the burst loop adds what full capacity (10 rps each) lacks
    burst = policy.decide(observe(20.0, {EU: 75.0}, {EU: 5}), first.state, 20.0)
    assert burst.desired == {EU: 8} and burst.reasons[EU].startswith("burst")
    calm = policy.decide(observe(60.0, {EU: 10.0}, {EU: 8}), burst.state, 60.0)
    assert calm.desired == {EU: 8}  # demand fell: held until the next solve
    resolved = policy.decide(observe(300.0, {EU: 10.0}, {EU: 8}), calm.state, 300.0)
    assert resolved.desired == {EU: 2}


def test_a_plan_made_for_far_less_demand_is_solved_again_at_once() -> None:
    policy = SageServeMipPolicy([DEP], ten_rps, SageServeMipConfig(headroom=0.8, interval_s=300.0,
                                                                   resolve_over=1.25, min_resolve_s=30.0))
    first = policy.decide(observe(0.0, {EU: 8.0}, {EU: 1}), policy.initial_state(), 0.0)
    assert first.desired == {EU: 1}
    within = policy.decide(observe(40.0, {EU: 9.5}, {EU: 1}), first.state, 40.0)
    assert within.desired == {EU: 1} and within.reasons[EU].startswith("hold")  # within 1.25x: the plan stands
    over = policy.decide(observe(50.0, {EU: 24.0}, {EU: 1}), within.state, 50.0)
    assert over.desired == {EU: 3} and over.reasons[EU].startswith("MIP ") and "over the" in over.reasons[EU]


def test_the_registry_builds_it_and_names_bad_parameters() -> None:
    assert make_planning_policy("sageserve_mip", [DEP], ten_rps).name == "sageserve_mip"
    with pytest.raises(ValueError, match="sageserve_mip.*headroom"):
        make_planning_policy("sageserve_mip", [DEP], ten_rps, headroom=2.0)
