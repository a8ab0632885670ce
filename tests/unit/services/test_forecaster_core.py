from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opscale.forecast import make_forecaster
from opscale.forecast.online import Ewma, SeasonalNaive
from opscale.services.actions import Publish
from opscale.services.events import ForecastIssued, WindowStats
from opscale.services.forecaster import ForecasterConfig, ForecasterCore

pytestmark = pytest.mark.unit


def _window(end_s: float, rps: float, window_s: float = 60.0) -> WindowStats:
    return WindowStats("m", "eu", "interactive", window_s, end_s, int(rps * window_s), int(rps * window_s), rps,
                       rps * 100, rps * 10, None, None, None, None, None, None, None)


def test_ewma_level_and_interval() -> None:
    f = Ewma(alpha=0.5)
    f.observe(10.0)
    f.observe(20.0)
    fc = f.forecast(1)
    assert fc is not None and fc.mean == pytest.approx(15.0) and fc.lo < 15.0 < fc.hi
    assert f.forecast(4).hi - 15.0 == pytest.approx(2 * (fc.hi - 15.0))


def test_seasonal_naive_repeats_the_last_season() -> None:
    f = SeasonalNaive(season_steps=4)
    for v in [1, 2, 3, 4, 1, 2, 3, 4]:
        f.observe(v)
    assert [f.forecast(k).mean for k in (1, 2, 3, 4, 5)] == [1, 2, 3, 4, 1]
    assert f.forecast(1).hi == f.forecast(1).lo  # a perfectly periodic series has no seasonal error


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=50))
def test_intervals_contain_the_mean_and_are_non_negative(values: list[float]) -> None:
    for name in ("ewma", "seasonal_naive"):
        f = make_forecaster(name)
        for v in values:
            f.observe(v)
        fc = f.forecast(3)
        assert fc is not None and 0 <= fc.lo <= fc.mean + 1e-9 and fc.mean <= fc.hi + 1e-9
        assert all(math.isfinite(x) for x in (fc.lo, fc.mean, fc.hi))


def test_unknown_forecaster_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known forecasters: ewma, seasonal_naive"):
        make_forecaster("prophet")


def test_forecaster_core_samples_minute_windows_and_publishes() -> None:
    core = ForecasterCore(ForecasterConfig(step_s=60, horizon_s=300))
    for k in range(1, 6):
        core.handle(_window(60.0 * k, 2.0), 60.0 * k)
        core.handle(_window(60.0 * k + 10, 50.0), 60.0 * k + 10)  # inside the same step: ignored
        core.handle(_window(60.0 * k, 50.0, window_s=10.0), 60.0 * k)  # wrong window length: ignored
    [pub] = [a for a in core.tick(300.0) if isinstance(a, Publish)]
    assert isinstance(pub.event, ForecastIssued) and pub.event.mean_rps == pytest.approx(2.0)
    assert core.tick(330.0) == []  # not yet the next step


@pytest.mark.parametrize("method", ["ewma", "seasonal_naive", "holt_winters", "sarima"])
def test_forecaster_core_runs_every_registered_method(method: str) -> None:
    core = ForecasterCore(ForecasterConfig(method=method, step_s=60, horizon_s=300))
    for k in range(1, 31):
        core.handle(_window(60.0 * k, 2.0 + (k % 3)), 60.0 * k)
    [pub] = [a for a in core.tick(1800.0) if isinstance(a, Publish)]
    assert isinstance(pub.event, ForecastIssued) and pub.event.method == method
    assert 0 <= pub.event.lo_rps <= pub.event.mean_rps <= pub.event.hi_rps
