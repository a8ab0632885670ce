"""The one assembly of the planning stack: capacity sized for the tiers' TBT objective and the engine's
limits, a policy that defends the tiers' objectives, and the same sizing in the simulated world as in a
live planner configured alike."""

from __future__ import annotations

import pytest

from opscale.engine import EngineConfig
from opscale.experiments.runner import build_world
from opscale.experiments.scenario import builtin_demo_scenario
from opscale.model import LatencyObjective, TierSpec
from opscale.perf import LatencyModels, default_catalog
from opscale.planning import DeploymentSpec, build_planning_stack

pytestmark = pytest.mark.unit

DEP = DeploymentSpec(model="Llama-3-8B", sku="H100-80GB", tp=1, min_replicas=1, max_replicas=8)
STRICT = {"chat": TierSpec("chat", ttft_slo_s=1.0, tbt_slo_s=0.015),
          "bulk": TierSpec("bulk", ttft_slo_s=600.0, tbt_slo_s=1.0, deadline_s=3600.0)}
RELAXED = {"chat": TierSpec("chat", ttft_slo_s=3.0, tbt_slo_s=0.15)}


def _stack(tiers: dict[str, TierSpec], policy: str = "reactive", engine: EngineConfig | None = None,
           **params: object):  # noqa: ANN202
    return build_planning_stack([DEP], tiers, policy, params, catalog=default_catalog(), latency=LatencyModels(),
                                engine=engine)


def test_capacity_is_sized_for_the_tiers_tbt_objective() -> None:
    strict, relaxed = _stack(STRICT), _stack(RELAXED)
    assert (strict.capacity.tbt_budget_s, relaxed.capacity.tbt_budget_s) == (0.015, 0.15)
    # a looser TBT objective lets an instance decode a larger batch: more requests per second
    assert relaxed.capacity(DEP.model, DEP.sku, 1, 1024, 256) > strict.capacity(DEP.model, DEP.sku, 1, 1024, 256)


def test_capacity_keeps_the_engines_limits() -> None:
    small = _stack(RELAXED, engine=EngineConfig(max_num_seqs=4, gpu_memory_utilization=0.5)).capacity
    assert (small.max_batch, small.gpu_memory_utilization) == (4, 0.5)
    default = _stack(RELAXED).capacity
    assert (default.max_batch, default.gpu_memory_utilization) == (EngineConfig().max_num_seqs,
                                                                   EngineConfig().gpu_memory_utilization)
    assert small(DEP.model, DEP.sku, 1, 1024, 256) < default(DEP.model, DEP.sku, 1, 1024, 256)


def test_the_policy_defends_the_tiers_objectives() -> None:
    for policy in ("reactive", "chiron"):
        stack = _stack(STRICT, policy)
        assert stack.policy.name == policy
        assert stack.policy.objective == LatencyObjective(ttft_slo_s=1.0, tbt_slo_s=0.015)  # type: ignore[attr-defined]
        assert stack.policy.capacity is stack.capacity  # type: ignore[attr-defined]


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="unknown planning policy 'reactiv'"):
        _stack(RELAXED, "reactiv")
    with pytest.raises(ValueError, match="planning policy 'kpa': panic_window_s"):
        _stack(RELAXED, "kpa", panic_window_s=-1.0)
    with pytest.raises(ValueError, match="unknown model 'Llama-9B'; known models: "):
        build_planning_stack([DEP.model_copy(update={"model": "Llama-9B"})], RELAXED, "reactive", {},
                             catalog=default_catalog(), latency=LatencyModels())
    with pytest.raises(ValueError, match="tiers: none given"):
        _stack({})


def test_the_simulated_planner_sizes_as_a_live_planner_configured_alike() -> None:
    scenario = builtin_demo_scenario()
    world, _ = build_world(scenario)
    simulated = world.planner.policy
    # what services/planner builds from live settings with the scenario's tiers and deployments
    live = build_planning_stack(scenario.deployments, scenario.tier_specs(), scenario.policy, scenario.policy_params,
                                catalog=default_catalog(), latency=LatencyModels())
    assert simulated.objective == live.policy.objective  # type: ignore[attr-defined]
    for dep in scenario.deployments:
        for prompt, output in ((200, 50), (1024, 256), (4000, 900)):
            assert simulated.capacity(dep.model, dep.sku, dep.tp, prompt, output) == \
                live.capacity(dep.model, dep.sku, dep.tp, prompt, output)  # type: ignore[attr-defined]
