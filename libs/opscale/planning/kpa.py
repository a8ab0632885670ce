"""KPA-like scaling: the Knative Pod Autoscaler's stable and panic windows, as a planning policy.

Follows Knative Serving's KPA (pkg/autoscaler/scaling/autoscaler.go and the documented defaults of
config-autoscaler): the pool metric is averaged over a 60 s stable window and a 6 s panic window; each
average over the per-instance target gives a desired count (ceil), bounded by the maximum scale-up rate
(x1000) and scale-down rate (/2) of the ready count. When the panic-window count reaches the panic
threshold (200%) of the ready instances, the pool panics: it scales to the panic count and never
scales down until the panic window has stayed under the threshold for a whole stable window. Out of
panic the stable count rules, after an optional scale-down delay. Scale-to-zero is optional: a pool
with no traffic for a stable window plus the grace period goes to zero (min_replicas permitting).

The metric is either requests/s against `target_util` x one instance's modelled capacity (from the
capacity function), or in-flight requests (queued + running) against `target_concurrency_per_instance`
x `target_util` (Knative's concurrency mode). Samples are taken at each decision, so with the planner's
10 s period the panic window holds the newest sample only, and in "rps" mode that sample is already the
planner's 30 s arrival average: panic reacts one decision after a burst, not within seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from opscale.model import Observation, PoolKey, PoolObservation
from opscale.planning import guards
from opscale.planning.base import CapacityFn, DeploymentSpec, Effects
from opscale.planning.pool_load import decide_each_pool, instance_rps


class KpaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: Literal["rps", "concurrency"] = Field(
        "rps", description="rps: arrival rate against the modelled capacity; concurrency: in-flight requests")
    target_util: float = Field(0.7, gt=0, le=1, description="Share of the per-instance target aimed at "
                               "(Knative container-concurrency-target-percentage, 70%)")
    target_concurrency_per_instance: float | None = Field(
        None, gt=0, description="In-flight requests one instance is sized for; required with metric=concurrency")
    stable_window_s: float = Field(60.0, gt=0, description="Averaging window of the stable mode (Knative 60 s)")
    panic_window_s: float = Field(6.0, gt=0, description="Averaging window of the panic mode (Knative 10% of "
                                  "the stable window, 6 s)")
    panic_threshold: float = Field(2.0, gt=1, description="Panic when the panic-window count reaches this "
                                   "multiple of the ready instances (Knative 200%)")
    max_scale_up_rate: float = Field(1000.0, gt=1, description="Desired count at most this multiple of ready")
    max_scale_down_rate: float = Field(2.0, gt=1, description="Desired count at least ready / this")
    scale_down_delay_s: float = Field(0.0, ge=0, description="Scale down to the highest recommendation of this "
                                      "long (Knative scale-down-delay, 0 s)")
    scale_to_zero: bool = Field(False, description="Allow zero instances when the pool is idle and "
                                "min_replicas is 0")
    scale_to_zero_grace_s: float = Field(30.0, ge=0, description="Idle time beyond a stable window before the "
                                         "last instance goes (Knative scale-to-zero-grace-period, 30 s)")

    @model_validator(mode="after")
    def _consistent(self) -> KpaConfig:
        if self.metric == "concurrency" and self.target_concurrency_per_instance is None:
            raise ValueError("metric 'concurrency' needs target_concurrency_per_instance (in-flight requests "
                             "per instance)")
        if self.panic_window_s > self.stable_window_s:
            raise ValueError(f"panic_window_s ({self.panic_window_s}) must not exceed stable_window_s "
                             f"({self.stable_window_s})")
        return self


@dataclass(frozen=True, slots=True)
class KpaPoolState:
    samples: tuple[tuple[float, float], ...] = ()  # (at_s, pool metric) within the stable window
    panic_since_s: float | None = None  # last time the panic window was over the threshold; None: not panicking
    max_panic_count: int = 0  # the highest count ordered during this panic
    last_traffic_s: float | None = None  # newest decision that saw traffic or waiting requests
    recommendations: tuple[tuple[float, int], ...] = ()  # for the scale-down delay


@dataclass(frozen=True, slots=True)
class KpaState:
    pools: dict[PoolKey, KpaPoolState] = field(default_factory=dict)


class KpaPolicy:
    name = "kpa"

    def __init__(self, deployments: list[DeploymentSpec], capacity: CapacityFn, config: KpaConfig | None = None) -> None:
        self.config = config or KpaConfig()
        self.deployments = {d.model: d for d in deployments}
        self.capacity = capacity

    def initial_state(self) -> KpaState:
        return KpaState()

    def decide(self, observation: Observation, state: KpaState, now_s: float) -> Effects:
        desired, reasons, pools = decide_each_pool(
            observation, self.deployments, state.pools, KpaPoolState,
            lambda spec, pool, st: self._decide_pool(spec, pool, st, now_s))
        return Effects(desired, KpaState(pools), reasons)

    def _metric_and_target(self, spec: DeploymentSpec, pool: PoolObservation) -> tuple[float, float]:
        cfg = self.config
        if cfg.metric == "concurrency":
            assert cfg.target_concurrency_per_instance is not None  # the validator guarantees it
            return float(pool.queued + pool.running), cfg.target_concurrency_per_instance * cfg.target_util
        return pool.arrival_rps, instance_rps(spec, pool, self.capacity) * cfg.target_util

    def _decide_pool(self, spec: DeploymentSpec, pool: PoolObservation, st: KpaPoolState,
                     now_s: float) -> tuple[int, str, KpaPoolState]:
        cfg = self.config
        value, target = self._metric_and_target(spec, pool)
        if not math.isfinite(value) or value < 0:
            value = 0.0
        samples = tuple((t, v) for t, v in (*st.samples, (now_s, value)) if now_s - t < cfg.stable_window_s)
        stable = _mean(v for t, v in samples)
        panic = _mean(v for t, v in samples if now_s - t < cfg.panic_window_s)
        busy = value > 0 or pool.queued > 0 or pool.arrival_rps > 0
        last_traffic_s = now_s if busy else st.last_traffic_s

        ready = max(1, pool.ready)  # Knative divides by at least one ready pod
        max_up = math.ceil(cfg.max_scale_up_rate * ready)
        max_down = math.floor(ready / cfg.max_scale_down_rate)
        stable_count = guards.clamp(guards.sanitize(stable / target if target > 0 else math.nan, pool.expected),
                                    max_down, max_up)
        panic_count = guards.clamp(guards.sanitize(panic / target if target > 0 else math.nan, pool.expected),
                                   max_down, max_up)

        over = panic_count / ready >= cfg.panic_threshold
        panic_since, max_panic = st.panic_since_s, st.max_panic_count
        if over:
            if panic_since is None:
                max_panic = pool.expected  # entering panic: never below what runs or loads now
            panic_since = now_s
        elif panic_since is not None and now_s - panic_since >= cfg.stable_window_s:
            panic_since, max_panic = None, 0

        floor = spec.min_replicas if cfg.scale_to_zero else max(1, spec.min_replicas)
        if panic_since is not None:
            count = guards.clamp(max(stable_count, panic_count, max_panic), floor, spec.max_replicas)
            max_panic = max(max_panic, count)
            why = (f"panic: {cfg.metric} {panic:.2f} over the panic window needs {panic_count} instances, "
                   f"{panic_count / ready:.1f}x the {pool.ready} ready")
            return count, why, KpaPoolState(samples, panic_since, max_panic, last_traffic_s, ())

        count = guards.clamp(stable_count, floor, spec.max_replicas)
        idle_s = math.inf if last_traffic_s is None else now_s - last_traffic_s
        if count == 0 and idle_s < cfg.stable_window_s + cfg.scale_to_zero_grace_s:
            count = 1  # idle, but not yet for a stable window plus the grace period
        count = guards.cold_start(count, pool.expected, pool.queued + (1 if pool.arrival_rps > 0 else 0))
        recommendations = tuple((t, n) for t, n in (*st.recommendations, (now_s, count))
                                if now_s - t <= cfg.scale_down_delay_s)
        new_state = KpaPoolState(samples, None, 0, last_traffic_s, recommendations)
        if count < pool.expected:
            count = min(pool.expected, guards.stabilised_down(recommendations, now_s, cfg.scale_down_delay_s, count))
        if count > pool.expected:
            return count, f"scale up: stable {cfg.metric} {stable:.2f} needs {count} at {target:.2f}/instance", new_state
        if count < pool.expected:
            word = "scale to zero" if count == 0 else "scale down"
            return count, f"{word}: stable {cfg.metric} {stable:.2f} needs {count} at {target:.2f}/instance", new_state
        return count, f"steady: stable {cfg.metric} {stable:.2f}, {count} instances", new_state


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else 0.0
