"""Demand over a look-ahead window, as SageServe plans it: the forecast maximum 20 to 60 minutes ahead.

Must not: fit anything itself; it only reads a forecaster's path.
"""

from __future__ import annotations

import math

from opscale.forecast.base import Forecast, Forecaster, PathForecaster


def steps_for(seconds: float, step_s: float) -> int:
    """Steps ahead that reach `seconds` (rounded up, at least 1): 1200 s at 300 s steps -> 4."""
    if step_s <= 0:
        raise ValueError(f"step_s must be positive, got {step_s!r}")
    return max(1, math.ceil(seconds / step_s - 1e-9))


def max_over_horizon(forecaster: Forecaster, start_steps: int, end_steps: int) -> Forecast | None:
    """Pointwise maxima of mean, lo and hi over the steps start..end ahead (inclusive).

    The planner provisions for `hi`, the largest upper bound in the window. Example: with 5-minute steps,
    SageServe's 20-60 minutes ahead is `max_over_horizon(f, 4, 12)`. None until the forecaster has enough
    history.
    """
    if not 1 <= start_steps <= end_steps:
        raise ValueError(f"need 1 <= start_steps <= end_steps, got start_steps={start_steps}, "
                         f"end_steps={end_steps}")
    if isinstance(forecaster, PathForecaster):
        path = forecaster.forecast_path(end_steps)
        window = None if path is None else path[start_steps - 1:]
    else:
        points = [forecaster.forecast(h) for h in range(start_steps, end_steps + 1)]
        window = None if any(p is None for p in points) else [p for p in points if p is not None]
    if not window:
        return None
    return Forecast(max(f.mean for f in window), max(f.lo for f in window), max(f.hi for f in window))
