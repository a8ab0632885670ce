"""The forecaster contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Forecast:
    """Predicted mean and a central interval for one future step (same unit as the series)."""

    mean: float
    lo: float
    hi: float


class Forecaster(Protocol):
    name: str

    def observe(self, value: float) -> None:
        """Add the next point of an evenly spaced series."""
        ...

    def forecast(self, steps_ahead: int) -> Forecast | None:
        """Predict the point `steps_ahead` after the last one; None until there is enough history."""
        ...
