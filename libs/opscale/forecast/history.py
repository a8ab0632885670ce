"""An evenly spaced history that stays evenly spaced when points are missing.

Forecasters index the past by position (one season ago is `season_steps` back), so a missing point cannot
simply be skipped. A missing point (NaN, infinity or a negative rate) is imputed with the value one season
earlier, or the last value while less than a season is known; leading missing points, with nothing to
impute from, are dropped. Must not: fit models or know about any forecaster.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class SeasonalHistory:
    """Example: season 3, points 1, 2, 3, NaN -> stored 1, 2, 3, 1 (the NaN takes the value a season back)."""

    season_steps: int
    _values: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.season_steps < 1:
            raise ValueError(f"season_steps must be at least 1, got {self.season_steps!r}")

    def append(self, value: float) -> tuple[float, bool] | None:
        """Store the point; returns (stored value, was it observed) or None when it was dropped."""
        observed = math.isfinite(value) and value >= 0.0
        if not observed:
            if not self._values:
                return None
            value = self._values[-self.season_steps] if len(self._values) >= self.season_steps \
                else self._values[-1]
        self._values.append(float(value))
        return float(value), observed

    def keep_last(self, count: int) -> None:
        """Drop the oldest points so at most `count` remain (bounds memory between model fits)."""
        while len(self._values) > count:
            self._values.popleft()

    def clear(self) -> None:
        self._values.clear()

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index: int) -> float:
        return self._values[index]

    def array(self) -> np.ndarray:
        return np.fromiter(self._values, dtype=float, count=len(self._values))
