"""The forecaster contract: what every forecaster offers online (observe, forecast) and in batch (fit)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Protocol, runtime_checkable

DEFAULT_LEVEL = 0.9  # central interval the planner plans on (its `hi` is the 95th percentile)


@dataclass(frozen=True, slots=True)
class Forecast:
    """Predicted mean and a central interval for one future step (same unit as the series)."""

    mean: float
    lo: float
    hi: float


class Forecaster(Protocol):
    name: str

    def observe(self, value: float) -> None:
        """Add the next point of an evenly spaced series (NaN marks a missing point)."""
        ...

    def forecast(self, steps_ahead: int) -> Forecast | None:
        """Predict the point `steps_ahead` after the last one; None until there is enough history."""
        ...


@runtime_checkable
class PathForecaster(Forecaster, Protocol):
    """A forecaster that also predicts a whole path at once and can be fitted on a batch of history."""

    def forecast_path(self, steps: int) -> list[Forecast] | None:
        """Forecasts for 1..steps ahead of the last point; None until there is enough history."""
        ...

    def fit(self, history: Sequence[float]) -> None:
        """Forget everything and learn from `history` (oldest first) as if each point were observed."""
        ...


def check_level(level: float) -> float:
    """Validate a central-interval level such as 0.9; the error names the field and the value."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be strictly between 0 and 1 (e.g. 0.9), got {level!r}")
    return level


def z_for_level(level: float) -> float:
    """Standard-normal quantile for a central interval: 0.9 -> 1.645."""
    return NormalDist().inv_cdf(0.5 + check_level(level) / 2.0)


def check_steps(steps: int) -> int:
    if steps < 1:
        raise ValueError(f"steps_ahead must be at least 1, got {steps!r}")
    return steps
