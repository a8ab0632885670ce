"""Registry of forecasters, chosen by name in config."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from opscale.forecast.base import Forecaster
from opscale.forecast.online import Ewma, SeasonalNaive


class ForecasterName(StrEnum):
    EWMA = "ewma"
    SEASONAL_NAIVE = "seasonal_naive"


_FACTORIES: dict[ForecasterName, Callable[..., Forecaster]] = {
    ForecasterName.EWMA: Ewma,
    ForecasterName.SEASONAL_NAIVE: SeasonalNaive,
}


def make_forecaster(name: str, **params: float) -> Forecaster:
    try:
        key = ForecasterName(name)
    except ValueError:
        known = ", ".join(n.value for n in ForecasterName)
        raise ValueError(f"unknown forecaster {name!r}; known forecasters: {known}") from None
    return _FACTORIES[key](**params)
