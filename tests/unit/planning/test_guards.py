from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opscale.planning import guards

pytestmark = pytest.mark.unit


@given(st.floats(allow_nan=True, allow_infinity=True), st.integers(0, 100))
def test_sanitize_never_returns_a_bad_count(target: float, current: int) -> None:
    out = guards.sanitize(target, current)
    assert out >= 0
    if not math.isfinite(target) or target < 0:
        assert out == current


def test_cold_start_scales_from_zero_only_when_work_waits() -> None:
    assert guards.cold_start(0, expected=0, waiting=3) == 1
    assert guards.cold_start(0, expected=0, waiting=0) == 0
    assert guards.cold_start(0, expected=2, waiting=3) == 0


def test_stabilised_down_takes_the_recent_maximum() -> None:
    recs = [(0.0, 5), (100.0, 2), (250.0, 3)]
    assert guards.stabilised_down(recs, now_s=300.0, window_s=300.0, fallback=1) == 5
    assert guards.stabilised_down(recs, now_s=360.0, window_s=300.0, fallback=1) == 3


@given(st.floats(0, 1000), st.floats(0.1, 100), st.integers(0, 50), st.floats(0.1, 1.0))
def test_survivors_absorb_is_monotone_in_survivors(demand: float, cap: float, n: int, util: float) -> None:
    if guards.survivors_absorb(demand, cap, n, util):
        assert guards.survivors_absorb(demand, cap, n + 1, util)


def test_two_to_one_is_refused_when_one_cannot_carry_both() -> None:
    # each instance at 0.6 utilisation of a 0.7 target: one survivor would run at 1.2
    assert not guards.survivors_absorb(demand_rps=1.2, capacity_rps=1.0, survivors=1, max_util=0.7)


def test_limit_step_down_and_clamp() -> None:
    assert guards.limit_step_down(1, current=10, max_step=2) == 8
    assert guards.clamp(0, 1, 5) == 1 and guards.clamp(9, 1, 5) == 5
