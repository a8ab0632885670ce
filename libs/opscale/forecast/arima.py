"""Seasonal ARIMA as regression on a daily profile with ARIMA(p, d, q) errors (statsmodels SARIMAX).

A seasonal ARIMA in SARIMAX form with a daily season of 288 or 1440 steps puts that many lags into the
state vector and takes minutes per fit. Here the season is a fixed regressor instead: the median daily
profile of the window (see opscale.forecast.profile) is subtracted from the log1p series, a small ARIMA
with a constant models what is left (the day's level and how deviations from it persist), and forecasts
add the profile back. This keeps fits to about a second (warm-started) and the filter state tiny; between
refits the Kalman filter is only extended over the new points.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from opscale.forecast.base import DEFAULT_LEVEL, z_for_level
from opscale.forecast.profile import seasonal_profile
from opscale.forecast.refitting import RefittingForecaster, ScaledPath


@dataclass(frozen=True, slots=True)
class _ProfiledArima:
    results: object  # statsmodels SARIMAXResults over the deseasonalised, demeaned window
    profile: np.ndarray  # the window's daily profile, in window order
    mean: float  # the window's mean after removing the profile


class Sarima(RefittingForecaster):
    """ARIMA errors around the daily profile; `order` is (p, d, q), kept small for fast fits."""

    name = "sarima"

    def __init__(self, season_steps: int = 1440, level: float = DEFAULT_LEVEL, refit_every: int | None = None,
                 max_history_steps: int | None = None, log_scale: bool = True,
                 order: tuple[int, int, int] = (1, 0, 1)) -> None:
        p, d, q = order
        if min(order) < 0 or p > 3 or d > 1 or q > 3:
            raise ValueError(f"order must be (p, d, q) with p, q in 0..3 and d in 0..1, got {order!r}")
        self.order = (int(p), int(d), int(q))
        self._z = z_for_level(level)
        super().__init__(season_steps, level, refit_every, max_history_steps, log_scale)

    def min_history_steps(self) -> int:
        p, d, q = self.order
        # two seasons for a profile that is not just one day's noise, and enough points per parameter
        return 2 * self.season_steps + max(30, 10 * (p + d + q + 1))

    def _model(self, deseasonalised: np.ndarray) -> object:
        from statsmodels.tsa.statespace.sarimax import SARIMAX

        # no constant: the series is demeaned instead. With an AR root near 1 (a level that persists for
        # hours) a constant is barely identified and the optimiser stalls before converging.
        return SARIMAX(deseasonalised, order=self.order, trend="n")

    def _deseasonalise(self, scaled: np.ndarray, profile: np.ndarray, start: int = 0) -> np.ndarray:
        return scaled[start:] - profile[np.arange(start, len(scaled)) % self.season_steps]

    def _fit(self, scaled: np.ndarray, start_params: np.ndarray | None) -> tuple[object, np.ndarray]:
        _, profile = seasonal_profile(scaled, self.season_steps)
        adjusted = self._deseasonalise(scaled, profile)
        from statsmodels.tools.sm_exceptions import ConvergenceWarning  # statsmodels loads when a model fits

        mean = float(adjusted.mean())
        model = self._model(adjusted - mean)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # judged below, on the last optimiser's result
            results = model.fit(  # type: ignore[attr-defined]
                start_params=start_params, disp=False, cov_type="none")  # no Hessian: only forecasts are used
        if not results.mle_retvals.get("converged", True):
            # SciPy's L-BFGS-B (C since 1.15) can stop on a failed line search at the optimum itself; BFGS from
            # where it stopped confirms it in a few steps, or warns, and the fit fails as it would have
            results = model.fit(  # type: ignore[attr-defined]
                start_params=results.params, method="bfgs", disp=False, cov_type="none")
        return _ProfiledArima(results, profile, mean), np.asarray(results.params, dtype=float)

    def _refilter(self, results: object | None, params: np.ndarray, scaled: np.ndarray,
                  new_points: int) -> object:
        if results is None:
            _, profile = seasonal_profile(scaled, self.season_steps)
            adjusted = self._deseasonalise(scaled, profile)
            mean = float(adjusted.mean())
            filtered = self._model(adjusted - mean).filter(params)  # type: ignore[attr-defined]
            return _ProfiledArima(filtered, profile, mean)
        assert isinstance(results, _ProfiledArima)
        new = self._deseasonalise(scaled, results.profile, start=len(scaled) - new_points) - results.mean
        extended = results.results.extend(new)  # type: ignore[attr-defined]
        return _ProfiledArima(extended, results.profile, results.mean)

    def _predict(self, results: object, scaled: np.ndarray, steps: int) -> ScaledPath:
        assert isinstance(results, _ProfiledArima)
        forecast = results.results.get_forecast(steps)  # type: ignore[attr-defined]
        seasonal = results.profile[np.arange(len(scaled), len(scaled) + steps) % self.season_steps]
        mean = np.asarray(forecast.predicted_mean, dtype=float) + results.mean + seasonal
        spread = self._z * np.sqrt(np.maximum(np.asarray(forecast.var_pred_mean, dtype=float), 0.0))
        return mean, mean - spread, mean + spread
