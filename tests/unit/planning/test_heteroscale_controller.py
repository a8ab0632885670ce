from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from opscale.model import LatencyObjective, PoolKey, PoolObservation, Role
from opscale.planning.heteroscale import (
    ControllerState,
    HeteroScaleConfig,
    HeteroScaleController,
    PeriodicConfig,
    PeriodicController,
    ServiceObservation,
    desired_pools,
    observe_service,
    pool_reasons,
)
from opscale.planning.heteroscale.ratio import RoleBounds, arrange, ratio_error, split

pytestmark = pytest.mark.unit

OBJECTIVE = LatencyObjective(ttft_slo_s=2.0, tbt_slo_s=0.1)
PERIOD_S = 30.0
# The role bounds are the deployment's (DeploymentSpec role pools), given to the controller beside its config.
WIDE = {"min_prefill": 1, "max_prefill": 10_000, "min_decode": 1, "max_decode": 10_000}


def controller(**overrides: object) -> HeteroScaleController:
    bounds = {**WIDE, **{k: v for k, v in overrides.items() if k in WIDE}}
    fields: dict[str, object] = {"decode_tps_per_instance": 100.0, "pd_ratio": "1:3"}
    fields.update({k: v for k, v in overrides.items() if k not in WIDE})
    return HeteroScaleController(HeteroScaleConfig.model_validate(fields), RoleBounds(**bounds))  # type: ignore[arg-type]


def seen(prefill: int, decode: int, decode_tps: float, *, loading: int = 0, tbt_p99_s: float | None = None,
         ttft_p99_s: float | None = None, prefill_missed_tps: float = 0.0) -> ServiceObservation:
    """A service whose counts are all ready but `loading` decode instances."""
    return ServiceObservation(decode_tps=decode_tps, prefill_missed_tps=prefill_missed_tps,
                              prefill_ready=prefill, prefill_total=prefill, decode_ready=decode - loading,
                              decode_total=decode, objective=OBJECTIVE, tbt_p99_s=tbt_p99_s, ttft_p99_s=ttft_p99_s)


def run(ctl: HeteroScaleController, decode_tps: float, start: tuple[int, int], ticks: int,
        state: ControllerState | None = None, start_s: float = 0.0) -> list[tuple[int, int]]:
    """Decisions at a constant load, each applied at once (every instance ready by the next tick)."""
    pair, state = start, state or ctl.initial_state()
    history = []
    for tick in range(ticks):
        decision = ctl.decide(seen(*pair, decode_tps), state, start_s + tick * PERIOD_S)
        pair, state = (decision.prefill, decision.decode), decision.state
        history.append(pair)
    return history


# --- the P/D ratio ------------------------------------------------------------------------------------


@given(st.integers(0, 5000), st.integers(1, 9), st.integers(1, 9))
def test_split_puts_each_role_within_one_instance_of_its_share(total: int, p: int, d: int) -> None:
    prefill, decode = split(total, p / d)
    assert prefill + decode == (0 if total == 0 else max(total, 2))
    if total > 0:
        assert prefill >= 1 and decode >= 1
        assert abs(ratio_error(prefill, decode, p / d)) < 1


@given(st.floats(0, 400_000), st.integers(1, 9), st.integers(1, 9), st.integers(0, 80), st.integers(0, 80),
       st.one_of(st.none(), st.floats(0, 1)), st.floats(0, 1e6))
def test_every_decision_keeps_the_ratio_within_one_instance(decode_tps: float, p: int, d: int, prefill: int,
                                                            decode: int, tbt_p99_s: float | None,
                                                            start_s: float) -> None:
    ctl = controller(pd_ratio=f"{p}:{d}")
    decision = ctl.decide(seen(prefill, decode, decode_tps, tbt_p99_s=tbt_p99_s), ctl.initial_state(), start_s)
    assert decision.prefill >= 1 and decision.decode >= 1
    assert abs(ratio_error(decision.prefill, decision.decode, p / d)) < 1


@given(st.floats(0, 100_000), st.integers(1, 9), st.integers(1, 9), st.integers(1, 200))
@settings(max_examples=50)
def test_a_run_of_changing_loads_never_drifts_off_the_ratio(peak_tps: float, p: int, d: int, seed: int) -> None:
    ctl = controller(pd_ratio=f"{p}:{d}")
    pair, state = (1, 1), ctl.initial_state()
    for tick in range(120):
        load = peak_tps * (0.5 + 0.5 * math.sin(seed + tick / 10))
        decision = ctl.decide(seen(*pair, load), state, tick * PERIOD_S)
        pair, state = (decision.prefill, decision.decode), decision.state
        assert abs(ratio_error(*pair, p / d)) < 1


@given(st.integers(0, 300), st.integers(0, 300), st.integers(1, 9), st.integers(1, 9),
       st.integers(0, 20), st.integers(0, 20), st.integers(1, 60), st.integers(1, 60))
def test_arrange_meets_the_bounds_and_grows_with_the_total(total: int, more: int, p: int, d: int, min_p: int,
                                                           min_d: int, max_p: int, max_d: int) -> None:
    bounds = RoleBounds(min(min_p, max_p), max_p, min(min_d, max_d), max_d)
    low, high = arrange(total, p / d, bounds), arrange(total + more, p / d, bounds)
    for prefill, decode in (low, high):
        assert bounds.min_prefill <= prefill <= bounds.max_prefill
        assert bounds.min_decode <= decode <= bounds.max_decode
    assert low[0] <= high[0] and low[1] <= high[1]


def test_bounds_cap_both_roles_at_the_ratio_and_clamp_only_what_they_force() -> None:
    # At 1:3, at most 2 prefill allows 9 instances on the ratio: the decode pool stops at 7, not at its max.
    assert arrange(100, 1 / 3, RoleBounds(1, 2, 1, 64)) == (2, 7)
    # At least 5 prefill and at most 4 decode meet at no total: each role is clamped, nothing further.
    assert arrange(10, 1 / 3, RoleBounds(5, 64, 0, 4)) == (5, 4)
    ctl = controller(max_prefill=2)
    decision = ctl.decide(seen(1, 3, 10_000.0), ctl.initial_state(), 0.0)
    assert (decision.prefill, decision.decode) == (2, 7)


def test_counts_outside_the_bounds_move_inside_at_once_without_a_cooldown() -> None:
    ctl = controller(min_prefill=2, min_decode=6)
    decision = ctl.decide(seen(0, 0, 0.0), ctl.initial_state(), 0.0)
    assert (decision.prefill, decision.decode) == (2, 6)
    assert decision.reason.startswith("bounds: 0P/0D -> 2P/6D")
    assert decision.state == ctl.initial_state()


def test_an_off_ratio_service_is_rebalanced_at_the_same_total() -> None:
    ctl = controller()
    decision = ctl.decide(seen(5, 15, 2000.0), ctl.initial_state(), 0.0)  # 20 needed: 5P/15D is on the ratio
    assert (decision.prefill, decision.decode) == (5, 15)
    decision = ctl.decide(seen(8, 12, 2000.0), ctl.initial_state(), 0.0)
    assert (decision.prefill, decision.decode) == (5, 15)
    assert decision.reason.startswith("rebalance")
    # Not while an instance loads: the counts may be mid-way through an ordered change.
    decision = ctl.decide(seen(8, 12, 2000.0, loading=1), ctl.initial_state(), 0.0)
    assert (decision.prefill, decision.decode) == (8, 12)


# --- proportional control and its signals ----------------------------------------------------------------


def test_proportional_control_splits_the_required_instances_by_the_ratio() -> None:
    ctl = controller()
    decision = ctl.decide(seen(1, 1, 4000.0), ctl.initial_state(), 0.0)  # 4000 TPS / 100 per instance
    assert (decision.prefill, decision.decode) == (10, 30)
    assert decision.reason.startswith("scale out")
    assert decision.next_decision_s == 30.0


def test_the_cache_missed_prefill_signal_uses_its_own_target() -> None:
    ctl = controller(signal="prefill_missed_tps", prefill_missed_tps_per_instance=2000.0)
    decision = ctl.decide(seen(1, 1, 1e9, prefill_missed_tps=40_000.0), ctl.initial_state(), 0.0)
    assert (decision.prefill, decision.decode) == (5, 15)


def test_a_signal_that_is_not_a_number_changes_nothing() -> None:
    ctl = controller()
    for bad in (math.nan, math.inf, -5.0):
        decision = ctl.decide(seen(5, 15, bad), ctl.initial_state(), 0.0)
        assert (decision.prefill, decision.decode) == (5, 15)
        assert decision.state == ctl.initial_state()


@given(st.floats(0, 50_000), st.integers(0, 120), st.integers(1, 9), st.integers(1, 9),
       st.sampled_from([0.25, 0.5, 1.0]), st.sampled_from([0.25, 0.5, 1.0]))
@settings(max_examples=60)
def test_constant_load_settles_without_changing_direction(decode_tps: float, start_total: int, p: int, d: int,
                                                          out_fraction: float, in_fraction: float) -> None:
    ctl = controller(pd_ratio=f"{p}:{d}", scale_out_step_fraction=out_fraction,
                     scale_in_step_fraction=in_fraction)
    start = ctl.arrange(start_total)
    totals = [sum(start)] + [sum(pair) for pair in run(ctl, decode_tps, start, 1500)]
    steps = [b - a for a, b in zip(totals, totals[1:], strict=False)]
    assert all(s >= 0 for s in steps) or all(s <= 0 for s in steps), totals
    assert len(set(totals[-100:])) == 1, totals


def test_a_load_inside_the_deadband_changes_nothing() -> None:
    ctl = controller()
    for decode_tps in (4000.0, 4300.0, 3700.0):  # 40 instances serve; 43 and 37 are within 10%
        decision = ctl.decide(seen(10, 30, decode_tps), ctl.initial_state(), 0.0)
        assert (decision.prefill, decision.decode) == (10, 30)
        assert decision.reason.startswith("steady")
    assert ctl.decide(seen(10, 30, 4500.0), ctl.initial_state(), 0.0).reason.startswith("scale out")
    assert ctl.decide(seen(10, 30, 3500.0), ctl.initial_state(), 0.0).reason.startswith("scale in")


def test_hysteresis_keeps_separate_out_and_in_triggers() -> None:
    ctl = controller(scale_out_above=0.25, scale_in_below=0.05)
    # 40 serve: 48 needed is within the 25% out trigger; 37 needed is past the 5% in trigger.
    assert ctl.decide(seen(10, 30, 4800.0), ctl.initial_state(), 0.0).reason.startswith("steady")
    assert ctl.decide(seen(10, 30, 3700.0), ctl.initial_state(), 0.0).reason.startswith("scale in")


def test_a_scale_in_waits_its_cooldown_after_a_scale_out() -> None:
    ctl = controller(scale_in_step_fraction=1.0)
    out = ctl.decide(seen(2, 6, 4000.0), ctl.initial_state(), 1000.0)
    assert (out.prefill, out.decode) == (10, 30)
    for now_s in (1030.0, 1599.0):  # the load collapses at once, but 600 s have not passed
        held = ctl.decide(seen(10, 30, 1000.0), out.state, now_s)
        assert (held.prefill, held.decode) == (10, 30)
        assert "scale-in cooldown" in held.reason
    scaled = ctl.decide(seen(10, 30, 1000.0), out.state, 1600.0)
    assert (scaled.prefill, scaled.decode) == (3, 8)  # 10 required: 2.5P and 7.5D, each covered
    # A scale-in is a change too: the next one waits another 600 s.
    assert "cooldown" in ctl.decide(seen(10, 30, 100.0), scaled.state, 1630.0).reason


def test_a_scale_out_waits_its_cooldown_after_a_scale_out() -> None:
    ctl = controller()
    out = ctl.decide(seen(2, 6, 4000.0), ctl.initial_state(), 0.0)
    held = ctl.decide(seen(10, 30, 8000.0), out.state, 179.0)
    assert (held.prefill, held.decode) == (10, 30) and "scale-out cooldown" in held.reason
    again = ctl.decide(seen(10, 30, 8000.0), out.state, 180.0)
    assert (again.prefill, again.decode) == (20, 60)


def test_a_scale_in_waits_while_instances_load() -> None:
    ctl = controller()
    held = ctl.decide(seen(10, 30, 1000.0, loading=2), ctl.initial_state(), 0.0)
    assert (held.prefill, held.decode) == (10, 30) and "loading" in held.reason


def test_damping_closes_a_big_gap_over_several_ticks_without_overshooting() -> None:
    ctl = controller(scale_out_step_fraction=0.5, scale_out_cooldown_s=0.0)
    history = run(ctl, 20_000.0, (1, 1), 20)  # 200 instances needed
    totals = [sum(pair) for pair in history]
    assert totals[0] == 2 + math.ceil((200 - 2) / 2)  # half the gap
    assert all(b >= a for a, b in zip(totals, totals[1:], strict=False))
    assert max(totals) <= 200
    assert len(set(totals)) >= 4  # several moves
    assert totals[-1] >= 200 / 1.1  # it ends within the deadband


def test_damping_moves_at_least_one_instance() -> None:
    ctl = controller(scale_in_step_fraction=0.01, scale_in_below=0.0)
    decision = ctl.decide(seen(10, 30, 3000.0), ctl.initial_state(), 0.0)
    assert decision.prefill + decision.decode == 39


# --- negative feedback ---------------------------------------------------------------------------------------

BELOW = 1 - 1e-6
ABOVE = 1 + 1e-6


@pytest.mark.parametrize(("tbt_over_slo", "expected", "tier"), [
    (1.1 * BELOW, (10, 30), None),
    (1.1, (11, 33), "moderate"),
    (1.1 * ABOVE, (11, 33), "moderate"),
    (1.3 * BELOW, (11, 33), "moderate"),
    (1.3, (12, 36), "severe"),
    (1.3 * ABOVE, (12, 36), "severe"),
])
def test_each_feedback_tier_fires_at_its_threshold_and_not_below(tbt_over_slo: float, expected: tuple[int, int],
                                                                 tier: str | None) -> None:
    ctl = controller()
    decision = ctl.decide(seen(10, 30, 4000.0, tbt_p99_s=tbt_over_slo * OBJECTIVE.tbt_slo_s), ctl.initial_state(),
                          0.0)
    assert (decision.prefill, decision.decode) == expected
    if tier is None:
        assert decision.reason.startswith("steady")
    else:
        assert decision.reason.startswith(f"feedback ({tier})")


def test_a_decimal_threshold_fires_on_the_decimal_value() -> None:
    ctl = controller()
    decision = ctl.decide(seen(10, 30, 4000.0, tbt_p99_s=0.11), ctl.initial_state(), 0.0)
    assert decision.reason.startswith("feedback (moderate)")


def test_ttft_feedback_fires_on_its_own_objective_and_can_be_turned_off() -> None:
    breach = seen(10, 30, 4000.0, ttft_p99_s=1.3 * OBJECTIVE.ttft_slo_s)
    ctl = controller()
    decision = ctl.decide(breach, ctl.initial_state(), 0.0)
    assert (decision.prefill, decision.decode) == (12, 36)
    off = controller(ttft_feedback=None)
    assert off.decide(breach, off.initial_state(), 0.0).reason.startswith("steady")


def test_the_worst_tier_over_both_signals_wins() -> None:
    ctl = controller()
    both = seen(10, 30, 4000.0, tbt_p99_s=0.115, ttft_p99_s=2.7)
    assert ctl.decide(both, ctl.initial_state(), 0.0).reason.startswith("feedback (severe): TTFT")


def test_feedback_overrides_a_proportional_scale_in() -> None:
    ctl = controller()
    decision = ctl.decide(seen(10, 30, 1000.0, tbt_p99_s=0.12), ctl.initial_state(), 0.0)
    assert (decision.prefill, decision.decode) == (11, 33)
    # In its cooldown it cannot add more, and the scale-in the load asks for is still held off.
    later = ctl.decide(seen(11, 33, 1000.0, tbt_p99_s=0.12), decision.state, 179.0)
    assert (later.prefill, later.decode) == (11, 33)
    assert "no scale-in" in later.reason


def test_feedback_waits_for_loading_instances_but_a_bigger_proportional_need_does_not() -> None:
    ctl = controller()
    held = ctl.decide(seen(10, 30, 4000.0, loading=4, tbt_p99_s=0.2), ctl.initial_state(), 0.0)
    assert (held.prefill, held.decode) == (10, 30) and "loading" in held.reason
    grown = ctl.decide(seen(10, 30, 8000.0, loading=4, tbt_p99_s=0.2), ctl.initial_state(), 0.0)
    assert (grown.prefill, grown.decode) == (20, 60)


def test_a_bigger_proportional_scale_out_wins_over_the_feedback_step() -> None:
    ctl = controller()
    decision = ctl.decide(seen(10, 30, 8000.0, tbt_p99_s=0.11), ctl.initial_state(), 0.0)
    assert (decision.prefill, decision.decode) == (20, 60)


# --- the periodic policy ------------------------------------------------------------------------------------


def schedule(**overrides: object) -> PeriodicConfig:
    fields: dict[str, object] = {"entries": [{"at_s": 8 * 3600, "prefill": 4, "decode": 12},
                                             {"at_s": 20 * 3600, "prefill": 1, "decode": 3}], **overrides}
    return PeriodicConfig.model_validate(fields)


@pytest.mark.parametrize(("now_s", "expected"), [
    (0.0, (1, 3)),  # before the first entry of the day: yesterday's last
    (8 * 3600 - 1, (1, 3)),
    (8 * 3600, (4, 12)),
    (19 * 3600, (4, 12)),
    (20 * 3600, (1, 3)),
    (86_400 + 9 * 3600, (4, 12)),  # the next day
])
def test_the_periodic_policy_follows_its_schedule(now_s: float, expected: tuple[int, int]) -> None:
    policy = PeriodicController(schedule())
    decision = policy.decide(seen(2, 6, 0.0), policy.initial_state(), now_s)
    assert (decision.prefill, decision.decode) == expected


def test_the_periodic_policy_reads_local_time_and_records_its_changes() -> None:
    policy = PeriodicController(schedule(utc_offset_s=3600))
    decision = policy.decide(seen(1, 3, 0.0), policy.initial_state(), 7 * 3600)  # 08:00 local
    assert (decision.prefill, decision.decode) == (4, 12)
    assert decision.state.last_scale_out_s == 7 * 3600
    assert "08:00" in decision.reason


@pytest.mark.parametrize(("overrides", "named"), [
    ({"entries": []}, "entries"),
    ({"entries": [{"at_s": 3600, "prefill": 1, "decode": 3}, {"at_s": 60, "prefill": 1, "decode": 3}]},
     "entries[1].at_s"),
    ({"entries": [{"at_s": 60, "prefill": -1, "decode": 3}]}, "entries.0.prefill"),
    ({"entries": [{"at_s": 60, "prefill": 0, "decode": 3}]}, "entries[0]"),
    ({"entries": [{"at_s": 90_000, "prefill": 1, "decode": 3}]}, "entries.0.at_s"),
    ({"pd_ratio": "1:1"}, "entries[0]: 4P/12D"),
    ({"pd_ratio": 0}, "pd_ratio"),
])
def test_the_schedule_is_validated_with_the_field_named(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError) as err:
        schedule(**overrides)
    assert named in str(err.value)


def test_a_schedule_on_its_ratio_is_accepted() -> None:
    assert schedule(pd_ratio="1:3").pd_ratio == pytest.approx(1 / 3)


# --- configuration -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "named"), [
    ({"pd_ratio": 0}, "pd_ratio"),
    ({"pd_ratio": -0.5}, "pd_ratio"),
    ({"pd_ratio": "1:0"}, "pd_ratio"),
    ({"pd_ratio": "one to three"}, "pd_ratio"),
    ({"decode_tps_per_instance": 0}, "decode_tps_per_instance"),
    ({"decode_tps_per_instance": None}, "decode_tps_per_instance"),
    ({"signal": "prefill_missed_tps"}, "prefill_missed_tps_per_instance"),
    ({"tbt_feedback": {"severe": {"over_objective": 1.05, "capacity_step": 0.2}}}, "severe.over_objective"),
    ({"ttft_feedback": {"severe": {"over_objective": 1.5, "capacity_step": 0.05}}}, "severe.capacity_step"),
    ({"scale_in_cooldown_s": -1}, "scale_in_cooldown_s"),
    ({"scale_out_cooldown_s": -1}, "scale_out_cooldown_s"),
    ({"min_decode": 1}, "min_decode"),  # bounds belong to the deployment's role pools, not here
    ({"scale_out_step_fraction": 0}, "scale_out_step_fraction"),
    ({"signal": "gpu_util"}, "signal"),
    ({"target_util": 0.7}, "target_util"),
])
def test_config_errors_name_the_field(overrides: dict[str, object], named: str) -> None:
    fields: dict[str, object] = {"decode_tps_per_instance": 100.0, "pd_ratio": "1:3", **overrides}
    with pytest.raises(ValidationError) as err:
        HeteroScaleConfig.model_validate(fields)
    assert named in str(err.value)


def test_the_defaults_are_papers_section_5() -> None:
    cfg = HeteroScaleConfig(decode_tps_per_instance=100.0, pd_ratio=0.5)
    assert (cfg.scale_out_above, cfg.scale_in_below) == (0.10, 0.10)
    assert (cfg.scale_out_cooldown_s, cfg.scale_in_cooldown_s) == (180.0, 600.0)
    assert (cfg.tbt_feedback.moderate.over_objective, cfg.tbt_feedback.moderate.capacity_step) == (1.1, 0.10)
    assert (cfg.tbt_feedback.severe.over_objective, cfg.tbt_feedback.severe.capacity_step) == (1.3, 0.20)
    assert cfg.period_s == 30.0


# --- the seam to the planner's pools -----------------------------------------------------------------------


def test_a_decision_becomes_counts_per_prefill_and_decode_pool() -> None:
    ctl = controller()
    prefill_pool = PoolObservation(PoolKey("m", "eu", Role.PREFILL), ready=1, loading=1, ttft_p99_s=0.5)
    # The signal is the engines' measured decode TPS, not the routers' demand (output_tokens_per_s).
    decode_pool = PoolObservation(PoolKey("m", "eu", Role.DECODE), ready=6, decode_tps=4000.0,
                                  output_tokens_per_s=1.0, tbt_p99_s=0.05)
    observation = observe_service(prefill_pool, decode_pool, OBJECTIVE)
    assert (observation.prefill_total, observation.loading, observation.tbt_p99_s) == (2, 1, 0.05)
    decision = ctl.decide(observation, ctl.initial_state(), 0.0)
    assert desired_pools("m", "eu", decision) == {PoolKey("m", "eu", Role.PREFILL): 10,
                                                  PoolKey("m", "eu", Role.DECODE): 30}
    assert set(pool_reasons("m", "eu", decision).values()) == {decision.reason}
    with pytest.raises(ValueError, match="decode: pool m/eu/prefill is not a decode pool"):
        observe_service(prefill_pool, prefill_pool, OBJECTIVE)


def test_a_bad_observation_is_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="decode_ready"):
        ServiceObservation(decode_tps=1.0, prefill_missed_tps=0.0, prefill_ready=1, prefill_total=1,
                           decode_ready=4, decode_total=3, objective=OBJECTIVE)
