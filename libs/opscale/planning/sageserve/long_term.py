"""SageServe's long-term (LT) policies (PAPERS.md §2.6): a forecast-sized instance count per model x
region, re-planned every hour, applied three ways.

Each plan: the pool's prompt tokens/s, sampled at every decision into one point per `forecast_step_s`
(SageServe: 1-minute sums of prompt tokens), feed a forecaster (SageServe: ARIMA; here the registry's
seasonal ARIMA by default); demand D = the forecast maximum over [t + 20 min, t + 60 min]; the plan is the
fewest instances with count x T >= D, T = prompt tokens/s one instance sustains (from the capacity
function). That is the release's ILP for one GPU type: with a single SKU per pool, min sum(c x delta +
s x new) subject to (C + delta) x T >= D is solved by the smallest such count, so no solver is needed
here (the multi-SKU MIP lives in planning/milp*.py).

- LT-I: the plan is applied at once (scale-ins and scale-outs alike).
- LT-U: the plan's change is a budget: instances are added one at a time only while the KV utilisation
  is above 0.5 and budget remains, removed only below 0.25; an emergency scale-out above 0.9 needs no
  budget (released code's constants).
- LT-UA: as LT-U, but the emergency trigger is the observed prompt tokens/s over the demand the plan was
  sized for exceeding `burst_ratio` (5 in the released config).

A scale-out locks the pool for the actuation time of SageServe's warm path (65 s same-model reclaim or
155 s cross-model redeploy): the interface cannot order a redeploy onto a VM that runs another model,
so that time is the policy's assumed lead time, and the simulator's own load model decides when the
instance is ready. The forecast is kept pure: the series lives in the policy state and a fresh
forecaster is fitted on it at each plan (hourly), so a restarted planner re-plans identically.

Gaps: PoolObservation has no per-tier demand, so the series counts every tier's prompt tokens (the
paper forecasts interactive tokens and adds 0.1 x the largest batch prompt seen in the last hour).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from opscale.forecast import make_forecaster, max_over_horizon, steps_for
from opscale.model import Observation, PoolKey, PoolObservation
from opscale.planning import guards
from opscale.planning.base import CapacityFn, DeploymentSpec, Effects
from opscale.planning.pool_load import decide_each_pool, instance_prompt_tps, mean_lengths
from opscale.planning.sageserve.reactive import MemoryThresholds, memory_step


class LtVariant(StrEnum):
    LT_I = "lt_i"
    LT_U = "lt_u"
    LT_UA = "lt_ua"


def _released_thresholds() -> MemoryThresholds:
    return MemoryThresholds(scale_out_util=0.5, scale_in_util=0.25)


class SageServeLtConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant: LtVariant = Field(LtVariant.LT_U, description="lt_i: apply the plan at once; lt_u: spend it "
                               "on utilisation triggers; lt_ua: lt_u with a forecast-error emergency trigger")
    plan_interval_s: float = Field(3600.0, gt=0, description="Re-plan period (SageServe: hourly)")
    forecast_step_s: float = Field(60.0, gt=0, description="Spacing of the prompt-token series (1 minute)")
    horizon_start_s: float = Field(1200.0, gt=0, description="Demand is the forecast maximum from this far ahead")
    horizon_end_s: float = Field(3600.0, gt=0, description="... to this far ahead (20 to 60 minutes)")
    forecaster: str = Field("sarima", description="Forecaster name (opscale.forecast registry); SageServe uses "
                            "ARIMA. It answers seasonal-naive until it has enough history")
    forecaster_params: dict[str, Any] = Field(default_factory=dict, description="Extra forecaster arguments")
    season_s: float = Field(86400.0, gt=0, description="Season of the series (a day)")
    history_s: float = Field(2 * 86400.0, gt=0, description="Series kept in the state (inferred: two seasons)")
    plan_on: Literal["mean", "hi"] = Field("mean", description="Size for the forecast's mean (SageServe's point "
                                           "forecast) or its interval's upper bound")
    forecast_source: Literal["own", "observation"] = Field(
        "own", description="own: the series above; observation: the forecaster service's forecast_rps_hi "
        "x mean prompt tokens (a single horizon, not the 20-60 min maximum), own when absent")
    throughput_util: float = Field(1.0, gt=0, le=1, description="Plan so demand <= this x count x T "
                                   "(1.0: the release sizes on the measured throughput)")
    thresholds: MemoryThresholds = Field(default_factory=_released_thresholds, description="LT-U triggers "
                                         "(released code: up above 0.5, down below 0.25)")
    emergency_util: float = Field(0.9, gt=0, le=1, description="LT-U: scale out above this KV utilisation "
                                  "without budget")
    burst_ratio: float = Field(5.0, gt=1, description="LT-UA: scale out without budget when observed prompt "
                               "tokens/s exceed this multiple of the planned demand")

    @field_validator("forecaster")
    @classmethod
    def _known_forecaster(cls, name: str) -> str:
        make_forecaster(name)  # raises a ValueError listing the known names
        return name

    @model_validator(mode="after")
    def _horizon(self) -> SageServeLtConfig:
        if self.horizon_start_s > self.horizon_end_s:
            raise ValueError(f"horizon_start_s ({self.horizon_start_s}) must not exceed horizon_end_s "
                             f"({self.horizon_end_s})")
        if self.history_s < self.forecast_step_s:
            raise ValueError(f"history_s ({self.history_s}) must hold at least one forecast_step_s")
        return self


@dataclass(frozen=True, slots=True)
class LtPoolState:
    series: tuple[float, ...] = ()  # completed points of prompt tokens/s, oldest first (NaN: no sample)
    bucket: int | None = None  # index (now // forecast_step_s) of the point being accumulated
    bucket_sum: float = 0.0
    bucket_n: int = 0
    planned_at_s: float | None = None
    plan_count: int = 0
    plan_demand_tps: float = 0.0  # the demand the plan was sized for
    budget_up: int = 0
    budget_down: int = 0
    locked_until_s: float = -1e18


@dataclass(frozen=True, slots=True)
class LtState:
    pools: dict[PoolKey, LtPoolState] = field(default_factory=dict)


class SageServeLtPolicy:
    def __init__(self, deployments: list[DeploymentSpec], capacity: CapacityFn,
                 config: SageServeLtConfig | None = None) -> None:
        self.config = config or SageServeLtConfig()
        self.name = f"sageserve_{self.config.variant}"
        self.deployments = {d.model: d for d in deployments}
        self.capacity = capacity

    def initial_state(self) -> LtState:
        return LtState()

    def decide(self, observation: Observation, state: LtState, now_s: float) -> Effects:
        desired, reasons, pools = decide_each_pool(
            observation, self.deployments, state.pools, LtPoolState,
            lambda spec, pool, st: self._decide_pool(spec, pool, st, now_s))
        return Effects(desired, LtState(pools), reasons)

    def _decide_pool(self, spec: DeploymentSpec, pool: PoolObservation, st: LtPoolState,
                     now_s: float) -> tuple[int, str, LtPoolState]:
        st = self._sample(st, pool, now_s)
        planned = ""
        if st.series and (st.planned_at_s is None or now_s - st.planned_at_s >= self.config.plan_interval_s):
            st, planned = self._plan(spec, pool, st, now_s)
        count, why, st = self._apply(spec, pool, st, now_s)
        return count, (f"{why}; {planned}" if planned else why), st

    # -- the series and the plan ---------------------------------------------------------------------

    def _sample(self, st: LtPoolState, pool: PoolObservation, now_s: float) -> LtPoolState:
        """Fold this decision's prompt-token rate into the current point; close points as time passes."""
        cfg = self.config
        bucket = math.floor(now_s / cfg.forecast_step_s)
        value = pool.prompt_tokens_per_s if math.isfinite(pool.prompt_tokens_per_s) else 0.0
        if st.bucket is None or bucket == st.bucket:
            return replace(st, bucket=bucket, bucket_sum=st.bucket_sum + value, bucket_n=st.bucket_n + 1)
        keep = max(1, int(cfg.history_s // cfg.forecast_step_s))
        gap = min(bucket - st.bucket - 1, keep)  # points with no decision in them are missing, not zero
        closed = (st.bucket_sum / st.bucket_n,) + (math.nan,) * gap
        series = (st.series + closed)[-keep:]
        return replace(st, series=series, bucket=bucket, bucket_sum=value, bucket_n=1)

    def _plan(self, spec: DeploymentSpec, pool: PoolObservation, st: LtPoolState,
              now_s: float) -> tuple[LtPoolState, str]:
        cfg = self.config
        demand, source = self._forecast_demand(pool, st)
        per_instance = instance_prompt_tps(spec, pool, self.capacity) * cfg.throughput_util
        count = guards.sanitize(demand / per_instance if per_instance > 0 else math.nan, pool.expected)
        count = guards.clamp(count, spec.min_replicas, spec.max_replicas)
        delta = count - pool.expected
        st = replace(st, planned_at_s=now_s, plan_count=count, plan_demand_tps=demand,
                     budget_up=max(0, delta), budget_down=max(0, -delta))
        return st, (f"plan: {count} instances for {demand:.0f} prompt tok/s ({source}) at {per_instance:.0f} "
                    f"tok/s each")

    def _forecast_demand(self, pool: PoolObservation, st: LtPoolState) -> tuple[float, str]:
        cfg = self.config
        if cfg.forecast_source == "observation" and pool.forecast_rps_hi is not None:
            prompt, _ = mean_lengths(self.deployments[pool.key.model], pool)
            return pool.forecast_rps_hi * prompt, "forecaster service"
        season_steps = max(1, round(cfg.season_s / cfg.forecast_step_s))
        forecaster = make_forecaster(cfg.forecaster, season_steps=season_steps, **cfg.forecaster_params)
        forecaster.fit(st.series)
        window = max_over_horizon(forecaster, steps_for(cfg.horizon_start_s, cfg.forecast_step_s),
                                  steps_for(cfg.horizon_end_s, cfg.forecast_step_s))
        if window is None:
            return pool.prompt_tokens_per_s, "observed: no forecast yet"
        value = window.hi if cfg.plan_on == "hi" else window.mean
        source = f"{cfg.forecaster}, seasonal-naive fallback" if getattr(forecaster, "using_fallback", False) \
            else cfg.forecaster
        return (value if math.isfinite(value) and value >= 0 else pool.prompt_tokens_per_s), source

    # -- applying it ---------------------------------------------------------------------------------

    def _apply(self, spec: DeploymentSpec, pool: PoolObservation, st: LtPoolState,
               now_s: float) -> tuple[int, str, LtPoolState]:
        cfg = self.config
        expected = pool.expected
        lock_up = cfg.thresholds.scale_out_lock_s
        if expected == 0 and (pool.queued > 0 or pool.arrival_rps > 0 or spec.min_replicas > 0):
            target = guards.clamp(max(1, st.plan_count), max(1, spec.min_replicas), spec.max_replicas)
            return target, f"cold start: {pool.queued} waiting", replace(st, locked_until_s=now_s + lock_up)
        if st.planned_at_s is None:
            return expected, "hold: no plan yet (no complete point of the series)", st
        if cfg.variant == LtVariant.LT_I:
            word = "scale up" if st.plan_count > expected else "scale down" if st.plan_count < expected else "steady"
            return st.plan_count, f"{word}: LT-I plan {st.plan_count}", st
        util = pool.kv_used_frac
        if pool.loading > 0:
            return expected, f"hold: {pool.loading} loading (KV util {util:.2f})", st
        if now_s < st.locked_until_s:
            return expected, f"hold: locked for {st.locked_until_s - now_s:.0f}s (KV util {util:.2f})", st
        emergency = self._emergency(pool, st)
        if emergency and expected < spec.max_replicas:
            return expected + 1, f"scale up: emergency, {emergency}", replace(st, locked_until_s=now_s + lock_up)
        step = memory_step(pool, cfg.thresholds)
        if step > 0 and st.budget_up > 0 and expected < spec.max_replicas:
            return (expected + 1, f"scale up: KV util {util:.2f}, plan budget {st.budget_up} left",
                    replace(st, budget_up=st.budget_up - 1, locked_until_s=now_s + lock_up))
        if step < 0 and st.budget_down > 0 and expected > spec.min_replicas:
            return (expected - 1, f"scale down: KV util {util:.2f}, plan budget {st.budget_down} left",
                    replace(st, budget_down=st.budget_down - 1,
                            locked_until_s=now_s + cfg.thresholds.scale_in_lock_s))
        return expected, f"steady: KV util {util:.2f}, budget +{st.budget_up}/-{st.budget_down}", st

    def _emergency(self, pool: PoolObservation, st: LtPoolState) -> str:
        """Why an emergency scale-out is due, or "" when none is."""
        cfg = self.config
        if cfg.variant == LtVariant.LT_UA:
            # a plan for no demand and traffic now: any traffic is an unforecast burst
            ratio = pool.prompt_tokens_per_s / max(st.plan_demand_tps, 1e-9)
            return f"prompt tok/s {ratio:.1f}x the plan" if ratio > cfg.burst_ratio else ""
        util = pool.kv_used_frac
        return f"KV util {util:.2f} > {cfg.emergency_util:.2f}" if util > cfg.emergency_util else ""
