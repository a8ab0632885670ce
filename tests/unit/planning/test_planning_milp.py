"""The multi-region MIP planner on small instances whose answers can be checked by hand."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opscale.model import Purchase
from opscale.planning.milp import solve_plan
from opscale.planning.milp.check import violations
from opscale.planning.milp.greedy import greedy_plan
from opscale.planning.milp.inputs import (
    Fleet,
    ObjectiveWeights,
    PlanInputError,
    PlanInputs,
    PlannedModel,
    PlanSolution,
    SkuSpec,
    SolveStatus,
    SpotCapScope,
    TierSpec,
)

pytestmark = pytest.mark.unit

OD, SPOT = Purchase.ON_DEMAND, Purchase.SPOT
INTERACTIVE = TierSpec("interactive", rtt_budget_ms=50.0, rtt_penalty_usd_per_rps_ms_h=0.0)
BATCH = TierSpec("batch", deferrable=True, rtt_penalty_usd_per_rps_ms_h=0.0)


def sku(name: str) -> SkuSpec:
    return SkuSpec(name, gpus_per_vm=8, gpu_memory_gb=80.0, vm_boot_s=300.0)


def model(name: str) -> PlannedModel:
    return PlannedModel(name, weights_gb=16.0, kv_reserve_gb=8.0, tp_options=(1,), cold_load_s=600.0, warm_load_s=10.0)


def inputs(prices: dict, demand: dict, *, regions: tuple[str, ...] = ("a",), skus: tuple[str, ...] = ("cheap",),
           models: tuple[str, ...] = ("x",), capacity: dict | None = None, **kw: object) -> PlanInputs:
    """10 req/s per one-GPU instance of every model on every SKU unless `capacity` says otherwise."""
    cap = capacity or {(m, s, 1): 10.0 for m in models for s in skus}
    return PlanInputs(regions, tuple(sku(s) for s in skus), tuple(model(m) for m in models),
                      (INTERACTIVE, BATCH), prices, cap, demand, **kw)  # type: ignore[arg-type]


def assert_valid(inp: PlanInputs, sol: PlanSolution) -> None:
    assert violations(inp, sol.fleet, dict(sol.routing), dict(sol.unserved_share)) == []


def test_cheapest_sku_is_chosen_when_it_meets_demand() -> None:
    inp = inputs({("a", "cheap", OD): 1.0, ("a", "dear", OD): 3.0}, {("x", "a", "interactive"): 40.0},
                 skus=("cheap", "dear"))
    sol = solve_plan(inp, None, 10.0)
    assert sol.status == SolveStatus.OPTIMAL
    assert dict(sol.vm_counts) == {("a", "cheap", OD): 1}
    assert dict(sol.instances) == {("x", "a", "cheap", 1): 4}
    assert sol.costs.gpu_usd_per_h == pytest.approx(8.0)
    assert sol.gap is not None and sol.gap <= 0.01
    assert_valid(inp, sol)


def test_highs_finds_the_same_plan() -> None:
    inp = inputs({("a", "cheap", OD): 1.0, ("a", "dear", OD): 3.0}, {("x", "a", "interactive"): 40.0},
                 skus=("cheap", "dear"))
    sol = solve_plan(inp, None, 10.0, solver="highs")
    assert sol.status == SolveStatus.OPTIMAL and sol.solver == "HIGHS"
    assert dict(sol.vm_counts) == {("a", "cheap", OD): 1}


def test_quota_forces_a_second_sku() -> None:
    inp = inputs({("a", "cheap", OD): 1.0, ("a", "dear", OD): 3.0}, {("x", "a", "interactive"): 120.0},
                 skus=("cheap", "dear"), quotas_gpus={("a", "cheap"): 8})
    sol = solve_plan(inp, None, 10.0)
    assert dict(sol.vm_counts) == {("a", "cheap", OD): 1, ("a", "dear", OD): 1}
    assert sol.instances[("x", "a", "cheap", 1)] == 8 and sol.instances[("x", "a", "dear", 1)] == 4
    assert_valid(inp, sol)


def test_quota_forces_a_second_region_within_the_rtt_budget() -> None:
    inp = inputs({("a", "cheap", OD): 1.0, ("b", "cheap", OD): 1.5}, {("x", "a", "interactive"): 120.0},
                 regions=("a", "b"), quotas_gpus={("a", "cheap"): 8}, rtt_ms={("a", "b"): 20.0})
    sol = solve_plan(inp, None, 10.0)
    assert dict(sol.vm_counts) == {("a", "cheap", OD): 1, ("b", "cheap", OD): 1}
    shares = sol.routing[("x", "a", "interactive")]
    assert shares["a"] == pytest.approx(80 / 120) and shares["b"] == pytest.approx(40 / 120)
    assert sol.unserved_share == {}
    assert_valid(inp, sol)


@pytest.mark.parametrize("scope", list(SpotCapScope))
def test_spot_share_cap_holds(scope: SpotCapScope) -> None:
    inp = inputs({("a", "cheap", OD): 1.0, ("a", "cheap", SPOT): 0.4}, {("x", "a", "interactive"): 150.0},
                 spot_share_cap=0.5, spot_cap_scope=scope)
    sol = solve_plan(inp, None, 10.0)
    assert dict(sol.vm_counts) == {("a", "cheap", OD): 1, ("a", "cheap", SPOT): 1}
    assert_valid(inp, sol)


def test_routing_shares_sum_to_one_and_stay_within_the_rtt_budget() -> None:
    # b is much cheaper but 100 ms away: interactive (50 ms budget) stays home, batch (no budget) goes to b
    inp = inputs({("a", "cheap", OD): 5.0, ("b", "cheap", OD): 1.0},
                 {("x", "a", "interactive"): 30.0, ("x", "a", "batch"): 150.0},
                 regions=("a", "b"), rtt_ms={("a", "b"): 100.0, ("b", "a"): 100.0})
    sol = solve_plan(inp, None, 10.0)
    for key in inp.demand_rps:
        assert sum(sol.routing[key].values()) + sol.unserved_share.get(key, 0.0) == pytest.approx(1.0)
    assert set(sol.routing[("x", "a", "interactive")]) == {"a"}
    assert sol.routing[("x", "a", "batch")].get("b", 0.0) > 0.5
    assert_valid(inp, sol)


def test_deferrable_work_uses_capacity_interactive_leaves_idle() -> None:
    # 40 req/s interactive at the quantile (rho = 0.5: 20 on average) + 20 batch fit 4 instances, not 6
    inp = inputs({("a", "cheap", OD): 1.0}, {("x", "a", "interactive"): 40.0, ("x", "a", "batch"): 20.0},
                 interactive_mean_to_quantile=0.5)
    sol = solve_plan(inp, None, 10.0)
    assert sol.instances[("x", "a", "cheap", 1)] == 4
    assert sol.unserved_share == {}


def test_change_cost_keeps_the_previous_plan_when_demand_barely_changes() -> None:
    prices = {("a", "cheap", OD): 1.0, ("b", "cheap", OD): 1.01}
    rtt = {("a", "b"): 10.0, ("b", "a"): 10.0}
    before = inputs(prices, {("x", "a", "interactive"): 40.0}, regions=("a", "b"), rtt_ms=rtt)
    previous = Fleet({("b", "cheap", OD): 1}, {("x", "b", "cheap", 1): 4})
    now = dataclasses.replace(before, demand_rps={("x", "a", "interactive"): 38.0})
    kept = solve_plan(now, previous, 10.0)
    assert dict(kept.vm_counts) == {("b", "cheap", OD): 1}
    assert kept.costs.change_usd_per_h == pytest.approx(0.0)
    no_anchor = dataclasses.replace(now, weights=ObjectiveWeights(change_cost_weight=0.0))
    moved = solve_plan(no_anchor, previous, 10.0)
    assert dict(moved.vm_counts) == {("a", "cheap", OD): 1}


def test_warm_migration_is_preferred_over_a_cold_start() -> None:
    # x's demand is gone; y can run on the VM x leaves (slightly dearer SKU) or on a fresh, cheaper VM
    prices = {("a", "cheap", OD): 1.0, ("a", "dear", OD): 1.05}
    inp = inputs(prices, {("y", "a", "interactive"): 80.0}, skus=("cheap", "dear"), models=("x", "y"))
    previous = Fleet({("a", "dear", OD): 1}, {("x", "a", "dear", 1): 8})
    sol = solve_plan(inp, previous, 10.0)
    assert dict(sol.vm_counts) == {("a", "dear", OD): 1}
    assert sol.costs.warm_gpus == 8 and sol.costs.cold_gpus == 0
    # 8 GPUs x 10 s warm load at $1.05/GPU-h over a 1 h horizon
    assert sol.costs.change_usd_per_h == pytest.approx(8 * 10 * 1.05 / 3600)
    cold = solve_plan(dataclasses.replace(inp, weights=ObjectiveWeights(change_cost_weight=0.0)), previous, 10.0)
    assert dict(cold.vm_counts) == {("a", "cheap", OD): 1}


def test_infeasible_demand_uses_the_slack_and_reports_it() -> None:
    inp = inputs({("a", "cheap", OD): 1.0}, {("x", "a", "interactive"): 1000.0}, quotas_gpus={("a", "cheap"): 8})
    sol = solve_plan(inp, None, 10.0)
    assert sol.status in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE)
    assert sol.unserved_rps(inp) == {("x", "a", "interactive"): pytest.approx(920.0)}
    assert sol.routing[("x", "a", "interactive")]["a"] == pytest.approx(0.08)
    assert sol.costs.unserved_penalty_usd_per_h > 100 * sol.costs.gpu_usd_per_h
    assert_valid(inp, sol)


def test_no_offer_at_all_leaves_everything_unserved_without_error() -> None:
    inp = inputs({("a", "cheap", OD): 1.0}, {("x", "a", "interactive"): 5.0}, quotas_gpus={("a", "cheap"): 0})
    sol = solve_plan(inp, None, 10.0)
    assert sol.unserved_share == {("x", "a", "interactive"): 1.0}
    assert dict(sol.vm_counts) == {}


def test_a_tiny_time_limit_falls_back_to_a_valid_greedy_plan() -> None:
    regions, models = ("a", "b", "c"), ("x", "y", "z")
    prices = {(r, "cheap", OD): 1.0 + i / 10 for i, r in enumerate(regions)}
    demand = {(m, r, t): 7.0 + 3 * j + i for i, r in enumerate(regions) for j, m in enumerate(models)
              for t in ("interactive", "batch")}
    rtt = {(r1, r2): 20.0 for r1 in regions for r2 in regions if r1 != r2}
    inp = inputs(prices, demand, regions=regions, models=models, rtt_ms=rtt)
    sol = solve_plan(inp, None, 1e-3)
    assert sol.status == SolveStatus.GREEDY_FALLBACK and sol.gap is None
    assert sol.reason
    assert_valid(inp, sol)
    assert sol.unserved_share == {}
    zero = solve_plan(inp, None, 0.0)
    assert zero.status == SolveStatus.GREEDY_FALLBACK


def test_previous_solution_is_accepted_as_the_anchor() -> None:
    inp = inputs({("a", "cheap", OD): 1.0}, {("x", "a", "interactive"): 40.0})
    first = solve_plan(inp, None, 10.0)
    second = solve_plan(inp, first, 10.0)
    assert dict(second.vm_counts) == dict(first.vm_counts)
    assert second.costs.change_usd_per_h == pytest.approx(0.0)


def test_routing_weights_merge_tiers_by_demand() -> None:
    inp = inputs({("a", "cheap", OD): 5.0, ("b", "cheap", OD): 1.0},
                 {("x", "a", "interactive"): 30.0, ("x", "a", "batch"): 10.0},
                 regions=("a", "b"), rtt_ms={("a", "b"): 100.0})
    sol = solve_plan(inp, None, 10.0)
    weights = sol.routing_weights(inp)[("x", "a")]
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["a"] >= 0.75


def test_options_need_memory_for_weights_and_kv() -> None:
    big = PlannedModel("big", weights_gb=140.0, kv_reserve_gb=20.0, tp_options=(1, 2, 4, 8))
    inp = PlanInputs(("a",), (sku("s"),), (big,), (INTERACTIVE,), {("a", "s", OD): 1.0},
                     {("big", "s", tp): 5.0 * tp for tp in (1, 2, 4, 8)}, {("big", "a", "interactive"): 1.0})
    assert sorted(tp for (_, _, tp) in inp.options()) == [4, 8]  # 160 GB need > 0.9 x 2 x 80


@pytest.mark.parametrize(("change", "message"), [
    ({"prices_usd_per_gpu_h": {("a", "nope", OD): 1.0}}, "unknown sku 'nope'"),
    ({"demand_rps": {("x", "a", "gold"): 1.0}}, "unknown tier 'gold'"),
    ({"demand_rps": {("x", "a", "interactive"): -1.0}}, "demand must be a non-negative number"),
    ({"capacity_rps": {("x", "cheap", 1): math.nan}}, "capacity must be a positive finite number"),
    ({"spot_share_cap": 1.5}, "spot_share_cap must be in [0, 1]"),
    ({"rtt_ms": {("a", "zz"): 3.0}}, "unknown serving region 'zz'"),
])
def test_bad_inputs_are_named(change: dict, message: str) -> None:
    base = inputs({("a", "cheap", OD): 1.0}, {("x", "a", "interactive"): 1.0})
    with pytest.raises(PlanInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        dataclasses.replace(base, **change)


def test_unknown_solver_lists_the_known_ones() -> None:
    inp = inputs({("a", "cheap", OD): 1.0}, {("x", "a", "interactive"): 1.0})
    with pytest.raises(ValueError, match="known solvers: SCIP, HIGHS"):
        solve_plan(inp, None, 1.0, solver="gurobi")


@st.composite
def small_instances(draw: st.DrawFn) -> PlanInputs:
    regions = ("a", "b")[: draw(st.integers(1, 2))]
    skus = ("s1", "s2")[: draw(st.integers(1, 2))]
    models = ("x", "y")[: draw(st.integers(1, 2))]
    prices: dict = {}
    for r in regions:
        for s in skus:
            prices[(r, s, OD)] = draw(st.floats(0.5, 5.0))
            if draw(st.booleans()):
                prices[(r, s, SPOT)] = draw(st.floats(0.2, 2.0))
    quotas = {(r, s): draw(st.integers(0, 4)) * 8 for r in regions for s in skus if draw(st.booleans())}
    capacity = {(m, s, 1): draw(st.floats(1.0, 20.0)) for m in models for s in skus}
    demand = {(m, r, t): draw(st.floats(0.0, 60.0)) for m in models for r in regions for t in ("interactive", "batch")}
    rtt = {("a", "b"): draw(st.floats(0.0, 80.0)), ("b", "a"): draw(st.floats(0.0, 80.0))} if len(regions) == 2 else {}
    return inputs(prices, demand, regions=regions, skus=skus, models=models, capacity=capacity, quotas_gpus=quotas,
                  rtt_ms=rtt, spot_share_cap=draw(st.sampled_from([0.0, 0.3, 0.5, 1.0])),
                  spot_cap_scope=draw(st.sampled_from(list(SpotCapScope))))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_instances())
def test_plans_are_always_valid_and_never_worse_than_greedy(inp: PlanInputs) -> None:
    """Capacity covers served demand, instance GPUs fit VM GPUs, quotas and the spot cap hold, shares
    sum to 1, for the MIP and the greedy plan alike."""
    greedy = greedy_plan(inp)
    assert violations(inp, greedy.fleet, greedy.routing, greedy.unserved_share) == []
    sol = solve_plan(inp, None, 5.0)
    assert_valid(inp, sol)
    fallback = solve_plan(inp, None, 0.0)
    assert sol.objective_usd_per_h <= fallback.objective_usd_per_h * (1 + 1e-9) + 1e-9
