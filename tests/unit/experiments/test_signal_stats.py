"""The metric study's maths on synthetic series whose answer is known: a proportional signal with noise,
one that saturates, a delayed copy, a first-order step response."""

from __future__ import annotations

import math

import numpy as np
import pytest

from opscale.experiments import signal_stats as st

pytestmark = pytest.mark.unit


def _ramp(n: int = 200) -> np.ndarray:
    return np.linspace(2.0, 10.0, n)


def test_noise_std_recovers_white_noise_on_a_trend() -> None:
    rng = np.random.default_rng(1)
    y = 50 * _ramp() + rng.normal(0, 3.0, 200)  # the trend moves 2 per window, the noise is 3
    assert st.noise_std(y) == pytest.approx(3.0, rel=0.2)
    assert st.noise_std([1.0, 2.0]) == 0.0


def test_a_proportional_signal_is_linear_proportional_and_well_above_its_noise() -> None:
    rng = np.random.default_rng(2)
    load = _ramp()
    y = 100 * load * (1 + rng.normal(0, 0.03, len(load)))
    fit = st.linear_fit(load, y)
    assert fit.r2 > 0.95 and fit.slope == pytest.approx(100, rel=0.05)
    assert st.elasticity(load, y) == pytest.approx(1.0, abs=0.05)
    assert st.snr(load, y) > 20


def test_a_saturated_signal_fails_linearity_and_proportionality() -> None:
    load = _ramp()
    busy = 1 - np.exp(-3 * load)  # time busy of an M/G/inf server: 1 - P(empty), ~1 from light load on
    assert st.linear_fit(load, busy).r2 < 0.5
    assert abs(st.elasticity(load, busy) or 0) < 0.05
    levels = st.load_levels(load, busy)
    assert levels is not None and levels[0] / levels[1] > 0.99


def test_snr_is_zero_for_a_signal_pinned_at_one_value_and_grows_with_the_swing() -> None:
    load = _ramp()
    assert st.snr(load, np.ones_like(load)) == 0.0
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 1.0, len(load))
    assert st.snr(load, 10 * load + noise) > st.snr(load, 1 * load + noise) > 0


def test_linear_fit_refuses_what_it_cannot_fit() -> None:
    with pytest.raises(ValueError, match="constant"):
        st.linear_fit([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="equal-length"):
        st.linear_fit([1.0, 2.0], [1.0])
    assert st.linear_fit([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]).r2 == 0.0


def test_xcorr_lag_finds_the_delay_of_a_delayed_copy() -> None:
    rng = np.random.default_rng(4)
    load = np.cumsum(rng.normal(0, 1, 300))
    for delay in (0, 1, 3):
        y = np.concatenate([np.full(delay, load[0]), load[: len(load) - delay]])
        assert st.xcorr_lag(load, y, 6) == delay
    assert st.xcorr_lag(np.ones(50), np.ones(50), 4) is None


def test_step_response_measures_a_first_order_lag() -> None:
    t = np.arange(1, 301, dtype=float)  # 1 s windows stamped at their end
    tau = 20.0
    y = np.where(t <= 100, 1.0, 1.0 + 4.0 * (1 - np.exp(-(t - 100) / tau)))
    # 63% of the change is reached at one time constant
    assert st.step_response(t, y, 100.0, settle_s=150.0) == pytest.approx(tau, rel=0.05)
    down = 6.0 - y
    assert st.step_response(t, down, 100.0, settle_s=150.0) == pytest.approx(tau, rel=0.05)
    assert st.step_response(t, np.ones_like(t), 100.0, settle_s=150.0) is None  # no change, no response
    pinned = np.where(t < 200, 1.0, 0.99)  # noiseless, and a 1% dip is no response to follow
    assert st.step_response(t, pinned, 100.0, settle_s=150.0) is None
    assert math.isfinite(st.step_response(t, y, 100.0, settle_s=150.0, fraction=0.5) or math.nan)
