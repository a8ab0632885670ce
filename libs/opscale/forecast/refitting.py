"""Shared machinery for forecasters built on a fitted statsmodels model.

Fitting is the expensive part, so parameters are re-estimated only every `refit_every` observations
(warm-started from the previous parameters); in between, the model is re-filtered with fixed parameters
over the new points, which is cheap. Rates are modelled on log1p of the values when `log_scale` is set:
seasonality in request rates is multiplicative and the spread grows with the level, both of which become
additive and constant on the log scale.

A fitting library can fail in many ways (too little or degenerate data, optimiser warnings, linear
algebra errors). None of that may crash a service: a failed or non-converged fit keeps the previous
parameters when there are any, and otherwise the forecaster answers with its built-in seasonal-naive
until the next refit. Must not: do I/O or read the clock.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from opscale.forecast.base import Forecast, check_level, check_steps
from opscale.forecast.history import SeasonalHistory
from opscale.forecast.online import SeasonalNaive

# The path in the model's (possibly log) scale: mean, lower and upper interval bounds per step ahead.
ScaledPath = tuple[np.ndarray, np.ndarray, np.ndarray]
T = TypeVar("T")


class FitFailed(Exception):
    """The model could not be fitted or used on this history; the message says why."""


class RefittingForecaster(ABC):
    """Online/batch driver around a model that subclasses fit (`_fit`), re-filter (`_refilter`) and
    forecast from (`_predict`), all on the scaled series."""

    name: str

    def __init__(self, season_steps: int, level: float, refit_every: int | None,
                 max_history_steps: int | None, log_scale: bool) -> None:
        check_level(level)
        if season_steps < 1:
            raise ValueError(f"season_steps must be at least 1, got {season_steps!r}")
        self.season_steps = season_steps
        self.level = level
        self.refit_every = refit_every if refit_every is not None else season_steps
        self.max_history_steps = max_history_steps if max_history_steps is not None \
            else max(8 * season_steps, 2 * self.min_history_steps())
        if self.refit_every < 1:
            raise ValueError(f"refit_every must be at least 1, got {self.refit_every!r}")
        if self.max_history_steps < self.min_history_steps():
            raise ValueError(f"max_history_steps {self.max_history_steps} is shorter than the "
                             f"{self.min_history_steps()} points {self.name} needs")
        self.log_scale = log_scale
        self.fits = 0  # how many parameter estimations ran (warm or cold)
        self.failures = 0  # how many of them failed or did not converge
        self.last_failure: str | None = None
        self._history = SeasonalHistory(season_steps)
        self._fallback = SeasonalNaive(season_steps=season_steps, level=level, log_scale=log_scale)
        self._params: np.ndarray | None = None
        self._results: object | None = None
        self._filtered_len = 0  # history length the current results cover
        self._since_fit = 0
        self._attempted = False  # a fit was tried on the current history (success or not)
        self._cached: list[Forecast] | None = None

    # ---- the forecaster protocol -------------------------------------------------------------------

    def observe(self, value: float) -> None:
        self._fallback.observe(value)
        if self._history.append(value) is not None:
            self._since_fit += 1
            self._cached = None

    def forecast(self, steps_ahead: int) -> Forecast | None:
        path = self.forecast_path(steps_ahead)
        return None if path is None else path[-1]

    def forecast_path(self, steps: int) -> list[Forecast] | None:
        check_steps(steps)
        if self._cached is not None and len(self._cached) >= steps:
            return self._cached[:steps]
        if len(self._history) < self.min_history_steps():
            return self._fallback.forecast_path(steps)
        if not self._attempted or self._since_fit >= self.refit_every:
            self._refit()  # a failed fit is not retried before refit_every more points: fits are costly
        elif self._results is not None and self._filtered_len < len(self._history):
            self._update()
        path = self._model_path(steps) if self._results is not None else None
        if path is None:
            return self._fallback.forecast_path(steps)
        self._cached = path
        return path

    def fit(self, history: Sequence[float]) -> None:
        self._history.clear()
        self._fallback.fit(history)
        self._params, self._results, self._filtered_len, self._cached = None, None, 0, None
        self._attempted = False
        for value in history:
            self._history.append(value)
        self._since_fit = len(self._history)
        if len(self._history) >= self.min_history_steps():
            self._refit()

    @property
    def using_fallback(self) -> bool:
        """True while forecasts come from the built-in seasonal-naive rather than the fitted model."""
        return self._results is None

    # ---- what a model provides ----------------------------------------------------------------------

    @abstractmethod
    def min_history_steps(self) -> int:
        """Fewest points the model can be fitted on; below this the seasonal-naive answers."""

    @abstractmethod
    def _fit(self, scaled: np.ndarray, start_params: np.ndarray | None) -> tuple[object, np.ndarray]:
        """Estimate parameters on the whole scaled history; returns (results, params)."""

    @abstractmethod
    def _refilter(self, results: object | None, params: np.ndarray, scaled: np.ndarray,
                  new_points: int) -> object:
        """Results with `params` over `scaled`, whose last `new_points` are new since `results` (None:
        filter the whole series)."""

    @abstractmethod
    def _predict(self, results: object, scaled: np.ndarray, steps: int) -> ScaledPath:
        """Mean and interval bounds (at self.level) for 1..steps ahead, on the scaled series."""

    # ---- internals ----------------------------------------------------------------------------------

    def _refit(self) -> None:
        self._history.keep_last(self.max_history_steps)
        scaled = self._scaled()
        self._since_fit = 0
        self._attempted = True
        self.fits += 1
        try:
            results, params = self._guarded(lambda: self._fit(scaled, self._params))
        except FitFailed as exc:
            self.failures += 1
            self.last_failure = str(exc)
            # keep the last good parameters, now filtered over the trimmed history
            self._results = self._try_refilter_from_scratch(scaled) if self._params is not None else None
        else:
            self._results, self._params = results, params
        self._filtered_len = len(self._history)

    def _update(self) -> None:
        assert self._results is not None and self._params is not None
        params = self._params
        scaled = self._scaled()
        new_points = len(self._history) - self._filtered_len
        try:
            self._results = self._guarded(lambda: self._refilter(self._results, params, scaled, new_points))
        except FitFailed as exc:
            self.last_failure = str(exc)
            self._results = None  # seasonal-naive until the next refit
        self._filtered_len = len(self._history)

    def _try_refilter_from_scratch(self, scaled: np.ndarray) -> object | None:
        params = self._params
        assert params is not None
        try:
            return self._guarded(lambda: self._refilter(None, params, scaled, len(scaled)))
        except FitFailed as exc:
            self.last_failure = str(exc)
            return None

    def _model_path(self, steps: int) -> list[Forecast] | None:
        try:
            mean, lo, hi = self._guarded(lambda: self._predict(self._results, self._scaled(), steps),
                                         convergence_fails=False)
        except FitFailed as exc:
            self.last_failure = str(exc)
            return None
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            self.last_failure = "the model forecast a non-finite value"
            return None
        out = []
        for m, low, high in zip(self._unscale(mean), self._unscale(lo), self._unscale(hi), strict=True):
            out.append(Forecast(m, max(0.0, min(m, low)), max(m, high)))
        return out

    def _guarded(self, work: Callable[[], T], convergence_fails: bool = True) -> T:
        """Run statsmodels work with its warnings captured: a convergence warning counts as a failure
        (its parameters are not trustworthy); any exception becomes FitFailed with its message."""
        from statsmodels.tools.sm_exceptions import ConvergenceWarning

        with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
            warnings.simplefilter("always")
            try:
                result = work()
            except FitFailed:
                raise
            except Exception as exc:  # a library failure must never crash the service
                raise FitFailed(f"{type(exc).__name__}: {exc}") from exc
        if convergence_fails and any(issubclass(w.category, ConvergenceWarning) for w in caught):
            raise FitFailed("the optimiser did not converge")
        return result

    def _scaled(self) -> np.ndarray:
        values = self._history.array()
        return np.log1p(values) if self.log_scale else values

    def _unscale(self, scaled: np.ndarray) -> list[float]:
        if self.log_scale:
            return [math.expm1(min(float(v), 700.0)) for v in scaled]
        return [float(v) for v in scaled]
