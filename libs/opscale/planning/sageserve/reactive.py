"""SageServe's reactive memory-utilisation scaler (PAPERS.md §2.5), as a planning policy.

Per pool (model x region): when the memory utilisation u (mean KV-cache use of the ready instances)
exceeds the upper threshold, add one instance; when it falls below the lower one, remove one. One action
per pool is in flight at a time: after a scale-out the pool is locked for the actuation time of the
warm path it models (65 s to reclaim a same-model instance from the spot pool, 155 s to evict another
model's spot instance and load this one); a scale-in donates to the spot pool at once (0 s).

Defaults: thresholds 0.7 / 0.3 are the paper's (the released code uses 0.5 / 0.25); 65 / 155 s and the
0 s scale-in are the released code's constants. Two things are opscale's, not the paper's: a scale-in
must leave survivors under the upper threshold (u x N / (N-1) < upper, which stops 2 <-> 1 flapping),
and no action is taken while an instance is still loading (the observation shows the actuation in flight).

Gaps, stated honestly: SageServe's u counts model weights as used memory; the heartbeat's `kv_used_frac`
counts the KV cache only, so the same thresholds trigger at a higher load here. The planning interface
has no notion of a spot pool or of redeploying onto a VM that runs another model: the actuation time is
the policy's assumed lead time (its lock), and the simulator loads an instance with its own load model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from opscale.model import Observation, PoolKey, PoolObservation
from opscale.planning import guards
from opscale.planning.base import DeploymentSpec, Effects
from opscale.planning.pool_load import decide_each_pool


class Actuation(StrEnum):
    """Which of SageServe's warm scale-out paths a scale-out takes, hence how long it is locked."""

    WARM_SAME_MODEL = "warm_same_model"  # reclaim a same-model spot instance
    CROSS_MODEL = "cross_model"  # evict another model's spot instance and load this model


ACTUATION_S: dict[Actuation, float] = {Actuation.WARM_SAME_MODEL: 65.0, Actuation.CROSS_MODEL: 155.0}


class MemoryThresholds(BaseModel):
    """The ±1 memory-utilisation rule shared by the reactive scaler and the LT-U/LT-UA variants."""

    model_config = ConfigDict(extra="forbid")
    scale_out_util: float = Field(0.7, gt=0, le=1, description="Add an instance above this KV utilisation "
                                  "(paper 0.7; released code 0.5)")
    scale_in_util: float = Field(0.3, ge=0, lt=1, description="Remove an instance below this KV utilisation "
                                 "(paper 0.3; released code 0.25)")
    actuation: Actuation = Field(Actuation.WARM_SAME_MODEL, description="Scale-out path whose actuation time "
                                 "locks the pool: warm_same_model 65 s, cross_model 155 s (released code)")
    scale_in_lock_s: float = Field(0.0, ge=0, description="Lock after a scale-in (0 s: donating to the spot "
                                   "pool is immediate in the released code)")

    @model_validator(mode="after")
    def _ordered(self) -> MemoryThresholds:
        if self.scale_in_util >= self.scale_out_util:
            raise ValueError(f"scale_in_util ({self.scale_in_util}) must be below scale_out_util "
                             f"({self.scale_out_util})")
        return self

    @property
    def scale_out_lock_s(self) -> float:
        return ACTUATION_S[self.actuation]


def memory_step(pool: PoolObservation, thresholds: MemoryThresholds) -> int:
    """+1, -1 or 0 by SageServe's rule on the pool's KV utilisation; a scale-in only when the survivors
    stay under the upper threshold (the load of N spreads over N-1)."""
    util = pool.kv_used_frac
    if util > thresholds.scale_out_util:
        return 1
    if util < thresholds.scale_in_util and pool.ready > 1:
        if util * pool.ready / (pool.ready - 1) < thresholds.scale_out_util:
            return -1
    return 0


class SageServeReactiveConfig(MemoryThresholds):
    pass


@dataclass(frozen=True, slots=True)
class LockState:
    locked_until_s: float = -1e18  # no action on the pool before this time


@dataclass(frozen=True, slots=True)
class SageServeReactiveState:
    pools: dict[PoolKey, LockState] = field(default_factory=dict)


class SageServeReactivePolicy:
    name = "sageserve_reactive"

    def __init__(self, deployments: list[DeploymentSpec], config: SageServeReactiveConfig | None = None) -> None:
        self.config = config or SageServeReactiveConfig()
        self.deployments = {d.model: d for d in deployments}

    def initial_state(self) -> SageServeReactiveState:
        return SageServeReactiveState()

    def decide(self, observation: Observation, state: SageServeReactiveState, now_s: float) -> Effects:
        desired, reasons, pools = decide_each_pool(
            observation, self.deployments, state.pools, LockState,
            lambda spec, pool, lock: reactive_memory_step(spec, pool, lock, self.config, now_s))
        return Effects(desired, SageServeReactiveState(pools), reasons)


def reactive_memory_step(spec: DeploymentSpec, pool: PoolObservation, lock: LockState, thresholds: MemoryThresholds,
                         now_s: float) -> tuple[int, str, LockState]:
    """One decision of the reactive scaler for one pool: (desired count, reason, new lock)."""
    expected = pool.expected
    if expected == 0 and (pool.queued > 0 or pool.arrival_rps > 0 or spec.min_replicas > 0):
        target = guards.clamp(guards.cold_start(0, expected, max(1, pool.queued)), spec.min_replicas,
                              spec.max_replicas)
        return target, f"cold start: {pool.queued} waiting", LockState(now_s + thresholds.scale_out_lock_s)
    bounded = guards.clamp(expected, spec.min_replicas, spec.max_replicas)
    if bounded != expected:
        return bounded, f"bounds: {expected} -> {bounded}", lock
    util = pool.kv_used_frac
    if pool.loading > 0:
        return expected, f"hold: {pool.loading} loading (KV util {util:.2f})", lock
    if now_s < lock.locked_until_s:
        return expected, f"hold: locked for {lock.locked_until_s - now_s:.0f}s more (KV util {util:.2f})", lock
    step = memory_step(pool, thresholds)
    target = guards.clamp(expected + step, spec.min_replicas, spec.max_replicas)
    if target > expected:
        return (target, f"scale up: KV util {util:.2f} > {thresholds.scale_out_util:.2f}",
                LockState(now_s + thresholds.scale_out_lock_s))
    if target < expected:
        return (target, f"scale down: KV util {util:.2f} < {thresholds.scale_in_util:.2f}",
                LockState(now_s + thresholds.scale_in_lock_s))
    return expected, f"steady: KV util {util:.2f}", lock
