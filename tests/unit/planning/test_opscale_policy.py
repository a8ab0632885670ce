"""The combined `opscale` policy: the hourly budget around a plan, the clamp of an inner loop's wish to
it, the emergency rule that alone lets a wish past the ceiling (logged, VMs added) and the next solve
learning from it; the reasons name the loop that made each change."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opscale.model import LatencyObjective, Observation, PoolKey, PoolObservation, Role
from opscale.planning import DeploymentSpec, make_planning_policy
from opscale.planning.opscale.budget import PoolBudget, budget_from_plan, clamp_to_budget, emergency_reason
from opscale.planning.opscale.config import BudgetConfig, EmergencyRule

pytestmark = pytest.mark.unit

OBJECTIVE = LatencyObjective(ttft_slo_s=2.0, tbt_slo_s=0.1)
RULE = EmergencyRule()
MODEL = "Qwen2-7B"
POOL = PoolKey(MODEL, "us-east")


def test_budget_example() -> None:
    budget = budget_from_plan(4, 1, 64, BudgetConfig(floor=0.5, ceiling=1.25, slack=1))
    assert (budget.floor, budget.ceiling) == (2, 6)


@given(planned=st.integers(0, 200), low=st.integers(0, 20), span=st.integers(0, 80),
       floor=st.floats(0, 1), ceiling=st.floats(1, 3), slack=st.integers(0, 4))
def test_a_budget_is_ordered_and_within_the_deployment_bounds(planned: int, low: int, span: int, floor: float,
                                                              ceiling: float, slack: int) -> None:
    high = max(1, low + span)
    budget = budget_from_plan(planned, low, high, BudgetConfig(floor=floor, ceiling=ceiling, slack=slack))
    assert low <= budget.floor <= budget.ceiling <= high


@given(want=st.integers(0, 100), floor=st.integers(0, 10), extra=st.integers(0, 10), emergency=st.booleans())
def test_the_clamp_keeps_a_wish_in_its_budget_unless_in_an_emergency(want: int, floor: int, extra: int,
                                                                     emergency: bool) -> None:
    budget = PoolBudget(planned=floor + extra, floor=floor, ceiling=floor + extra)
    clamped = clamp_to_budget(want, budget, "TTFT over" if emergency else "", max_replicas=64)
    if want <= budget.ceiling or not emergency:
        assert budget.floor <= clamped.count <= budget.ceiling and clamped.borrowed == 0
        assert clamped.count == min(max(want, budget.floor), budget.ceiling)
        assert bool(clamped.note) == (clamped.count != want)
    else:
        assert clamped.count == min(want, 64) and clamped.borrowed == clamped.count - budget.ceiling
        assert clamped.note.startswith("EMERGENCY: TTFT over")


def pool(role: Role = Role.UNIFIED, **fields: object) -> PoolObservation:
    return PoolObservation(PoolKey(MODEL, "us-east", role), ready=2, **fields)  # type: ignore[arg-type]


def test_the_emergency_rule_reads_the_latency_each_role_is_judged_on() -> None:
    assert emergency_reason(pool(ttft_p99_s=2.5), OBJECTIVE, 0, RULE).startswith("TTFT p99 2.500 s")
    assert emergency_reason(pool(tbt_p99_s=0.2), OBJECTIVE, 0, RULE).startswith("TBT p99")
    # a prefill pool is judged on TTFT only, a decode pool on TBT only
    assert emergency_reason(pool(Role.PREFILL, tbt_p99_s=0.5), OBJECTIVE, 0, RULE) == ""
    assert emergency_reason(pool(Role.DECODE, ttft_p99_s=9.0), OBJECTIVE, 0, RULE) == ""
    assert emergency_reason(pool(ttft_p99_s=1.9, tbt_p99_s=0.09), OBJECTIVE, 0, RULE) == ""


def test_the_emergency_rule_fires_on_a_growing_queue_only() -> None:
    assert emergency_reason(pool(queued=20), OBJECTIVE, 10, RULE) == "queue grew 10 -> 20"
    assert emergency_reason(pool(queued=20), OBJECTIVE, 18, RULE) == ""  # long but not growing
    assert emergency_reason(pool(queued=4), OBJECTIVE, 1, RULE) == ""  # growing but short
    assert emergency_reason(pool(queued=20), OBJECTIVE, None, RULE) == ""  # no previous decision


def observe(now_s: float, rps: float, ready: int, **fields: object) -> Observation:
    seen = PoolObservation(POOL, ready=ready, arrival_rps=rps, prompt_tokens_per_s=rps * 1000,
                           output_tokens_per_s=rps * 200, **fields)  # type: ignore[arg-type]
    return Observation(now_s, {POOL: seen}, {("us-east", "H100-80GB"): 32})


@pytest.fixture
def policy():  # type: ignore[no-untyped-def]
    dep = DeploymentSpec(model=MODEL, sku="H100-80GB", tp=1, min_replicas=1, max_replicas=16)
    # a fixed capacity of 10 req/s per instance for the MIP; re-solves only hourly (no early re-solve);
    # few operator replicas per base, so the operator level asks for more base instances as load grows
    return make_planning_policy("opscale", [dep], lambda *_, **__: 10.0,
                                mip={"interval_s": 3600.0, "min_resolve_s": 3000.0},
                                operators={"replica_gpus_per_base": 0.25}, budget={"warmup_s": 0.0})


def test_a_wish_past_the_ceiling_is_capped_then_borrowed_in_an_emergency_then_learned(policy) -> None:  # type: ignore[no-untyped-def]
    first = policy.decide(observe(0.0, 5.0, 1), policy.initial_state(), 0.0)
    assert first.reasons[POOL].startswith("[second] hourly: MIP") and "budget [1..3] of plan 1" in first.reasons[POOL]
    assert first.vm_counts == {("us-east", "H100-80GB", "on_demand"): 1}
    # a burst the hourly plan did not foresee: the operator level wants more bases than the ceiling
    capped = policy.decide(observe(5.0, 80.0, 1), first.state, 5.0)
    assert capped.desired[POOL] == 3 and capped.reasons[POOL].startswith("[budget]")
    assert "capped" in capped.reasons[POOL]
    # the latency breaches: the emergency rule grants the wish, logged, with VMs bought on demand for it
    breach = policy.decide(observe(7.0, 80.0, 3, ttft_p99_s=5.0), capped.state, 7.0)
    borrowed = breach.desired[POOL]
    assert borrowed > 3 and breach.reasons[POOL].startswith("[emergency]")
    assert "EMERGENCY: TTFT p99" in breach.reasons[POOL]
    assert breach.vm_counts[("us-east", "H100-80GB", "on_demand")] == 1 + 1  # 4+ GPUs borrowed: one more VM
    assert breach.state.emergencies == 1
    # what was borrowed is kept until the next solve, even once the latency recovers
    calm = policy.decide(observe(9.0, 80.0, borrowed), breach.state, 9.0)
    assert calm.desired[POOL] == borrowed
    # the next hourly solve plans for the demand seen in the emergency, its ceiling at least what was borrowed
    solve = policy.decide(observe(3700.0, 80.0, borrowed), calm.state, 3700.0)
    assert solve.reasons[POOL].startswith("[hourly]")
    assert "learned from the emergency at 7 s" in solve.reasons[POOL]
    assert solve.state.budgets[POOL].ceiling >= borrowed and not solve.state.lessons


def test_no_budget_binds_before_a_whole_warm_up_of_demand() -> None:
    """A plan made before traffic (or on its first seconds) caps nothing: the inner loops size the pool
    for what they see until `warmup_s` of demand was observed; then the latest plan's budget binds."""
    dep = DeploymentSpec(model=MODEL, sku="H100-80GB", tp=1, min_replicas=0, max_replicas=16)
    policy = make_planning_policy("opscale", [dep], lambda *_, **__: 10.0,
                                  mip={"interval_s": 3600.0, "min_resolve_s": 3000.0},
                                  operators={"replica_gpus_per_base": 0.25}, budget={"warmup_s": 30.0})
    idle = policy.decide(observe(0.0, 0.0, 0), policy.initial_state(), 0.0)
    assert not idle.state.budgets and "no budget during the warm-up" in idle.reasons[POOL]
    assert idle.state.demand_since_s is None
    # the first requests: far more than the plan made on none, and the operator level gets all it asks for
    first = policy.decide(observe(10.0, 80.0, 0), idle.state, 10.0)
    assert first.state.demand_since_s == 10.0 and not first.state.budgets
    assert first.desired[POOL] > 3 and "capped" not in first.reasons[POOL]
    # 30 s of demand: the plan binds (the MIP re-solves only hourly here: its last plan, made on none)
    bound = policy.decide(observe(40.0, 80.0, first.desired[POOL]), first.state, 40.0)
    assert bound.state.budgeting and bound.state.budgets[POOL].ceiling == 0
    assert "warm-up over" in bound.reasons[POOL]


def test_the_policy_is_in_the_registry_and_refuses_a_bad_parameter_by_name() -> None:
    dep = DeploymentSpec(model=MODEL, sku="H100-80GB", tp=1)
    with pytest.raises(ValueError, match=r"planning policy 'opscale': budget.floor"):
        make_planning_policy("opscale", [dep], lambda *_, **__: 10.0, budget={"floor": 2.0})
    with pytest.raises(ValueError, match=r"planning policy 'opscale': mip.interval_s"):
        make_planning_policy("opscale", [dep], lambda *_, **__: 10.0, mip={"interval_s": 0})
    with pytest.raises(ValueError, match=r"planning policy 'opscale': emergency.latency_over"):
        make_planning_policy("opscale", [dep], lambda *_, **__: 10.0, emergency={"latency_over": -1})


def test_a_pool_planned_at_none_gets_no_slack_but_keeps_the_deployment_minimum() -> None:
    config = BudgetConfig(floor=0.0, ceiling=1.25, slack=1)
    assert (budget_from_plan(0, 0, 8, config).floor, budget_from_plan(0, 0, 8, config).ceiling) == (0, 0)
    assert budget_from_plan(0, 1, 8, config).ceiling == 1  # min_replicas still binds
    assert budget_from_plan(1, 0, 8, config).ceiling == 3  # a planned pool keeps its spare


def test_a_region_whose_demand_the_plan_routes_away_holds_none_of_the_model() -> None:
    dep = DeploymentSpec(model=MODEL, sku="H100-80GB", tp=1, min_replicas=0, max_replicas=16)
    policy = make_planning_policy("opscale", [dep], lambda *_, **__: 10.0,
                                  mip={"interval_s": 3600.0, "min_resolve_s": 3000.0, "rtt_budget_ms": 100.0},
                                  budget={"warmup_s": 0.0})
    busy, quiet = PoolKey(MODEL, "us-east"), PoolKey(MODEL, "us-west")
    pools = {key: PoolObservation(key, ready=1, arrival_rps=rps, prompt_tokens_per_s=rps * 1000,
                                  output_tokens_per_s=rps * 200)
             for key, rps in ((busy, 4.0), (quiet, 0.5))}
    effects = policy.decide(Observation(0.0, pools, {("us-east", "H100-80GB"): 32, ("us-west", "H100-80GB"): 32}),
                            policy.initial_state(), 0.0)
    assert effects.state.budgets[quiet].ceiling == 0
    assert effects.routing_weights[(MODEL, "us-west")] == {"us-east": pytest.approx(1.0)}
    # the operator level wants a base instance for the region's own trickle; the hourly budget says none
    assert effects.desired[quiet] == 0 and effects.reasons[quiet].startswith("[budget]")
    assert effects.desired[busy] >= 1



def test_the_operator_level_sizes_each_region_for_the_demand_the_plan_sends_it() -> None:
    from opscale.planning.opscale.policy import _routed_view

    east, west, eu = (PoolKey(MODEL, region) for region in ("us-east", "us-west", "eu-west"))
    seen = Observation(0.0, {key: PoolObservation(key, arrival_rps=rps, prompt_tokens_per_s=rps * 1000,
                                                  output_tokens_per_s=rps * 200)
                             for key, rps in ((east, 4.0), (west, 2.0), (eu, 1.0))})
    # eu-west's demand all to us-east, us-west's split half and half, us-east's named by no share: at home
    routed = _routed_view(seen, {(MODEL, "eu-west"): {"us-east": 1.0},
                                 (MODEL, "us-west"): {"us-west": 0.5, "us-east": 0.5}}).pools
    assert routed[east].arrival_rps == pytest.approx(6.0) and routed[east].output_tokens_per_s == pytest.approx(1200)
    assert routed[west].arrival_rps == pytest.approx(1.0) and routed[eu].arrival_rps == 0.0
    assert sum(p.arrival_rps for p in routed.values()) == pytest.approx(7.0)  # demand is moved, never lost


def test_each_roles_solve_sees_the_fleet_the_other_roles_leave_it() -> None:
    """The hourly loop solves each role on one shared fleet: a role's view keeps the observation's hosts
    and an elastic fleet's quotas (a view without them bought no VMs), less the GPUs the other roles'
    pools hold."""
    from opscale.planning.base import RolePoolSpec

    split = DeploymentSpec(model="Llama-2-13B", prefill=RolePoolSpec(sku="H100-80GB", tp=1, min_replicas=1, max_replicas=4),
                           decode=RolePoolSpec(sku="H20", tp=1, min_replicas=1, max_replicas=8))
    unified = DeploymentSpec(model=MODEL, sku="H100-80GB", tp=2, min_replicas=0, max_replicas=8)
    policy = make_planning_policy("opscale", [split, unified], lambda *_, **__: 10.0, heteroscale={
        "services": {"Llama-2-13B": {"decode_tps_per_instance": 600.0, "pd_ratio": "1:3"}}})
    east = "us-east"
    pools = {PoolKey("Llama-2-13B", east, Role.PREFILL): PoolObservation(PoolKey("Llama-2-13B", east, Role.PREFILL),
                                                                          ready=2, loading=1),
             PoolKey("Llama-2-13B", east, Role.DECODE): PoolObservation(PoolKey("Llama-2-13B", east, Role.DECODE),
                                                                         ready=3),
             PoolKey(MODEL, east): PoolObservation(PoolKey(MODEL, east), ready=1)}
    fleet = {(east, "H100-80GB"): 24, (east, "H20"): 16}
    seen = Observation(0.0, pools, free_gpus={(east, "H100-80GB"): 19, (east, "H20"): 13}, total_gpus=fleet,
                       gpu_quotas={(east, "H100-80GB"): 64, (east, "H20"): 32})
    for role, mip in policy.mips.items():
        view = policy._role_view(seen, role, mip, {})
        others = {Role.UNIFIED: {"H100-80GB": 3, "H20": 3}, Role.PREFILL: {"H100-80GB": 2, "H20": 3},
                  Role.DECODE: {"H100-80GB": 5, "H20": 0}}[role]
        assert view.total_gpus == {(east, sku): n - others[sku] for (_, sku), n in fleet.items()}
        assert view.gpu_quotas == {(east, "H100-80GB"): 64 - others["H100-80GB"], (east, "H20"): 32 - others["H20"]}
        assert view.free_gpus == seen.free_gpus
    # an instance counts on the SKU it runs on (placed_by_option), not its deployment's preferred one
    placed = dict(pools)
    moe = PoolKey(MODEL, east)
    placed[moe] = PoolObservation(moe, ready=1, placed_by_option={("H20", 2): 1})
    view = policy._role_view(replace(seen, pools=placed), Role.DECODE, policy.mips[Role.DECODE], {})
    assert view.total_gpus == {(east, "H100-80GB"): 24 - 3, (east, "H20"): 16 - 2}


def test_the_hourly_loop_prices_p_and_d_at_heteroscales_target_not_the_roofline() -> None:
    """A P/D role's solve plans what HeteroScale's target asks for: at 600 decode tokens/s per group
    instance and 1:3, 200-token answers, a decode instance carries 4 req/s and a prefill one 12 (here
    the capacity function says 10 for every role, which would plan far fewer decode instances)."""
    from opscale.planning.base import RolePoolSpec

    model = "Llama-2-13B"
    split = DeploymentSpec(model=model, prefill=RolePoolSpec(sku="H100-80GB", tp=1, min_replicas=1, max_replicas=64),
                           decode=RolePoolSpec(sku="H20", tp=1, min_replicas=1, max_replicas=64))
    policy = make_planning_policy("opscale", [split], lambda *_, **__: 10.0, budget={"warmup_s": 0.0},
                                  mip={"interval_s": 3600.0, "min_resolve_s": 3000.0, "headroom": 1.0},
                                  heteroscale={"services": {model: {"decode_tps_per_instance": 600.0,
                                                                    "pd_ratio": "1:3"}}})
    rps = 40.0
    pools = {key: PoolObservation(key, ready=1, arrival_rps=rps, prompt_tokens_per_s=rps * 1000,
                                  output_tokens_per_s=rps * 200)
             for key in (PoolKey(model, "us-east", Role.PREFILL), PoolKey(model, "us-east", Role.DECODE))}
    effects = policy.decide(Observation(0.0, pools, {("us-east", "H100-80GB"): 64, ("us-east", "H20"): 64}),
                            policy.initial_state(), 0.0)
    assert effects.state.budgets[PoolKey(model, "us-east", Role.DECODE)].planned == 10  # 40 / 4, not 40 / 10
    assert effects.state.budgets[PoolKey(model, "us-east", Role.PREFILL)].planned == 4  # 40 / 12, rounded up
