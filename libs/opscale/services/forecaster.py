"""The forecaster's state machine: one-minute windows in, forecasts per (model, region, tier) out.

It samples the aggregator's 60 s windows once per `step_s` into an evenly spaced arrival-rate series
per key, feeds a forecaster from the registry, and every `step_s` publishes the forecast
`horizon_s` ahead with its interval.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from opscale.forecast import Forecaster, make_forecaster
from opscale.services import subjects
from opscale.services.actions import Action, Publish, Store
from opscale.services.events import Event, ForecastIssued, WindowStats


class ForecasterConfig(BaseModel):
    method: str = Field("ewma", description="Forecaster name (see opscale.forecast.registry)")
    step_s: float = Field(60.0, gt=0, description="Spacing of the series and cadence of forecasts")
    horizon_s: float = Field(300.0, gt=0, description="How far ahead to forecast")
    source_window_s: float = Field(60.0, gt=0, description="Which aggregator window feeds the series")


class ForecasterCore:
    """`handle(event, now_s)` / `tick(now_s)` -> actions. See the module docstring."""

    name = "forecaster"

    def __init__(self, config: ForecasterConfig | None = None) -> None:
        self.config = config or ForecasterConfig()
        make_forecaster(self.config.method)  # fail fast on an unknown name
        self._models: dict[tuple[str, str, str], Forecaster] = {}
        self._last_sample_s: dict[tuple[str, str, str], float] = {}
        self._next_tick_s: float | None = None

    def handle(self, event: Event, now_s: float) -> list[Action]:
        if isinstance(event, WindowStats) and math.isclose(event.window_s, self.config.source_window_s):
            key = (event.model, event.region, event.tier)
            last = self._last_sample_s.get(key)
            if last is None or event.end_s - last >= self.config.step_s - 1e-9:
                self._last_sample_s[key] = event.end_s
                model = self._models.get(key)
                if model is None:
                    model = self._models[key] = make_forecaster(self.config.method)
                model.observe(event.arrival_rps)
        return []

    def tick(self, now_s: float) -> list[Action]:
        if self._next_tick_s is not None and now_s < self._next_tick_s:
            return []
        self._next_tick_s = now_s + self.config.step_s
        steps = max(1, round(self.config.horizon_s / self.config.step_s))
        actions: list[Action] = []
        for (model, region, tier), forecaster in sorted(self._models.items()):
            fc = forecaster.forecast(steps)
            if fc is None:
                continue
            issued = ForecastIssued(model, region, tier, now_s, self.config.horizon_s, fc.mean, fc.lo, fc.hi,
                                    forecaster.name)
            actions.append(Publish(subjects.forecasts(region, model), issued))
            actions.append(Store(f"forecast:{model}:{region}:{tier}",
                                 {"at_s": now_s, "horizon_s": self.config.horizon_s, "mean_rps": fc.mean,
                                  "lo_rps": fc.lo, "hi_rps": fc.hi, "method": forecaster.name}))
        return actions
