"""Rolling-origin backtest of a forecaster on the held-out tail of a series. Pure: no I/O, no clock.

The forecaster is fitted on everything before the held-out part, then walks through it: at each origin
it forecasts the next `step_horizon` points, is scored on them, and observes them before the next
origin. Every held-out point is therefore forecast exactly once, 1..step_horizon steps ahead. Model
parameters are re-estimated every `refit_every` points (cheap re-filtering in between), as in service.

Example: 4,032 five-minute points (14 days), holdout 864 (3 days), step_horizon 12 (an hour): 72 origins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from opscale.forecast.base import DEFAULT_LEVEL
from opscale.forecast.refitting import RefittingForecaster
from opscale.forecast.registry import make_forecaster


@dataclass(frozen=True, slots=True)
class BacktestPath:
    """Held-out actuals and what was forecast for them (NaN where nothing was)."""

    actual: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


@dataclass(frozen=True, slots=True)
class BacktestResult:
    method: str
    points: int  # held-out points scored (actual known and forecast made)
    missing: int  # held-out points with no actual value (gaps in the record)
    unforecast: int  # held-out points the forecaster had too little history to forecast
    mape_pct: float  # mean |error| / actual over points whose actual is above zero, in percent
    smape_pct: float  # mean 2|error| / (|actual| + |forecast|), in percent (0 when both are 0)
    coverage: float  # fraction of scored points inside [lo, hi]
    mean_width: float  # mean hi - lo, in the series' unit
    level: float  # the nominal interval level coverage should match
    fits: int  # parameter estimations run (0 for forecasters without parameters to fit)
    failed_fits: int  # of those, fits that failed or did not converge
    fallback_points: int  # held-out points forecast by the seasonal-naive fall-back
    path: BacktestPath = field(repr=False, compare=False)

    def metrics(self) -> dict[str, float | int | str]:
        """The scalar metrics (NaN where nothing could be scored, e.g. MAPE with no positive actual)."""
        return {k: v for k, v in asdict(self).items() if k != "path"}


REFITTING_NAMES = ("holt_winters", "sarima")


def backtest(series: Sequence[float] | np.ndarray, forecaster_name: str, season: int, holdout: int,
             step_horizon: int, *, refit_every: int | None = None, level: float = DEFAULT_LEVEL,
             **params: object) -> BacktestResult:
    """Score `forecaster_name` on the last `holdout` points of `series` (NaN marks missing points).

    `season` is the season in points (a day), `refit_every` the refit cadence of fitted models (default:
    one season); other keyword arguments go to the forecaster.
    """
    values = np.asarray(series, dtype=float)
    n = len(values)
    if not 1 <= holdout < n:
        raise ValueError(f"holdout must be between 1 and {n - 1} points for a series of {n}, got {holdout}")
    if step_horizon < 1:
        raise ValueError(f"step_horizon must be at least 1, got {step_horizon}")
    if refit_every is not None and forecaster_name in REFITTING_NAMES:
        params["refit_every"] = refit_every
    forecaster = make_forecaster(forecaster_name, season_steps=season, level=level, **params)
    start = n - holdout
    mean, lo, hi = (np.full(holdout, np.nan) for _ in range(3))
    fallback_points = 0
    forecaster.fit(values[:start].tolist())
    for origin in range(start, n, step_horizon):
        steps = min(step_horizon, n - origin)
        path = forecaster.forecast_path(steps)
        if path is not None:
            at = origin - start
            mean[at:at + steps] = [f.mean for f in path]
            lo[at:at + steps] = [f.lo for f in path]
            hi[at:at + steps] = [f.hi for f in path]
            if isinstance(forecaster, RefittingForecaster) and forecaster.using_fallback:
                fallback_points += steps
        for value in values[origin:origin + steps]:
            forecaster.observe(float(value))
    actual = values[start:]
    fits = forecaster.fits if isinstance(forecaster, RefittingForecaster) else 0
    failed = forecaster.failures if isinstance(forecaster, RefittingForecaster) else 0
    return _score(forecaster_name, BacktestPath(actual, mean, lo, hi), level, fits, failed, fallback_points)


def _score(method: str, path: BacktestPath, level: float, fits: int, failed: int,
           fallback_points: int) -> BacktestResult:
    known = np.isfinite(path.actual)
    forecast_made = np.isfinite(path.mean)
    scored = known & forecast_made
    a, f = path.actual[scored], path.mean[scored]
    positive = a > 0
    mape = float(np.mean(np.abs(a[positive] - f[positive]) / a[positive]) * 100) if positive.any() else math.nan
    denom = np.abs(a) + np.abs(f)
    ratio = np.divide(2 * np.abs(a - f), denom, out=np.zeros_like(a), where=denom > 0)
    smape = float(np.mean(ratio) * 100) if len(a) else math.nan
    lo, hi = path.lo[scored], path.hi[scored]
    coverage = float(np.mean((a >= lo) & (a <= hi))) if len(a) else math.nan
    width = float(np.mean(hi - lo)) if len(a) else math.nan
    return BacktestResult(method=method, points=int(scored.sum()), missing=int((~known).sum()),
                          unforecast=int((known & ~forecast_made).sum()), mape_pct=mape, smape_pct=smape,
                          coverage=coverage, mean_width=width, level=level, fits=fits, failed_fits=failed,
                          fallback_points=fallback_points, path=path)
