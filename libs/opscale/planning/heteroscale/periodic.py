"""HeteroScale's periodic policy: a daily schedule of prefill and decode counts, for services that are
constrained or experimental rather than metric-driven (PAPERS.md §3.3). Pure: the counts follow from the
time of day alone.

A schedule lists (time of day, prefill, decode) entries, sorted; an entry holds from its time until the
next one, and the last entry of the day holds past midnight until the first. Example: entries at 08:00
(4P/12D) and 20:00 (1P/3D) give 1P/3D from 20:00 to 08:00 and 4P/12D in the day. The deployment's
role bounds (RoleBounds, from its prefill and decode pools) clamp each role's count.
"""

from __future__ import annotations

from dataclasses import replace

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from opscale.planning.heteroscale.config import parse_pd_ratio
from opscale.planning.heteroscale.controller import ControllerState, ScaleDecision, ServiceObservation
from opscale.planning.heteroscale.ratio import RoleBounds, prefill_share, ratio_error

SECONDS_PER_DAY = 86_400.0


class ScheduleEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at_s: float = Field(ge=0, lt=SECONDS_PER_DAY, description="Seconds after midnight when the entry starts")
    prefill: int = Field(ge=0, description="Prefill instances from then on")
    decode: int = Field(ge=0, description="Decode instances from then on")


class PeriodicConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entries: list[ScheduleEntry] = Field(min_length=1, description="The day's entries, sorted by at_s")
    pd_ratio: float | None = Field(None, gt=0, description="When set, every entry must keep this prefill per "
                                   "decode ratio within one instance (a number or 'P:D')")
    utc_offset_s: float = Field(0.0, ge=-SECONDS_PER_DAY / 2, le=SECONDS_PER_DAY / 2,
                                description="Added to the clock before taking the time of day (local time)")
    # PAPERS.md §5: engine period 30 s.
    period_s: float = Field(30.0, gt=0, description="How often the wiring should call the policy")

    @field_validator("pd_ratio", mode="before")
    @classmethod
    def _ratio_text(cls, value: object) -> object:
        return parse_pd_ratio(value)

    @model_validator(mode="after")
    def _valid_schedule(self) -> PeriodicConfig:
        for i, (before, entry) in enumerate(zip(self.entries, self.entries[1:], strict=False), start=1):
            if entry.at_s <= before.at_s:
                raise ValueError(f"entries[{i}].at_s: {entry.at_s} is not after entries[{i - 1}].at_s "
                                 f"{before.at_s}; the schedule must be sorted, one entry per time")
        for i, entry in enumerate(self.entries):
            if (entry.prefill == 0) != (entry.decode == 0):
                raise ValueError(f"entries[{i}]: {entry.prefill}P/{entry.decode}D; a disaggregated service "
                                 "needs both roles, or neither")
            if self.pd_ratio is not None:
                error = ratio_error(entry.prefill, entry.decode, self.pd_ratio)
                if abs(error) >= 1:
                    share = prefill_share(self.pd_ratio)
                    raise ValueError(f"entries[{i}]: {entry.prefill}P/{entry.decode}D is {error:+.2f} prefill "
                                     f"instances off pd_ratio {self.pd_ratio:.3g} (prefill share {share:.3f}); "
                                     "at most one instance off is allowed")
        return self


class PeriodicController:
    def __init__(self, config: PeriodicConfig, bounds: RoleBounds | None = None) -> None:
        self.config = config
        self.bounds = bounds if bounds is not None else RoleBounds()

    def initial_state(self) -> ControllerState:
        return ControllerState()

    def entry_at(self, now_s: float) -> ScheduleEntry:
        """The entry in force at `now_s`: the last one started today, else the day's last (from yesterday)."""
        time_of_day_s = (now_s + self.config.utc_offset_s) % SECONDS_PER_DAY
        started = [e for e in self.config.entries if e.at_s <= time_of_day_s]
        return started[-1] if started else self.config.entries[-1]

    def decide(self, observation: ServiceObservation, state: ControllerState, now_s: float) -> ScaleDecision:
        entry = self.entry_at(now_s)
        b = self.bounds
        pair = (min(max(entry.prefill, b.min_prefill), b.max_prefill),
                min(max(entry.decode, b.min_decode), b.max_decode))
        current = (observation.prefill_total, observation.decode_total)
        if sum(pair) > sum(current):
            state = ControllerState(last_scale_out_s=now_s, last_change_s=now_s)
        elif pair != current:
            state = replace(state, last_change_s=now_s)
        hours, rest = divmod(int(entry.at_s), 3600)
        reason = (f"schedule: entry from {hours:02d}:{rest // 60:02d}: {current[0]}P/{current[1]}D -> "
                  f"{pair[0]}P/{pair[1]}D")
        return ScaleDecision(pair[0], pair[1], reason, state, now_s + self.config.period_s)
