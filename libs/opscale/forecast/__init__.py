"""Demand forecasters: models of a rate series that predict the next horizon with an interval, online
(observe / forecast) and in batch (fit / forecast_path), plus backtesting."""

from opscale.forecast.base import DEFAULT_LEVEL, Forecast, Forecaster, PathForecaster
from opscale.forecast.horizon import max_over_horizon, steps_for
from opscale.forecast.registry import ForecasterName, make_forecaster

__all__ = ["DEFAULT_LEVEL", "Forecast", "Forecaster", "ForecasterName", "PathForecaster", "make_forecaster",
           "max_over_horizon", "steps_for"]
