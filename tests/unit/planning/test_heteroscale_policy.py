"""The `heteroscale` planning policy through the registry: the controller's laws as the planner sees
them (ratio within one instance, no oscillation at constant load, feedback tiers at their thresholds),
bounds from the deployment, cold start, the periodic mode, and configuration errors naming the field."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.model import DEFAULT_TIERS, Observation, PoolKey, PoolObservation, Role, TierSpec
from opscale.planning import DeploymentSpec, make_planning_policy
from opscale.planning.base import Effects, PlanningPolicy, RolePoolSpec
from opscale.planning.heteroscale.ratio import ratio_error

pytestmark = pytest.mark.unit

PREFILL, DECODE = PoolKey("m", "eu", Role.PREFILL), PoolKey("m", "eu", Role.DECODE)
TIERS = {"chat": TierSpec("chat", ttft_slo_s=1.0, tbt_slo_s=0.05)}  # the objective comes from these
PERIOD_S = 30.0


def deployment(min_p: int = 1, max_p: int = 10_000, min_d: int = 1, max_d: int = 10_000) -> DeploymentSpec:
    return DeploymentSpec(model="m", prefill=RolePoolSpec(sku="H100-80GB", min_replicas=min_p, max_replicas=max_p),
                          decode=RolePoolSpec(sku="H20", min_replicas=min_d, max_replicas=max_d))


def _rps(*_: object, **__: object) -> float:
    return 1.0


def policy(dep: DeploymentSpec | None = None, **params: object) -> PlanningPolicy:
    fields: dict[str, object] = {"decode_tps_per_instance": 100.0, "pd_ratio": "1:3", **params}
    return make_planning_policy("heteroscale", [dep or deployment()], _rps, tiers=TIERS, **fields)


def observe(prefill: int, decode: int, decode_tps: float, *, tbt_p99_s: float | None = None,
            ttft_p99_s: float | None = None, queued: int = 0, demand_output_tps: float = 0.0,
            withdrawn: tuple[int, int] = (0, 0), now_s: float = 0.0) -> Observation:
    common = {"queued": queued, "output_tokens_per_s": demand_output_tps, "arrival_rps": demand_output_tps / 100}
    return Observation(now_s, {
        PREFILL: PoolObservation(PREFILL, ready=prefill, ttft_p99_s=ttft_p99_s, withdrawn=withdrawn[0], **common),
        DECODE: PoolObservation(DECODE, ready=decode, decode_tps=decode_tps, tbt_p99_s=tbt_p99_s,
                                withdrawn=withdrawn[1], **common)})


def pair(effects: Effects) -> tuple[int, int]:
    return effects.desired[PREFILL], effects.desired[DECODE]


def run(pol: PlanningPolicy, decode_tps: float, start: tuple[int, int], ticks: int) -> list[tuple[int, int]]:
    """Decisions at a constant load, each applied at once (all ready by the next decision)."""
    counts, state, history = start, pol.initial_state(), []
    for tick in range(ticks):
        now = tick * PERIOD_S
        effects = pol.decide(observe(*counts, decode_tps, now_s=now), state, now)
        counts, state = pair(effects), effects.state
        history.append(counts)
    return history


# --- the controller's laws, through the policy ------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.floats(0, 20_000), st.integers(1, 9), st.integers(1, 9), st.integers(1, 40), st.integers(1, 40))
def test_the_pd_ratio_is_kept_within_one_instance(load: float, p: int, d: int, start_p: int, start_d: int) -> None:
    pol = policy(pd_ratio=f"{p}:{d}")
    for prefill, decode in run(pol, load, (start_p, start_d), 25)[1:]:
        assert abs(ratio_error(prefill, decode, p / d)) < 1, (prefill, decode)


@settings(max_examples=60, deadline=None)
@given(st.floats(0, 20_000), st.integers(1, 60), st.integers(1, 60))
def test_constant_load_causes_no_oscillation(load: float, start_p: int, start_d: int) -> None:
    history = run(policy(), load, (start_p, start_d), 120)  # an hour of 30 s decisions
    totals = [sum(pr) for pr in history]
    steps = [b - a for a, b in zip(totals, totals[1:], strict=False) if b != a]
    assert all(s > 0 for s in steps) or all(s < 0 for s in steps), totals  # one direction only
    assert len(set(history[-10:])) == 1  # and settled


def _feedback(**latency: float) -> tuple[int, int]:
    # 12 instances (3P/9D) at a decode TPS inside the deadband: only feedback can move them.
    pol = policy()
    return pair(pol.decide(observe(3, 9, 1150.0, **latency), pol.initial_state(), 0.0))


def test_each_feedback_tier_fires_at_its_threshold_and_not_below() -> None:
    tbt, ttft = TIERS["chat"].tbt_slo_s, TIERS["chat"].ttft_slo_s  # the tiers', not the policy's
    assert _feedback() == (3, 9)
    assert _feedback(tbt_p99_s=1.1 * tbt * 0.999) == (3, 9)
    assert sum(_feedback(tbt_p99_s=1.1 * tbt)) == 14  # moderate: +10% of 12, at least one -> 13, split 1:3
    assert sum(_feedback(tbt_p99_s=1.3 * tbt * 0.999)) == 14
    assert sum(_feedback(tbt_p99_s=1.3 * tbt)) == 15  # severe: +20% of 12 -> 15
    assert _feedback(ttft_p99_s=1.1 * ttft * 0.999) == (3, 9)
    assert sum(_feedback(ttft_p99_s=1.1 * ttft)) > 12


# --- what the wiring adds ------------------------------------------------------------------------------------


def test_replica_bounds_come_from_the_deployments_role_pools() -> None:
    pol = policy(deployment(max_p=2, max_d=5))
    effects = pol.decide(observe(1, 3, 100_000.0), pol.initial_state(), 0.0)
    assert pair(effects) == (2, 5)
    pol = policy(deployment(min_p=2, min_d=4))
    assert pair(pol.decide(observe(1, 1, 0.0), pol.initial_state(), 0.0)) == (2, 4)  # the least total meeting both


def test_cold_start_brings_up_at_least_the_min_split_from_the_routers_demand() -> None:
    pol = policy(deployment(min_p=0, min_d=0))
    idle = pol.decide(observe(0, 0, 0.0), pol.initial_state(), 0.0)
    assert pair(idle) == (0, 0)  # nothing waiting: scaled to zero stays there
    waiting = pol.decide(observe(0, 0, 0.0, queued=3), pol.initial_state(), 0.0)
    assert pair(waiting) == (1, 1) and "cold start" in waiting.reasons[DECODE]
    busy = pol.decide(observe(0, 0, 0.0, queued=3, demand_output_tps=1200.0), pol.initial_state(), 0.0)
    assert pair(busy) == (3, 9)  # 1200 tokens/s at 100 per instance, split 1:3


def test_decisions_wait_for_the_controllers_period() -> None:
    pol = policy(period_s=60.0)
    first = pol.decide(observe(1, 3, 1200.0), pol.initial_state(), 0.0)
    assert pair(first) == (3, 9)
    held = pol.decide(observe(1, 3, 5000.0), first.state, 30.0)
    assert pair(held) == (1, 3) and held.reasons[DECODE].startswith("hold: next decision")


def test_effects_ask_for_soft_scale_in_and_the_ready_ratio_gate() -> None:
    pol = policy(soft_scale_in_s=45.0, ready_ratio_tolerance=0.5)
    effects = pol.decide(observe(1, 3, 0.0), pol.initial_state(), 0.0)
    assert effects.soft_scale_in_s == 45.0 and effects.ready_ratio_tolerance == {"m": 0.5}
    pol = policy(ready_ratio_tolerance=None)
    assert pol.decide(observe(1, 3, 0.0), pol.initial_state(), 0.0).ready_ratio_tolerance == {}


def test_per_service_parameters_override_the_defaults() -> None:
    other = DeploymentSpec(model="n", prefill=RolePoolSpec(sku="H100-80GB", max_replicas=100),
                           decode=RolePoolSpec(sku="H20", max_replicas=100))
    pol = make_planning_policy("heteroscale", [deployment(), other], _rps, tiers=TIERS, decode_tps_per_instance=100.0,
                               pd_ratio="1:3", services={"n": {"pd_ratio": "1:1", "decode_tps_per_instance": 200.0}})
    n_p, n_d = PoolKey("n", "eu", Role.PREFILL), PoolKey("n", "eu", Role.DECODE)
    obs = observe(1, 3, 1200.0)
    obs.pools.update({n_p: PoolObservation(n_p, ready=1), n_d: PoolObservation(n_d, ready=1, decode_tps=1200.0)})
    effects = pol.decide(obs, pol.initial_state(), 0.0)
    assert pair(effects) == (3, 9)
    assert (effects.desired[n_p], effects.desired[n_d]) == (3, 3)  # 1200 / 200 = 6 instances at 1:1


def test_a_service_may_follow_a_schedule() -> None:
    pol = policy(deployment(max_d=6), services={"m": {"mode": "periodic", "entries": [
        {"at_s": 0, "prefill": 1, "decode": 2}, {"at_s": 8 * 3600, "prefill": 3, "decode": 9}]}})
    assert pair(pol.decide(observe(1, 3, 99_999.0), pol.initial_state(), 3600.0)) == (1, 2)
    assert pair(pol.decide(observe(1, 3, 0.0), pol.initial_state(), 9 * 3600.0)) == (3, 6)  # decode max 6


def test_a_service_with_one_role_unobserved_is_left_alone() -> None:
    pol = policy()
    obs = Observation(0.0, {DECODE: PoolObservation(DECODE, ready=3, decode_tps=5000.0)})
    assert pol.decide(obs, pol.initial_state(), 0.0).desired == {}


@pytest.mark.parametrize(("params", "named"), [
    ({"pd_ratio": 0}, "pd_ratio"),
    ({"pd_ratio": "1:0"}, "pd_ratio"),
    ({"decode_tps_per_instance": None}, "decode_tps_per_instance"),
    ({"services": {"m": {"pd_ratio": -1}}}, "services.m.pd_ratio"),
    ({"services": {"m": {"mode": "weekly"}}}, "services.m.mode"),
    ({"services": {"x": {}}}, "services.x"),
    ({"services": {"m": {"mode": "periodic"}}}, "entries"),
    ({"soft_scale_in_s": -1}, "soft_scale_in_s"),
    ({"ready_ratio_tolerance": -0.1}, "ready_ratio_tolerance"),
    ({"min_prefill": 2}, "min_prefill"),  # bounds are the deployment's
    ({"ttft_slo_s": 1.0}, "ttft_slo_s"),  # objectives are the tiers'
])
def test_bad_parameters_are_errors_naming_the_field(params: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match="planning policy 'heteroscale'") as err:
        policy(**params)
    assert named in str(err.value)


def test_a_unified_deployment_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"\['u'\] are unified"):
        make_planning_policy("heteroscale", [DeploymentSpec(model="u", sku="H100-80GB")], _rps,
                             tiers=DEFAULT_TIERS, decode_tps_per_instance=1.0, pd_ratio=1)


def test_requests_waiting_on_a_service_whose_instances_are_all_withdrawn_bring_it_back() -> None:
    pol = policy(deployment(min_p=0, min_d=0))
    effects = pol.decide(observe(0, 0, 0.0, queued=2, withdrawn=(1, 2)), pol.initial_state(), 0.0)
    assert pair(effects) == (1, 1)  # the planner restores withdrawn instances before it places new ones


def test_a_decision_reads_the_mean_signal_of_its_whole_period() -> None:
    pol = policy(period_s=30.0)
    first = pol.decide(observe(3, 9, 1200.0), pol.initial_state(), 0.0)  # steady at 12 instances
    state = first.state
    for now, tps in ((10.0, 3000.0), (20.0, 1200.0)):  # one spike between two decisions
        state = pol.decide(observe(3, 9, tps, now_s=now), state, now).state
    decision = pol.decide(observe(3, 9, 1200.0, now_s=30.0), state, 30.0)
    assert pair(decision) == (5, 14)  # mean 1800 tokens/s: 18 instances (4.5P, 13.5D covered), not the spike's 30


@pytest.mark.parametrize("decode_tps", [300.0, 1_000.0, 4_000.0])
def test_role_rates_at_the_curated_target_plan_what_the_controller_asks_for(decode_tps: float) -> None:
    """An outer planner that prices each role at `role_rps` plans, at a steady decode rate, the pair the
    controller settles on: the group's instances at the target, split at the ratio."""
    pol = policy()
    output_tokens = 100.0  # observe() has arrival_rps = output_tps / 100
    rps = decode_tps / output_tokens
    need = {role: rps / pol.role_rps("m", role, 1_000.0, output_tokens)  # type: ignore[attr-defined]
            for role in (Role.PREFILL, Role.DECODE)}
    settled = run(pol, decode_tps, (1, 1), 40)[-1]
    assert need[Role.PREFILL] / need[Role.DECODE] == pytest.approx(1 / 3)
    assert need[Role.PREFILL] + need[Role.DECODE] == pytest.approx(decode_tps / 100.0)
    assert abs(settled[0] - need[Role.PREFILL]) <= 1 and abs(settled[1] - need[Role.DECODE]) <= 1.5


def test_a_service_without_a_target_has_no_role_rate() -> None:
    pol = policy(services={"m": {"mode": "periodic", "entries": [{"at_s": 0, "prefill": 1, "decode": 2}]}})
    assert pol.role_rps("m", Role.DECODE, 1_000.0, 100.0) is None  # type: ignore[attr-defined]
