"""Online forecasters that need no fitting library: EWMA and seasonal-naive.

Both keep bounded state and take their intervals from the empirical quantiles of their own past errors
(EWMA: h-step errors of its level; seasonal-naive: seasonal differences), so the intervals are calibrated
whatever the shape of the error distribution. Must not: import statsmodels (these are the cheap fall-backs).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from opscale.forecast.base import DEFAULT_LEVEL, Forecast, check_level, check_steps, z_for_level
from opscale.forecast.history import SeasonalHistory


@dataclass(slots=True)
class Ewma:
    """Exponentially weighted level; every horizon forecasts the current level.

    Example: alpha 0.5 after the points 10, 20 has level 15; a forecast of any horizon is 15.

    The interval for h steps ahead is calibrated on the level's own past h-step errors (value minus the
    level h points before it, on log1p values with `log_scale`): their empirical quantiles once
    `min_errors` are known for that horizon (up to `calibration_steps`; further horizons widen the last
    one by sqrt(h / calibration_steps)). Before that, an exponentially weighted error variance gives a
    Gaussian interval widening with sqrt(h), a random-walk view of the level's drift.
    """

    alpha: float = 0.3
    level: float = DEFAULT_LEVEL
    calibration_steps: int = 12
    error_window_steps: int = 2016
    min_errors: int = 30
    log_scale: bool = True
    name: str = "ewma"
    _level: float | None = None
    _err_var: float = 0.0
    _z: float = 0.0
    _past_levels: deque[float] = field(init=False)
    _errors: list[deque[float]] = field(init=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha!r}")
        if self.calibration_steps < 1 or self.min_errors < 2 or self.error_window_steps < self.min_errors:
            raise ValueError("need calibration_steps >= 1 and error_window_steps >= min_errors >= 2, got "
                             f"{self.calibration_steps}, {self.error_window_steps}, {self.min_errors}")
        self._z = z_for_level(self.level)
        self._past_levels = deque(maxlen=self.calibration_steps)
        self._errors = [deque(maxlen=self.error_window_steps) for _ in range(self.calibration_steps)]

    def observe(self, value: float) -> None:
        if not math.isfinite(value) or value < 0:
            return  # a level has no position to keep: a missing point is just skipped
        for back, past in enumerate(reversed(self._past_levels)):
            self._errors[back].append(self._to_scale(value) - self._to_scale(past))
        if self._level is None:
            self._level = value
        else:
            err = value - self._level
            self._err_var = (1 - self.alpha) * (self._err_var + self.alpha * err * err)
            self._level += self.alpha * err
        self._past_levels.append(self._level)

    def forecast(self, steps_ahead: int) -> Forecast | None:
        if self._level is None:
            return None
        mean = self._level
        tracked = min(check_steps(steps_ahead), self.calibration_steps)
        errors = self._errors[tracked - 1]
        if len(errors) < self.min_errors:
            spread = self._z * math.sqrt(self._err_var * steps_ahead)
            return Forecast(mean, max(0.0, mean - spread), mean + spread)
        tail = (1.0 - self.level) / 2.0
        q_lo, q_hi = np.quantile(np.fromiter(errors, dtype=float), [tail, 1.0 - tail])
        widen = math.sqrt(steps_ahead / tracked)
        lo = self._from_scale(self._to_scale(mean) + float(q_lo) * widen)
        hi = self._from_scale(self._to_scale(mean) + float(q_hi) * widen)
        return Forecast(mean, max(0.0, min(mean, lo)), max(mean, hi))

    def forecast_path(self, steps: int) -> list[Forecast] | None:
        path = [self.forecast(h) for h in range(1, check_steps(steps) + 1)]
        return None if path[0] is None else [fc for fc in path if fc is not None]

    def fit(self, history: Sequence[float]) -> None:
        self._level, self._err_var = None, 0.0
        self._past_levels.clear()
        for errors in self._errors:
            errors.clear()
        for value in history:
            self.observe(value)

    def _to_scale(self, value: float) -> float:
        return math.log1p(value) if self.log_scale else value

    def _from_scale(self, value: float) -> float:
        return math.expm1(min(value, 700.0)) if self.log_scale else value


@dataclass(slots=True)
class SeasonalNaive:
    """Tomorrow looks like today: the value one season ago, falling back to the last value until a
    whole season has been seen.

    The interval is the point forecast plus the empirical (1-level)/2 and (1+level)/2 quantiles of the
    last `error_window_steps` seasonal errors (value minus the value a season earlier), widened by
    sqrt(k) when the horizon reaches k seasons back. With `log_scale` the errors are taken on log1p of
    the values, so the interval is proportional to the level (rates vary tenfold over a day). The
    interval always contains the point forecast, so a biased error history cannot exclude it.
    """

    season_steps: int = 1440  # one day of 1-minute points
    level: float = DEFAULT_LEVEL
    error_window_steps: int | None = None  # None: seven seasons
    log_scale: bool = True
    name: str = "seasonal_naive"
    _history: SeasonalHistory = field(init=False)
    _errors: deque[float] = field(init=False)

    def __post_init__(self) -> None:
        check_level(self.level)
        self._history = SeasonalHistory(self.season_steps)
        window = self.error_window_steps if self.error_window_steps is not None else 7 * self.season_steps
        if window < 2:
            raise ValueError(f"error_window_steps must be at least 2, got {window!r}")
        self._errors = deque(maxlen=window)

    def observe(self, value: float) -> None:
        season_ago = self._history[-self.season_steps] if len(self._history) >= self.season_steps else None
        stored = self._history.append(value)
        if stored is None:
            return
        stored_value, observed = stored
        if observed and season_ago is not None:  # an imputed point would report a fake zero error
            self._errors.append(self._to_scale(stored_value) - self._to_scale(season_ago))
        self._history.keep_last(self.season_steps)

    def forecast(self, steps_ahead: int) -> Forecast | None:
        path = self.forecast_path(steps_ahead)
        return None if path is None else path[-1]

    def forecast_path(self, steps: int) -> list[Forecast] | None:
        check_steps(steps)
        n = len(self._history)
        if n == 0:
            return None
        q_lo, q_hi = self._error_quantiles()
        path: list[Forecast] = []
        for h in range(1, steps + 1):
            if n >= self.season_steps:
                mean = self._history[n - self.season_steps + (h - 1) % self.season_steps]
                seasons_back = (h - 1) // self.season_steps + 1
            else:
                mean, seasons_back = self._history[-1], 1
            widen = math.sqrt(seasons_back)
            centre = self._to_scale(mean)
            # a zero quantile is the point itself, exactly (log1p and back would add rounding)
            lo = self._from_scale(centre + q_lo * widen) if q_lo else mean
            hi = self._from_scale(centre + q_hi * widen) if q_hi else mean
            path.append(Forecast(mean, max(0.0, min(mean, lo)), max(mean, hi)))
        return path

    def fit(self, history: Sequence[float]) -> None:
        self._history.clear()
        self._errors.clear()
        for value in history:
            self.observe(value)

    def _error_quantiles(self) -> tuple[float, float]:
        if len(self._errors) < 2:
            return 0.0, 0.0
        tail = (1.0 - self.level) / 2.0
        q_lo, q_hi = np.quantile(np.fromiter(self._errors, dtype=float), [tail, 1.0 - tail])
        return float(q_lo), float(q_hi)

    def _to_scale(self, value: float) -> float:
        return math.log1p(value) if self.log_scale else value

    def _from_scale(self, value: float) -> float:
        # exp of a huge log error would overflow; such an interval is unbounded anyway
        return math.expm1(min(value, 700.0)) if self.log_scale else value
