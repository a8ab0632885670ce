"""Demand forecasters: online models of a rate series that predict the next horizon with an interval."""

from opscale.forecast.base import Forecast, Forecaster
from opscale.forecast.registry import ForecasterName, make_forecaster

__all__ = ["Forecast", "Forecaster", "ForecasterName", "make_forecaster"]
