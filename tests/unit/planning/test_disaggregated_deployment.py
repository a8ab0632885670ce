"""Disaggregated deployments in the planning layer: DeploymentSpec validation with named errors, pools
per role placed with each role's SKU and TP, per-role sizing by reactive and static, and the policies
that cannot size them refusing by name."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from opscale.model import Observation, PoolKey, PoolObservation, Role
from opscale.perf import LatencyModels, default_catalog
from opscale.planning import DeploymentSpec, build_planning_stack, make_planning_policy
from opscale.planning.base import RolePoolSpec
from opscale.planning.capacity import CapacityEstimator
from opscale.planning.placement import AgentSlot, place
from opscale.planning.reactive import ReactivePolicy

pytestmark = pytest.mark.unit

SPLIT = DeploymentSpec(model="Llama-3-8B", prefill=RolePoolSpec(sku="H100-80GB", tp=2, min_replicas=1, max_replicas=4),
                       decode=RolePoolSpec(sku="H20", tp=1, min_replicas=2, max_replicas=8))


@pytest.mark.parametrize(("fields", "message"), [
    ({"prefill": {"sku": "H100-80GB"}}, "'decode' is missing"),
    ({"decode": {"sku": "H20"}}, "'prefill' is missing"),
    ({"prefill": {"tp": 1}, "decode": {"sku": "H20"}}, r"prefill\.sku\n  Field required"),
    ({"prefill": {"sku": "H20", "min_replicas": 5, "max_replicas": 2}, "decode": {"sku": "H20"}},
     r"prefill\n.*min_replicas \(5\) is above max_replicas \(2\)"),
    ({"sku": "H100-80GB", "prefill": {"sku": "H20"}, "decode": {"sku": "H20"}},
     r"\['sku'\] belong to a unified deployment"),
    ({}, "'sku' is required"),
    ({"sku": "H100-80GB", "min_replicas": 3, "max_replicas": 2}, r"min_replicas \(3\) is above max_replicas \(2\)"),
    ({"prefill": {"sku": "H20", "compatible_skus": ["h20"]}, "decode": {"sku": "H20"}},
     r"prefill\n.*compatible_skus: 'h20' is the pool's own sku"),
    ({"sku": "H20", "compatible_skus": {"L20": 3}}, r"deployment 'm': compatible_skus\.L20: tp must be 1, 2, 4 or 8"),
])
def test_bad_deployments_name_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DeploymentSpec.model_validate({"model": "m", **fields})


def test_each_role_has_its_own_pool_shape() -> None:
    assert SPLIT.disaggregated and SPLIT.roles() == (Role.PREFILL, Role.DECODE)
    assert SPLIT.pool(Role.DECODE) == RolePoolSpec(sku="H20", tp=1, min_replicas=2, max_replicas=8)
    assert SPLIT.skus() == ["H100-80GB", "H20"]
    view = SPLIT.for_role(Role.PREFILL)
    assert (view.sku, view.tp, view.min_replicas, view.max_replicas) == ("H100-80GB", 2, 1, 4)
    with pytest.raises(ValueError, match="'Llama-3-8B' has no unified pool; its roles: \\['prefill', 'decode'\\]"):
        SPLIT.pool(Role.UNIFIED)
    unified = DeploymentSpec(model="m", sku="H100-80GB", tp=4)
    assert unified.roles() == (Role.UNIFIED,) and unified.for_role(Role.UNIFIED) is unified


def test_an_unknown_role_sku_is_named() -> None:
    bad = SPLIT.model_copy(update={"decode": RolePoolSpec(sku="TPU-v9")})
    with pytest.raises(ValueError, match="deployment 'Llama-3-8B': decode.sku: .*TPU-v9"):
        build_planning_stack([bad], {}, "reactive", {}, catalog=default_catalog(), latency=LatencyModels())
    also = SPLIT.model_copy(update={"decode": RolePoolSpec(sku="H20", compatible_skus=["L20", "TPU-v9"])})
    with pytest.raises(ValueError, match="deployment 'Llama-3-8B': decode.compatible_skus: .*TPU-v9"):
        build_planning_stack([also], {}, "reactive", {}, catalog=default_catalog(), latency=LatencyModels())


def test_compatible_skus_keep_their_order_and_a_list_takes_the_pool_tp() -> None:
    pool = RolePoolSpec(sku="H20", tp=2, compatible_skus=["L20", "A100-80GB"])
    assert pool.choices() == [("H20", 2), ("L20", 2), ("A100-80GB", 2)]
    assert RolePoolSpec(sku="H20", compatible_skus={"L20": 4}).choices() == [("H20", 1), ("L20", 4)]
    dumped = DeploymentSpec(model="m", prefill=pool, decode=pool, scheduling_domain="s1").model_dump()
    assert DeploymentSpec.model_validate(dumped).pool(Role.DECODE) == pool  # an experiment variant reloads it


@pytest.mark.parametrize("policy", ["kpa", "chiron", "sageserve_mip", "sageserve_lt_i", "sageserve_reactive"])
def test_policies_that_size_unified_pools_only_refuse_a_disaggregated_deployment(policy: str) -> None:
    with pytest.raises(ValueError, match=rf"planning policy '{policy}' sizes unified deployments only; "
                                         r"\['Llama-3-8B'\] are disaggregated"):
        make_planning_policy(policy, [SPLIT], lambda *a, **k: 1.0)


def test_placement_places_each_role_with_its_sku_and_tp() -> None:
    agents = [AgentSlot("eu-h100-80gb-1", "eu", "H100-80GB", 8), AgentSlot("eu-h20-1", "eu", "H20", 8)]
    desired = {PoolKey("Llama-3-8B", "eu", Role.PREFILL): 2, PoolKey("Llama-3-8B", "eu", Role.DECODE): 3}
    result = place(desired, {}, agents, {"Llama-3-8B": SPLIT}, {}, 1)
    assert not result.unplaced
    prefill = result.assignments["eu-h100-80gb-1"]
    decode = result.assignments["eu-h20-1"]
    assert [(s.role, s.sku, s.tp) for s in prefill] == [(Role.PREFILL, "H100-80GB", 2)] * 2
    assert [(s.role, s.sku, s.tp) for s in decode] == [(Role.DECODE, "H20", 1)] * 3
    assert all(s.instance_id.startswith("Llama-3-8B-eu-decode-") for s in decode)


def test_reactive_sizes_prefill_on_prompt_tokens_and_decode_on_output_tokens() -> None:
    capacity = CapacityEstimator(default_catalog(), 0.1, latency_factory=LatencyModels())
    policy = ReactivePolicy([SPLIT], capacity)
    # 60 rps of 2000-token prompts and 100-token outputs, far above one instance of either pool
    pools = {key: PoolObservation(key=key, ready=1, loading=0, draining=0, arrival_rps=60.0,
                                  prompt_tokens_per_s=120000.0, output_tokens_per_s=6000.0)
             for key in (PoolKey("Llama-3-8B", "eu", Role.PREFILL), PoolKey("Llama-3-8B", "eu", Role.DECODE))}
    effects = policy.decide(Observation(100.0, pools, {}), policy.initial_state(), 100.0)
    prefill_rps = capacity("Llama-3-8B", "H100-80GB", 2, 2000, 100, role=Role.PREFILL)
    decode_rps = capacity("Llama-3-8B", "H20", 1, 2000, 100, role=Role.DECODE)
    for key, rate, shape in ((PoolKey("Llama-3-8B", "eu", Role.PREFILL), prefill_rps, SPLIT.prefill),
                             (PoolKey("Llama-3-8B", "eu", Role.DECODE), decode_rps, SPLIT.decode)):
        assert shape is not None
        want = min(shape.max_replicas, max(shape.min_replicas, -(-60.0 // (rate * 0.7))))
        assert effects.desired[key] == want, effects.reasons[key]
    # one phase each: a prefill instance out-runs a unified one on prompts, a decode one on outputs
    unified_rps = capacity("Llama-3-8B", "H100-80GB", 2, 2000, 100)
    assert prefill_rps > unified_rps and capacity("Llama-3-8B", "H100-80GB", 2, 2000, 100, role=Role.DECODE) > unified_rps


def test_static_gives_each_role_pool_its_own_maximum() -> None:
    policy = make_planning_policy("static", [SPLIT], lambda *a: 1.0)
    pools = {key: PoolObservation(key=key, ready=0, loading=0, draining=0)
             for key in (PoolKey("Llama-3-8B", "eu", Role.PREFILL), PoolKey("Llama-3-8B", "eu", Role.DECODE))}
    effects = policy.decide(Observation(0.0, pools, {}), policy.initial_state(), 0.0)
    assert {k.role: n for k, n in effects.desired.items()} == {Role.PREFILL: 4, Role.DECODE: 8}


def test_a_disaggregated_deployment_survives_a_dump_and_a_new_validation() -> None:
    # Scenarios merged with overrides (opscale simulate --config, experiment variants) dump and validate
    # their deployments again: the unified fields' defaults come back as set fields.
    dep = DeploymentSpec(model="m", prefill=RolePoolSpec(sku="H100-80GB"), decode=RolePoolSpec(sku="H20"))
    assert DeploymentSpec.model_validate(dep.model_dump()) == dep
