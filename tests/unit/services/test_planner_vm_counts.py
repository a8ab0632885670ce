"""The planner carries a policy's VM counts (`Effects.vm_counts`) into its plan (`Plan.vm_counts`), tells
a policy the elastic fleet's quotas (`Observation.gpu_quotas`), and places only on agents that exist."""

from __future__ import annotations

import pytest
from _builders import heartbeat

from opscale.model import PoolKey
from opscale.planning import DeploymentSpec
from opscale.planning.sageserve.mip import SageServeMipConfig, SageServeMipPolicy
from opscale.services.events import RouterLoad
from opscale.services.planner import PlannerConfig, PlannerCore

pytestmark = pytest.mark.unit

MODEL = "Llama-3-70B"
DEP = DeploymentSpec(model=MODEL, sku="H100-80GB", tp=4, min_replicas=1, max_replicas=16)


def ten_rps(*_: object) -> float:
    return 10.0


def _planner(quotas: dict[tuple[str, str], int] | None) -> PlannerCore:
    # on demand only, and VMs for the desired instances alone (no room for prestaged growth): counts to check
    config = SageServeMipConfig(headroom=1.0, interval_s=30.0, min_resolve_s=0.0, spot=False, prestage=False)
    policy = SageServeMipPolicy([DEP], ten_rps, config)
    return PlannerCore(policy, [DEP], PlannerConfig(interval_s=10.0), gpu_quotas=quotas)


def _load(rps: float, at_s: float) -> RouterLoad:
    n = round(rps * 10)
    return RouterLoad("r0", "eu", at_s, {}, 10.0, {MODEL: n}, {MODEL: 1000 * n}, {MODEL: 200 * n})


def test_a_fixed_fleet_plan_names_no_vms() -> None:
    planner = _planner(None)
    planner.handle(heartbeat("a1", "eu"), 0.0)
    planner.tick(0.0)
    assert planner.plan.epoch == 1 and planner.plan.vm_counts == {}
    assert planner.observe(0.0).gpu_quotas == {}


def test_an_elastic_fleet_plan_carries_the_vms_the_policy_buys_and_places_only_on_agents_that_exist() -> None:
    planner = _planner({("eu", "H100-80GB"): 64})
    planner.handle(heartbeat("a1", "eu"), 0.0)
    planner.tick(0.0)
    assert planner.observe(0.0).gpu_quotas == {("eu", "H100-80GB"): 64}
    assert planner.plan.vm_counts == {("eu", "H100-80GB", "on_demand"): 1}
    # demand for 4 instances of 4 GPUs: 2 VMs bought, though only one host (two instances) exists yet
    for t in (10.0, 20.0, 30.0):
        planner.handle(_load(40.0, t), t)
        planner.handle(heartbeat("a1", "eu", at_s=t, epoch=planner.plan.epoch), t)
    planner.tick(31.0)
    assert planner.plan.vm_counts == {("eu", "H100-80GB", "on_demand"): 2}
    assert set(planner.plan.assignments) == {"a1"} and planner.plan.replicas() == {PoolKey(MODEL, "eu"): 2}
    # the second VM's agent joins: the instances that had no room go there
    planner.handle(heartbeat("a2", "eu", at_s=40.0), 40.0)
    planner.handle(heartbeat("a1", "eu", at_s=40.0, epoch=planner.plan.epoch), 40.0)
    planner.tick(41.0)
    assert planner.plan.replicas() == {PoolKey(MODEL, "eu"): 4} and set(planner.plan.assignments) == {"a1", "a2"}
