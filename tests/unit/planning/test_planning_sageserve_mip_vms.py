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
    # 100 req/s at 10 each: 10 instances of 2 GPUs, beyond the one host present; the VMs also hold the growth
    # prestage prepares (resolve_over x 10 = 13 instances, 26 GPUs): 4 VMs of 8, on demand or spot
    effects = policy.decide(observe(100.0, ready=1, free_gpus=6, quota=64), policy.initial_state(), 0.0)
    assert effects.desired[POOL] == 10
    assert sum(effects.vm_counts.values()) == 4 and effects.vm_counts.get(ON_DEMAND, 0) >= 2
    # the quota binds: 16 GPUs hold 8 instances, in 2 VMs, and no VM is asked for beyond it
    capped = policy.decide(observe(100.0, ready=1, free_gpus=6, quota=16), policy.initial_state(), 0.0)
    assert capped.desired[POOL] == 8 and sum(capped.vm_counts.values()) == 2


def test_the_vms_cover_the_instances_min_replicas_asks_for_without_demand() -> None:
    dep = DeploymentSpec(model=MODEL, sku=SKU, tp=4, min_replicas=3, max_replicas=8)
    policy = _policy(dep)
    effects = policy.decide(observe(0.0, ready=0, free_gpus=8, quota=64), policy.initial_state(), 0.0)
    assert effects.desired[POOL] == 3
    held = sum(n for (region, sku, _), n in effects.vm_counts.items() if (region, sku) == (REGION, SKU))
    assert held == math.ceil(4 * 4 / 8)  # 3 instances and the one more prestage prepares for growth


def test_vms_hold_room_for_instances_running_on_another_sku_than_the_plans_mix() -> None:
    # The merged-loop regression: the small model's instance runs on an A100 (an earlier plan's choice) while
    # the plan now puts it on an L40S. Placement leaves it where it runs, so its A100 GPU stays taken: the
    # A100 VMs must hold the 70B instances *and* it, or a 70B instance waits for room that never comes.
    region = "eastus"
    small = DeploymentSpec(model="Llama-3-8B", sku="L40S", tp=1, min_replicas=1, max_replicas=4,
                           compatible_skus=["A100-80GB"])
    large = DeploymentSpec(model="Llama-3-70B", sku="A100-80GB", tp=4, min_replicas=1, max_replicas=8)

    def rps(model: str, sku: str, tp: int, *_: float) -> float:
        return 1.0 if model == large.model else 4.0

    policy = SageServeMipPolicy([small, large], rps, SageServeMipConfig(headroom=1.0, prestage=False, spot=False))
    pools = {PoolKey(small.model, region): PoolObservation(PoolKey(small.model, region), ready=1, arrival_rps=1.0,
                                                           prompt_tokens_per_s=1000.0, output_tokens_per_s=200.0,
                                                           placed_by_option={("A100-80GB", 1): 1}),
             PoolKey(large.model, region): PoolObservation(PoolKey(large.model, region), ready=1, arrival_rps=3.5,
                                                           prompt_tokens_per_s=3500.0, output_tokens_per_s=700.0,
                                                           placed_by_option={("A100-80GB", 4): 1})}
    quotas = {(region, "A100-80GB"): 64, (region, "L40S"): 64}
    effects = policy.decide(Observation(0.0, pools, {(region, "A100-80GB"): 3}, {(region, "A100-80GB"): 8},
                                        gpu_quotas=quotas), policy.initial_state(), 0.0)
    large_n = effects.desired[PoolKey(large.model, region)]
    assert large_n == 4  # 3.5 req/s at 1 each
    a100_vms = sum(n for (r, sku, _), n in effects.vm_counts.items() if (r, sku) == (region, "A100-80GB"))
    # 16 GPUs for the 70B instances, and the one the small model holds: 17 GPUs, 3 VMs of 8
    assert a100_vms * 8 >= large_n * 4 + 1
