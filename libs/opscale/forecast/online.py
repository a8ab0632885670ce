"""Online forecasters that need no fitting library: EWMA and seasonal-naive.

Both keep bounded state and report an interval at `z` standard deviations of their own one-step
errors, so the planner can plan on an upper quantile.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from opscale.forecast.base import Forecast


@dataclass(slots=True)
class Ewma:
    """Exponentially weighted level with an exponentially weighted error variance.

    Example: alpha 0.5 after the points 10, 20 has level 15; a forecast of any horizon is 15, its interval
    widens with sqrt(steps) (a random-walk view of the level's drift).
    """

    alpha: float = 0.3
    z: float = 1.645  # 90% central interval
    name: str = "ewma"
    _level: float | None = None
    _err_var: float = 0.0
    _count: int = 0

    def observe(self, value: float) -> None:
        if not math.isfinite(value):
            return
        self._count += 1
        if self._level is None:
            self._level = value
            return
        err = value - self._level
        self._err_var = (1 - self.alpha) * (self._err_var + self.alpha * err * err)
        self._level += self.alpha * err

    def forecast(self, steps_ahead: int) -> Forecast | None:
        if self._level is None:
            return None
        spread = self.z * math.sqrt(self._err_var * max(1, steps_ahead))
        return Forecast(self._level, max(0.0, self._level - spread), self._level + spread)


@dataclass(slots=True)
class SeasonalNaive:
    """Tomorrow looks like today: the value one season ago, falling back to the last value until a
    whole season has been seen. The interval comes from the spread of past seasonal errors."""

    season_steps: int = 1440  # one day of 1-minute points
    z: float = 1.645
    name: str = "seasonal_naive"
    _history: deque[float] = field(default_factory=deque)
    _errors: deque[float] = field(default_factory=lambda: deque(maxlen=1440))

    def observe(self, value: float) -> None:
        if not math.isfinite(value):
            return
        if len(self._history) >= self.season_steps:
            self._errors.append(value - self._history[-self.season_steps])
        self._history.append(value)
        while len(self._history) > self.season_steps:
            self._history.popleft()

    def forecast(self, steps_ahead: int) -> Forecast | None:
        if not self._history:
            return None
        if len(self._history) >= self.season_steps:
            idx = (steps_ahead - 1) % self.season_steps
            mean = self._history[idx]
        else:
            mean = self._history[-1]
        if len(self._errors) >= 2:
            m = sum(self._errors) / len(self._errors)
            sd = math.sqrt(sum((e - m) ** 2 for e in self._errors) / (len(self._errors) - 1))
        else:
            sd = 0.0
        spread = self.z * sd
        return Forecast(mean, max(0.0, mean - spread), mean + spread)
