"""Forecasters: calibrated intervals, missing points, short histories, refit cadence and fit failures."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.forecast import Forecast, ForecasterName, make_forecaster, max_over_horizon, steps_for
from opscale.forecast.arima import Sarima
from opscale.forecast.ets import HoltWinters
from opscale.forecast.history import SeasonalHistory
from opscale.forecast.online import Ewma, SeasonalNaive
from opscale.forecast.profile import seasonal_profile
from opscale.forecast.refitting import FitFailed
from opscale.forecast.synthetic import diurnal_weekly_rates

pytestmark = pytest.mark.unit

SEASON = 48  # half-hour steps keep the statsmodels fits in these tests small


def _daily(days: int, seed: int = 3) -> list[float]:
    return diurnal_weekly_rates(days, 86400 / SEASON, seed=seed).tolist()


def test_history_imputes_a_missing_point_from_one_season_back() -> None:
    h = SeasonalHistory(3)
    assert h.append(math.nan) is None  # nothing to impute from yet: dropped
    for v in (1.0, 2.0, 3.0):
        h.append(v)
    assert h.append(math.nan) == (1.0, False)
    assert h.append(-5.0) == (2.0, False)  # a negative rate is no observation either
    assert h.array().tolist() == [1.0, 2.0, 3.0, 1.0, 2.0]


def test_seasonal_naive_interval_is_the_empirical_quantile_of_seasonal_errors() -> None:
    rng = np.random.default_rng(0)
    shape = np.array([10.0, 20.0, 30.0, 40.0])
    f = SeasonalNaive(season_steps=4, level=0.8, log_scale=False, error_window_steps=4000)
    values = np.tile(shape, 1001) + rng.uniform(-1, 1, 4004)
    for v in values:
        f.observe(float(v))
    errors = values[4:] - values[:-4]  # the seasonal differences it has seen
    q_lo, q_hi = np.quantile(errors, [0.1, 0.9])
    fc = f.forecast(1)
    assert fc is not None and fc.mean == values[-4]
    assert fc.lo == pytest.approx(fc.mean + q_lo) and fc.hi == pytest.approx(fc.mean + q_hi)
    # two seasons ahead reaches back one more season: the spread grows by sqrt(2)
    far = f.forecast(5)
    assert far is not None and far.hi - far.mean == pytest.approx(math.sqrt(2) * q_hi)


def test_seasonal_naive_keeps_its_phase_across_a_missing_point() -> None:
    f = SeasonalNaive(season_steps=4)
    for v in [1, 2, 3, 4, 1, math.nan, 3, 4]:
        f.observe(v)
    assert [f.forecast(k).mean for k in (1, 2, 3, 4)] == [1, 2, 3, 4]


def test_ewma_interval_calibrates_on_its_own_h_step_errors() -> None:
    rng = np.random.default_rng(1)
    f = Ewma(alpha=0.2, level=0.9, calibration_steps=3, min_errors=50, log_scale=False)
    for v in 100 + rng.normal(0, 5, 3000):
        f.observe(float(v))
    inside = 0
    trials = 2000
    for v in 100 + rng.normal(0, 5, trials):
        fc = f.forecast(3)
        assert fc is not None
        inside += fc.lo <= v <= fc.hi
        f.observe(float(v))
    assert 0.86 <= inside / trials <= 0.94


@pytest.mark.parametrize("cls", [HoltWinters, Sarima])
def test_fitted_models_fall_back_to_seasonal_naive_on_short_history(cls: type) -> None:
    f = cls(season_steps=SEASON)
    naive = SeasonalNaive(season_steps=SEASON)
    for v in _daily(1):
        f.observe(v)
        naive.observe(v)
    assert f.forecast_path(5) == naive.forecast_path(5)
    assert f.fits == 0 and f.using_fallback


@pytest.mark.parametrize("cls", [HoltWinters, Sarima])
def test_fitted_models_refit_on_cadence_and_track_a_daily_cycle(cls: type) -> None:
    values = _daily(8)
    f = cls(season_steps=SEASON, refit_every=SEASON)
    f.fit(values[:6 * SEASON])
    assert f.fits == 1 and not f.using_fallback
    errors = []
    for origin in range(6 * SEASON, 8 * SEASON, 4):
        path = f.forecast_path(4)
        assert path is not None and all(p.lo <= p.mean <= p.hi for p in path)
        errors += [abs(p.mean - a) / a for p, a in zip(path, values[origin:origin + 4], strict=True)]
        for v in values[origin:origin + 4]:
            f.observe(v)
    assert f.fits == 1 + (2 * SEASON) // SEASON - 1  # refits only every SEASON points, never per point
    assert np.mean(errors) < 0.2  # 8% noise, a 60% daily swing: a working model stays well inside this


@pytest.mark.parametrize("cls", [HoltWinters, Sarima])
def test_a_failing_fit_never_crashes_and_keeps_the_last_good_parameters(cls: type,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    values = _daily(5)
    f = cls(season_steps=SEASON, refit_every=SEASON)
    f.fit(values[:4 * SEASON])
    good = f.forecast(1)
    assert good is not None and not f.using_fallback

    def fail(*_: object) -> object:
        warnings.warn("did not converge", category=_convergence_warning(), stacklevel=1)
        return None, np.zeros(1)

    monkeypatch.setattr(f, "_fit", fail)
    for v in values[4 * SEASON:]:
        f.observe(v)
    fc = f.forecast(1)  # the refit "fails": the previous parameters filter the new points
    assert fc is not None and not f.using_fallback
    assert f.failures == 1 and f.last_failure == "the optimiser did not converge"


def test_a_model_that_cannot_fit_at_all_answers_with_seasonal_naive(monkeypatch: pytest.MonkeyPatch) -> None:
    f = Sarima(season_steps=SEASON)

    def broken(*_: object) -> object:
        raise np.linalg.LinAlgError("singular matrix")

    monkeypatch.setattr(f, "_fit", broken)
    values = _daily(3)
    naive = SeasonalNaive(season_steps=SEASON)
    for v in values:
        f.observe(v)
        naive.observe(v)
    assert f.forecast(2) == naive.forecast(2)
    assert f.using_fallback and f.last_failure == "LinAlgError: singular matrix"
    f.forecast(3)
    assert f.fits == 1  # not retried on every call: it waits refit_every points


@pytest.mark.parametrize("name", ["holt_winters", "sarima"])
@pytest.mark.parametrize("series", [[0.0] * (3 * SEASON), [5.0] * (3 * SEASON)], ids=["zeros", "constant"])
def test_degenerate_series_give_finite_forecasts(name: str, series: list[float]) -> None:
    f = make_forecaster(name, season_steps=SEASON)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may leak out of the forecaster
        f.fit(series)
        path = f.forecast_path(6)
    assert path is not None
    for fc in path:
        assert all(math.isfinite(x) for x in (fc.mean, fc.lo, fc.hi)) and 0 <= fc.lo <= fc.mean <= fc.hi
        assert fc.mean == pytest.approx(series[0], abs=1e-3)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([n.value for n in ForecasterName]),
       st.lists(st.one_of(st.floats(min_value=0, max_value=1e5), st.just(math.nan)), min_size=1, max_size=40))
def test_every_forecaster_gives_ordered_non_negative_intervals(name: str, values: list[float]) -> None:
    f = make_forecaster(name, season_steps=4)
    for v in values:
        f.observe(v)
    path = f.forecast_path(6)
    if path is None:  # only possible when every point was missing
        assert all(math.isnan(v) for v in values)
        return
    assert len(path) == 6
    for fc in path:
        assert all(math.isfinite(x) for x in (fc.lo, fc.mean, fc.hi))
        assert 0 <= fc.lo <= fc.mean + 1e-9 and fc.mean <= fc.hi + 1e-9


def test_seasonal_profile_is_the_median_shape() -> None:
    level, profile = seasonal_profile(np.array([1.0, 3.0, 2.0, 4.0, 100.0, 102.0]), 2)
    assert level == 2.0 and profile.tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match="at least one full season of 4 points, got 3"):
        seasonal_profile(np.ones(3), 4)


def test_max_over_horizon_takes_the_largest_upper_bound_in_the_window() -> None:
    f = SeasonalNaive(season_steps=6)
    for v in [1, 5, 2, 9, 3, 4]:
        f.observe(v)
    assert max_over_horizon(f, 2, 3) == Forecast(5, 5, 5)
    assert max_over_horizon(f, 1, 6) == Forecast(9, 9, 9)
    assert steps_for(1200, 300) == 4 and steps_for(3600, 300) == 12 and steps_for(1, 300) == 1
    with pytest.raises(ValueError, match="start_steps=3, end_steps=2"):
        max_over_horizon(f, 3, 2)
    assert max_over_horizon(SeasonalNaive(season_steps=6), 1, 2) is None


def test_registry_names_and_errors() -> None:
    assert {n.value for n in ForecasterName} == {"ewma", "seasonal_naive", "holt_winters", "sarima"}
    with pytest.raises(ValueError, match="known forecasters: ewma, seasonal_naive, holt_winters, sarima"):
        make_forecaster("prophet")
    with pytest.raises(ValueError, match=r"does not take these parameters: \['colour'\]"):
        make_forecaster("sarima", colour="red")
    with pytest.raises(ValueError, match="level must be strictly between 0 and 1"):
        make_forecaster("holt_winters", level=1.5)
    with pytest.raises(ValueError, match="order must be"):
        make_forecaster("sarima", order=(5, 0, 0))
    assert make_forecaster("sarima", season_steps=288).season_steps == 288


def test_fit_failed_is_what_the_guard_raises() -> None:
    f = HoltWinters(season_steps=SEASON)
    with pytest.raises(FitFailed, match="ZeroDivisionError"):
        f._guarded(lambda: 1 / 0)


def _convergence_warning() -> type[Warning]:
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    return ConvergenceWarning
