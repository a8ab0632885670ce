"""Registry of forecasters, chosen by name in config. statsmodels is imported only when a model fits."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from opscale.forecast.arima import Sarima
from opscale.forecast.base import DEFAULT_LEVEL, PathForecaster
from opscale.forecast.ets import HoltWinters
from opscale.forecast.online import Ewma, SeasonalNaive


class ForecasterName(StrEnum):
    EWMA = "ewma"
    SEASONAL_NAIVE = "seasonal_naive"
    HOLT_WINTERS = "holt_winters"
    SARIMA = "sarima"


def _ewma(season_steps: int | None, level: float, **params: object) -> PathForecaster:
    return Ewma(level=level, **params)  # type: ignore[arg-type]  # a level has no season


def _seasonal(cls: Callable[..., PathForecaster]) -> Callable[..., PathForecaster]:
    def make(season_steps: int | None, level: float, **params: object) -> PathForecaster:
        if season_steps is not None:
            params["season_steps"] = season_steps
        return cls(level=level, **params)

    return make


_FACTORIES: dict[ForecasterName, Callable[..., PathForecaster]] = {
    ForecasterName.EWMA: _ewma,
    ForecasterName.SEASONAL_NAIVE: _seasonal(SeasonalNaive),
    ForecasterName.HOLT_WINTERS: _seasonal(HoltWinters),
    ForecasterName.SARIMA: _seasonal(Sarima),
}


def make_forecaster(name: str, *, season_steps: int | None = None, level: float = DEFAULT_LEVEL,
                    **params: object) -> PathForecaster:
    """A fresh forecaster. `season_steps` is the season in points (a day: 86400 / step_s); None keeps
    each forecaster's default (a day of 1-minute points). Other keyword arguments go to the forecaster."""
    try:
        key = ForecasterName(name)
    except ValueError:
        known = ", ".join(n.value for n in ForecasterName)
        raise ValueError(f"unknown forecaster {name!r}; known forecasters: {known}") from None
    try:
        return _FACTORIES[key](season_steps, level, **params)
    except TypeError as exc:  # an unknown keyword: name it rather than show a traceback
        raise ValueError(f"forecaster {name!r} does not take these parameters: {sorted(params)} ({exc})") from None
