"""KPA-like scaling on hand-built observations: stable and panic windows, panic threshold, no scale-down
while panicking, scale-to-zero with a grace period, and its config errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.model import Observation, PoolKey, PoolObservation
from opscale.planning import DeploymentSpec, make_planning_policy
from opscale.planning.kpa import KpaConfig, KpaPolicy, KpaState

pytestmark = pytest.mark.unit

KEY = PoolKey("m", "eu")
DEP = DeploymentSpec(model="m", sku="H100-80GB", min_replicas=0, max_replicas=64)


def ten_rps(*_: object) -> float:
    return 10.0  # one instance: 10 rps, so 7 rps at the default 0.7 target


def obs(now_s: float, rps: float, ready: int, loading: int = 0, queued: int = 0, running: int = 0) -> Observation:
    pool = PoolObservation(KEY, ready=ready, loading=loading, arrival_rps=rps, prompt_tokens_per_s=rps * 1000,
                           output_tokens_per_s=rps * 100, queued=queued, running=running)
    return Observation(now_s, {KEY: pool})


def run(policy: KpaPolicy, steps: list[tuple[float, float, int]], state: KpaState | None = None
        ) -> tuple[list[tuple[int, str]], KpaState]:
    state = state or policy.initial_state()
    out = []
    for now_s, rps, ready in steps:
        effects = policy.decide(obs(now_s, rps, ready), state, now_s)
        state = effects.state
        out.append((effects.desired[KEY], effects.reasons[KEY]))
    return out, state


def test_stable_mode_sizes_on_the_stable_window_average() -> None:
    policy = KpaPolicy([DEP], ten_rps)
    out, _ = run(policy, [(0.0, 14.0, 2), (10.0, 14.0, 2), (20.0, 14.0, 2)])
    assert [n for n, _ in out] == [2, 2, 2]  # 14 rps / 7 per instance
    assert all(why.startswith("steady") for _, why in out)


def test_burst_panics_scales_to_the_panic_count_and_never_down_while_panicking() -> None:
    policy = KpaPolicy([DEP], ten_rps)
    calm = [(t, 7.0, 1) for t in (0.0, 10.0, 20.0, 30.0, 40.0, 50.0)]
    out, state = run(policy, calm)
    assert out[-1][0] == 1
    # the newest sample is 5x: the panic window (6 s) sees 35 rps -> 5 instances, 5x the one ready;
    # the stable window (60 s) still averages it with the calm samples
    out, state = run(policy, [(60.0, 35.0, 1)], state)
    count, why = out[0]
    assert why.startswith("panic")
    assert count == 5
    # the burst stops at once: the panic count falls, but while panicking nothing is removed
    out, state = run(policy, [(70.0, 7.0, 5), (80.0, 7.0, 5), (110.0, 7.0, 5)], state)
    assert [n for n, _ in out] == [5, 5, 5]
    assert all(why.startswith("panic") for _, why in out)
    # a whole stable window (60 s) after the panic window was last over the threshold, panic ends
    out, state = run(policy, [(120.0, 7.0, 5)], state)
    count, why = out[0]
    assert not why.startswith("panic")
    assert count < 5


def test_below_the_panic_threshold_there_is_no_panic() -> None:
    policy = KpaPolicy([DEP], ten_rps)
    out, _ = run(policy, [(0.0, 7.0, 2), (10.0, 20.0, 2)])  # 20 rps -> 3 instances: 1.5x the 2 ready
    assert not out[1][1].startswith("panic")


def test_scale_down_is_limited_by_the_scale_down_rate() -> None:
    policy = KpaPolicy([DEP], ten_rps)
    out, _ = run(policy, [(0.0, 7.0, 8)])  # wants 1; may go to 8 / 2 = 4 at most
    assert out[0][0] == 4
    assert out[0][1].startswith("scale down")


def test_scale_down_delay_keeps_the_highest_recent_recommendation() -> None:
    policy = KpaPolicy([DEP], ten_rps, KpaConfig(scale_down_delay_s=30.0, stable_window_s=10.0, panic_window_s=5.0))
    out, _ = run(policy, [(0.0, 28.0, 4), (10.0, 7.0, 4), (20.0, 7.0, 4), (45.0, 7.0, 4)])
    assert [n for n, _ in out] == [4, 4, 4, 2]


def test_scale_to_zero_waits_for_the_grace_period() -> None:
    policy = KpaPolicy([DEP], ten_rps, KpaConfig(scale_to_zero=True))
    out, state = run(policy, [(0.0, 3.0, 1)] + [(t, 0.0, 1) for t in (10.0, 50.0, 80.0)])
    assert [n for n, _ in out] == [1, 1, 1, 1]  # idle 80 s < 60 s stable window + 30 s grace
    out, _ = run(policy, [(95.0, 0.0, 1)], state)
    assert out[0][0] == 0
    assert out[0][1].startswith("scale to zero")


def test_without_scale_to_zero_one_instance_stays() -> None:
    policy = KpaPolicy([DEP], ten_rps)
    out, _ = run(policy, [(t, 0.0, 1) for t in (0.0, 100.0, 200.0)])
    assert [n for n, _ in out] == [1, 1, 1]


def test_cold_start_from_zero_with_requests_waiting() -> None:
    policy = KpaPolicy([DEP], ten_rps, KpaConfig(scale_to_zero=True))
    effects = policy.decide(obs(0.0, 0.0, 0, queued=3), policy.initial_state(), 0.0)
    assert effects.desired[KEY] >= 1


def test_concurrency_metric_uses_in_flight_requests() -> None:
    policy = KpaPolicy([DEP], ten_rps, KpaConfig(metric="concurrency", target_concurrency_per_instance=10.0,
                                                 target_util=1.0))
    effects = policy.decide(obs(0.0, 0.0, 3, queued=5, running=25), policy.initial_state(), 0.0)
    assert effects.desired[KEY] == 3  # 30 in flight / 10 per instance


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="target_concurrency_per_instance"):
        make_planning_policy("kpa", [DEP], ten_rps, metric="concurrency")
    with pytest.raises(ValueError, match="panic_window_s"):
        make_planning_policy("kpa", [DEP], ten_rps, panic_window_s=120.0)
    with pytest.raises(ValueError, match="stable_windw_s"):
        make_planning_policy("kpa", [DEP], ten_rps, stable_windw_s=60.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 500), st.integers(0, 40)), min_size=1, max_size=15))
def test_desired_stays_within_bounds_and_state_is_not_mutated(steps: list[tuple[float, int]]) -> None:
    spec = DeploymentSpec(model="m", sku="H100-80GB", min_replicas=1, max_replicas=16)
    policy = KpaPolicy([spec], ten_rps)
    state = policy.initial_state()
    for i, (rps, ready) in enumerate(steps):
        before = state
        snapshot = repr(before)
        effects = policy.decide(obs(10.0 * i, rps, ready), state, 10.0 * i)
        assert repr(before) == snapshot
        assert 1 <= effects.desired[KEY] <= 16
        state = effects.state
