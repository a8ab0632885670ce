"""Holt-Winters as an ETS(A, N/Ad, A) state-space model (statsmodels ETSModel) on the log1p scale.

Additive errors give analytic prediction intervals. The initial seasonal states are not optimised: with
a daily season of 288 or 1440 steps that would make every fit take minutes. Nor do they come from
statsmodels' heuristic, which reads them off the first two seasons only; on request rates the fit then
drives the seasonal smoothing to zero and keeps that two-day-old shape for good. Instead the initial
season is the median daily profile over every full season in the window (each season minus its own mean),
which is robust to the odd burst or gap. Only the smoothing parameters are estimated, warm-started.
"""

from __future__ import annotations

import numpy as np

from opscale.forecast.base import DEFAULT_LEVEL
from opscale.forecast.profile import seasonal_profile
from opscale.forecast.refitting import RefittingForecaster, ScaledPath


class HoltWinters(RefittingForecaster):
    """Level (optionally a damped trend) plus an additive season, refitted every `refit_every` points."""

    name = "holt_winters"

    def __init__(self, season_steps: int = 1440, level: float = DEFAULT_LEVEL, refit_every: int | None = None,
                 max_history_steps: int | None = None, log_scale: bool = True, trend: bool = False) -> None:
        self.trend = trend
        super().__init__(season_steps, level, refit_every, max_history_steps, log_scale)

    def min_history_steps(self) -> int:
        # the heuristic initialisation needs two full seasons (and ten points without a season)
        return 2 * self.season_steps + 10 if self.season_steps > 1 else 10

    def _model(self, scaled: np.ndarray) -> object:
        import pandas as pd
        from statsmodels.tsa.exponential_smoothing.ets import ETSModel

        if self.season_steps == 1:
            return ETSModel(pd.Series(scaled), error="add", trend="add" if self.trend else None,
                            damped_trend=self.trend, initialization_method="heuristic")
        level, profile = seasonal_profile(scaled, self.season_steps)
        # a pandas series: ETSModel's prediction intervals need an index on the data
        return ETSModel(pd.Series(scaled), error="add", trend="add" if self.trend else None,
                        damped_trend=self.trend, seasonal="add", seasonal_periods=self.season_steps,
                        initialization_method="known", initial_level=level,
                        initial_trend=0.0 if self.trend else None, initial_seasonal=profile)

    def _fit(self, scaled: np.ndarray, start_params: np.ndarray | None) -> tuple[object, np.ndarray]:
        results = self._model(scaled).fit(start_params=start_params, disp=False)  # type: ignore[attr-defined]
        return results, np.asarray(results.params, dtype=float)

    def _refilter(self, results: object | None, params: np.ndarray, scaled: np.ndarray,
                  new_points: int) -> object:
        # ETSModel has no incremental filter; its smoother is compiled and linear in the history length
        return self._model(scaled).smooth(params)  # type: ignore[attr-defined]

    def _predict(self, results: object, scaled: np.ndarray, steps: int) -> ScaledPath:
        n = len(scaled)
        frame = results.get_prediction(start=n, end=n + steps - 1).summary_frame(  # type: ignore[attr-defined]
            alpha=1.0 - self.level)
        return (frame["mean"].to_numpy(dtype=float), frame["pi_lower"].to_numpy(dtype=float),
                frame["pi_upper"].to_numpy(dtype=float))

