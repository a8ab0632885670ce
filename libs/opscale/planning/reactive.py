"""Reactive target-utilisation scaling (HPA-like) with hysteresis, cooldowns and an SLO backstop.

Utilisation is demand over modelled capacity: u = demand_rps / (instances x capacity_rps). The target
count is ceil(demand / (capacity x target_util)). Scale-up acts when u on the *expected* instances (ready
plus loading) exceeds target x (1 + tolerance), so capacity still loading is never ordered twice.
Scale-down acts only when u is below target x (1 - tolerance), after `down_delay_s` since the last
change, on the highest recommendation of the stabilisation window, only if the survivors absorb the
load, and never while the pool is still converging (anything loading). When TTFT p99 breaches the
tiers' objective (`LatencyObjective.ttft_slo_s`, the strictest latency-sensitive tier's) while requests
queue, one more instance is added whatever the model says (negative feedback for a capacity model that
is off).

A disaggregated deployment's prefill and decode pools are sized each on its own, by the same rules, on
its own signal: demand over one prefill instance's rate (prompt tokens/s) and over one decode
instance's (output tokens/s), within each pool's bounds. This is HeteroScale's "independent per-pool"
baseline, not its coordinated P/D-ratio policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pydantic import BaseModel, ConfigDict, Field

from opscale.model import (
    DEFAULT_TIERS,
    LatencyObjective,
    Observation,
    PoolKey,
    PoolObservation,
    latency_objective,
)
from opscale.planning import guards
from opscale.planning.base import CapacityFn, DeploymentSpec, Effects
from opscale.planning.pool_load import instance_rps


class ReactiveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_util: float = Field(0.7, gt=0, le=1, description="Utilisation the pool is sized for")
    tolerance: float = Field(0.1, ge=0, lt=1, description="Hysteresis band around the target (fraction)")
    up_delay_s: float = Field(15.0, ge=0, description="Minimum time between two scale-ups of a pool")
    down_delay_s: float = Field(120.0, ge=0, description="Minimum time since the last change before scale-down")
    down_window_s: float = Field(300.0, ge=0, description="Scale-down stabilisation window")
    max_down_step: int = Field(2, ge=1, description="Instances removed per decision at most")
    use_forecast: bool = Field(False, description="Plan on max(observed, forecast upper bound); off for a purely "
                               "reactive scaler (forecast-driven planning is the SageServe planner's job)")


@dataclass(frozen=True, slots=True)
class PoolState:
    last_up_s: float = -1e18
    last_change_s: float = -1e18
    recommendations: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True, slots=True)
class ReactiveState:
    pools: dict[PoolKey, PoolState] = field(default_factory=dict)


class ReactivePolicy:
    name = "reactive"

    def __init__(self, deployments: list[DeploymentSpec], capacity: CapacityFn,
                 config: ReactiveConfig | None = None, objective: LatencyObjective | None = None) -> None:
        self.config = config or ReactiveConfig()
        self.objective = objective or latency_objective(DEFAULT_TIERS)
        self.deployments = {d.model: d for d in deployments}
        self.capacity = capacity

    def initial_state(self) -> ReactiveState:
        return ReactiveState()

    def decide(self, observation: Observation, state: ReactiveState, now_s: float) -> Effects:
        desired: dict[PoolKey, int] = {}
        reasons: dict[PoolKey, str] = {}
        pools = dict(state.pools)
        for key, pool in sorted(observation.pools.items(), key=lambda kv: str(kv[0])):
            spec = self.deployments.get(key.model)
            if spec is None:
                continue
            spec = spec.for_role(key.role)
            count, why, pools[key] = self._decide_pool(spec, pool, pools.get(key, PoolState()), now_s)
            desired[key], reasons[key] = count, why
        return Effects(desired, ReactiveState(pools), reasons)

    def _decide_pool(self, spec: DeploymentSpec, pool: PoolObservation, st: PoolState,
                     now_s: float) -> tuple[int, str, PoolState]:
        cfg = self.config
        expected = pool.expected
        demand = pool.arrival_rps
        if cfg.use_forecast and pool.forecast_rps_hi is not None:
            demand = max(demand, pool.forecast_rps_hi)
        cap = instance_rps(spec, pool, self.capacity)
        raw = guards.sanitize(demand / (cap * cfg.target_util) if cap > 0 else float("nan"), expected)
        raw = guards.clamp(raw, spec.min_replicas, spec.max_replicas)
        st = replace(st, recommendations=tuple(
            (t, r) for t, r in (*st.recommendations, (now_s, raw)) if now_s - t <= cfg.down_window_s))
        util = demand / (max(1, expected) * cap) if cap > 0 else 0.0
        waiting = pool.queued

        if expected == 0 and (waiting > 0 or demand > 0 or spec.min_replicas > 0):
            target = guards.clamp(guards.cold_start(raw, expected, max(1, waiting)), spec.min_replicas,
                                  spec.max_replicas)
            # Not an "up" for the up-delay: the next decision, with real traffic seen, may add more at once.
            return target, f"cold start: {waiting} waiting, demand {demand:.2f} rps", _changed(st, now_s, up=False)

        ttft_slo_s = self.objective.ttft_slo_s
        slo_breach = (pool.ttft_p99_s is not None and pool.ttft_p99_s > ttft_slo_s and waiting > 0
                      and pool.loading == 0)
        if slo_breach and now_s - st.last_up_s >= cfg.up_delay_s:
            target = guards.clamp(max(raw, expected + 1), spec.min_replicas, spec.max_replicas)
            if target > expected:
                return (target, f"SLO backstop: TTFT p99 {pool.ttft_p99_s:.2f}s > {ttft_slo_s}s with "
                        f"{waiting} queued", _changed(st, now_s, up=True))

        if raw > expected and util > cfg.target_util * (1 + cfg.tolerance):
            if now_s - st.last_up_s < cfg.up_delay_s:
                return expected, f"hold: scale-up delay ({util:.2f} util)", st
            return (raw, f"scale up: util {util:.2f} > {cfg.target_util:.2f}, demand {demand:.2f} rps, "
                    f"capacity {cap:.2f} rps/instance", _changed(st, now_s, up=True))

        if raw < expected and util < cfg.target_util * (1 - cfg.tolerance):
            if pool.loading > 0:
                return expected, "hold: pool still converging", st
            if now_s - st.last_change_s < cfg.down_delay_s:
                return expected, "hold: scale-down delay", st
            target = guards.stabilised_down(st.recommendations, now_s, cfg.down_window_s, raw)
            target = guards.limit_step_down(target, expected, cfg.max_down_step)
            while target < expected and not guards.survivors_absorb(demand, cap, target, cfg.target_util):
                target += 1
            if target < expected:
                return (target, f"scale down: util {util:.2f} < {cfg.target_util:.2f}, demand {demand:.2f} rps",
                        _changed(st, now_s, up=False))
            return expected, "hold: survivors could not absorb the load", st
        bounded = guards.clamp(expected, spec.min_replicas, spec.max_replicas)
        return bounded, f"steady: util {util:.2f}", st if bounded == expected else _changed(st, now_s, up=bounded > expected)


def _changed(st: PoolState, now_s: float, *, up: bool) -> PoolState:
    return replace(st, last_change_s=now_s, last_up_s=now_s if up else st.last_up_s)
