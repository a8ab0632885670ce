"""The SageServe MIP policy on an elastic fleet (`Observation.gpu_quotas`): it plans up to the cloud's quota
rather than the hosts present, and asks for the VMs its plan needs (`Effects.vm_counts`)."""

from __future__ import annotations

import math

import pytest

from opscale.model import Observation, PoolKey, PoolObservation
from opscale.planning import DeploymentSpec
from opscale.planning.sageserve.mip import SageServeMipConfig, SageServeMipPolicy

pytestmark = pytest.mark.unit

MODEL, SKU, REGION = "Llama-3-8B", "H100-80GB", "us-east"
POOL = PoolKey(MODEL, REGION)
ON_DEMAND = (REGION, SKU, "on_demand")


def ten_rps(*_: object) -> float:
    return 10.0


def observe(rps: float, ready: int, free_gpus: int, quota: int | None) -> Observation:
    pool = PoolObservation(POOL, ready=ready, arrival_rps=rps, prompt_tokens_per_s=rps * 1000,
                           output_tokens_per_s=rps * 200)
    quotas = {(REGION, SKU): quota} if quota is not None else {}
    return Observation(0.0, {POOL: pool}, {(REGION, SKU): free_gpus}, gpu_quotas=quotas)


def _policy(dep: DeploymentSpec) -> SageServeMipPolicy:
    return SageServeMipPolicy([dep], ten_rps, SageServeMipConfig(headroom=1.0))


def test_a_fixed_fleet_is_sized_within_its_hosts_and_gets_no_vm_counts() -> None:
    dep = DeploymentSpec(model=MODEL, sku=SKU, tp=2, min_replicas=1, max_replicas=64)
    policy = _policy(dep)
    # one host of 8 GPUs, 2 of them used: 4 instances at most, whatever the demand
    effects = policy.decide(observe(100.0, ready=1, free_gpus=6, quota=None), policy.initial_state(), 0.0)
    assert effects.desired[POOL] <= 4
    assert effects.vm_counts == {}


def test_an_elastic_fleet_plans_up_to_the_quota_and_buys_the_vms_the_plan_needs() -> None:
    dep = DeploymentSpec(model=MODEL, sku=SKU, tp=2, min_replicas=1, max_replicas=64)
    policy = _policy(dep)
    # 100 req/s at 10 each: 10 instances of 2 GPUs = 20 GPUs = 3 VMs of 8, beyond the one host present
    effects = policy.decide(observe(100.0, ready=1, free_gpus=6, quota=64), policy.initial_state(), 0.0)
    assert effects.desired[POOL] == 10
    assert effects.vm_counts == {ON_DEMAND: 3}
    # the quota binds: 16 GPUs hold 8 instances, in 2 VMs
    capped = policy.decide(observe(100.0, ready=1, free_gpus=6, quota=16), policy.initial_state(), 0.0)
    assert capped.desired[POOL] == 8 and capped.vm_counts == {ON_DEMAND: 2}


def test_the_vms_cover_the_instances_min_replicas_asks_for_without_demand() -> None:
    dep = DeploymentSpec(model=MODEL, sku=SKU, tp=4, min_replicas=3, max_replicas=8)
    policy = _policy(dep)
    effects = policy.decide(observe(0.0, ready=0, free_gpus=8, quota=64), policy.initial_state(), 0.0)
    assert effects.desired[POOL] == 3
    held = sum(n for (region, sku, _), n in effects.vm_counts.items() if (region, sku) == (REGION, SKU))
    assert held == math.ceil(3 * 4 / 8)
