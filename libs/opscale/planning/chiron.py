"""Chiron-style hierarchical scaling (PAPERS.md §2.6, as SageServe re-implements Chiron), mapped onto one
pool per model x region.

Chiron keeps interactive, mixed and batch instance pools per model: interactive requests go to
interactive and mixed instances, batch requests fill the mixed instances' spare room, and a batch pool
grows only when the queued batch work would not drain before its deadline. A local autoscaler per
instance sets the batch size from the latency slack; a global autoscaler sets pool sizes. SageServe's
re-implementation scales the mixed pool when more than 0.6 of its capacity runs interactive work and the
batch pool when the estimated drain time exceeds 24 h.

The planning interface has one pool per (model, region, role), with no tier, and the observation has no
per-tier demand, so the mapping is:

- interactive + mixed capacity: N_i = ceil(lambda_i / (c x interactive_util)), lambda_i the interactive
  share of the arrivals (`interactive_fraction`, a configured split), c one instance's capacity;
- batch absorbed by the mixed share: up to `mixed_util_cap` of those N_i instances;
- the rest is deferred: extra (batch-pool) instances are added only when the queued requests plus the
  unabsorbed batch arrivals would take longer than `batch_deadline_s` to drain on the spare room, and
  then just enough to drain by the deadline at `batch_util`;
- the local autoscaler cannot set a batch size through Effects: it keeps a batch-size factor per pool
  (halved when TBT p99 exceeds the tiers' objective, `LatencyObjective.tbt_slo_s`, raised by a tenth
  while well under it) and the global autoscaler plans with c x factor, since an instance capped at a
  smaller batch decodes proportionally fewer tokens per second (decode throughput is roughly linear in
  batch below saturation).

Scale-up is immediate; scale-down takes the highest recommendation of a stabilisation window and waits
while anything is loading. Defaults marked (inferred) are not in any source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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
from opscale.planning.pool_load import decide_each_pool, instance_rps


class ChironConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    interactive_fraction: float = Field(0.8, ge=0, le=1, description="Share of a pool's arrivals that are "
                                        "interactive; configured because the observation has no per-tier "
                                        "demand (0.8 is the synthetic workloads' default tier mix)")
    interactive_util: float = Field(0.6, gt=0, le=1, description="Interactive load per instance that triggers "
                                    "mixed-pool growth (SageServe's Chiron: 0.6)")
    mixed_util_cap: float = Field(0.9, gt=0, le=1, description="Interactive plus absorbed batch load per mixed "
                                  "instance at most this (inferred)")
    batch_util: float = Field(0.95, gt=0, le=1, description="Load a batch-pool instance is sized for (inferred)")
    batch_deadline_s: float = Field(86400.0, gt=0, description="Queued batch work must drain within this "
                                    "(SageServe's NIW SLA, 24 h)")
    local_slack: float = Field(0.2, ge=0, lt=1, description="Raise the batch factor only while TBT p99 is "
                               "below (1 - this) x the objective (inferred)")
    local_increase: float = Field(0.1, gt=0, le=1, description="Additive batch-factor increase (inferred)")
    local_decrease: float = Field(0.5, gt=0, lt=1, description="Multiplicative batch-factor decrease on a TBT "
                                  "breach (inferred)")
    min_batch_factor: float = Field(0.25, gt=0, le=1, description="Lowest batch factor (inferred)")
    down_window_s: float = Field(300.0, ge=0, description="Scale-down stabilisation window (inferred)")


@dataclass(frozen=True, slots=True)
class ChironPoolState:
    batch_factor: float = 1.0  # the local autoscaler's batch size as a share of the engine's maximum
    recommendations: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True, slots=True)
class ChironState:
    pools: dict[PoolKey, ChironPoolState] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChironSizing:
    """The global autoscaler's split of one pool: interactive/mixed and batch-pool instances."""

    mixed: int
    batch: int
    absorbed_rps: float  # batch arrivals the mixed share carries
    drain_s: float  # how long the batch work would take on the mixed share's spare room

    @property
    def total(self) -> int:
        return self.mixed + self.batch


def local_batch_factor(factor: float, tbt_p99_s: float | None, tbt_slo_s: float, cfg: ChironConfig) -> float:
    """Chiron's local autoscaler as AIMD on the TBT slack: halve on a breach of `tbt_slo_s`, grow while
    well under it."""
    if tbt_p99_s is None or not math.isfinite(tbt_p99_s):
        return factor
    if tbt_p99_s > tbt_slo_s:
        return max(cfg.min_batch_factor, factor * cfg.local_decrease)
    if tbt_p99_s < tbt_slo_s * (1 - cfg.local_slack):
        return min(1.0, factor + cfg.local_increase)
    return factor


def size_pools(arrival_rps: float, backlog: int, capacity_rps: float, cfg: ChironConfig) -> ChironSizing:
    """The global autoscaler: mixed instances for interactive demand, batch instances for work that the
    mixed share's spare room would not drain within the deadline.

    Example: 10 rps, 0.8 interactive, c = 5 rps: 8 interactive rps need ceil(8 / 3) = 3 mixed
    instances; their room up to 0.9 is 3 x 4.5 - 8 = 5.5 rps, so the 2 batch rps are absorbed: 3 + 0.
    """
    if capacity_rps <= 0 or not math.isfinite(capacity_rps):
        raise ValueError(f"capacity_rps must be a positive number, got {capacity_rps!r}")
    interactive = arrival_rps * cfg.interactive_fraction
    batch = arrival_rps - interactive
    mixed = math.ceil(interactive / (capacity_rps * cfg.interactive_util) - 1e-9)
    room = max(0.0, mixed * capacity_rps * cfg.mixed_util_cap - interactive)
    absorbed = min(batch, room)
    deadline = cfg.batch_deadline_s
    work = backlog + batch * deadline  # requests to serve within the deadline
    drain_s = work / room if room > 0 else (math.inf if work > 0 else 0.0)
    if drain_s <= deadline:
        return ChironSizing(mixed, 0, absorbed, drain_s)
    shortfall_rps = work / deadline - room
    extra = math.ceil(shortfall_rps / (capacity_rps * cfg.batch_util) - 1e-9)
    return ChironSizing(mixed, extra, absorbed, drain_s)


class ChironPolicy:
    name = "chiron"

    def __init__(self, deployments: list[DeploymentSpec], capacity: CapacityFn,
                 config: ChironConfig | None = None, objective: LatencyObjective | None = None) -> None:
        self.config = config or ChironConfig()
        self.objective = objective or latency_objective(DEFAULT_TIERS)
        self.deployments = {d.model: d for d in deployments}
        self.capacity = capacity

    def initial_state(self) -> ChironState:
        return ChironState()

    def decide(self, observation: Observation, state: ChironState, now_s: float) -> Effects:
        desired, reasons, pools = decide_each_pool(
            observation, self.deployments, state.pools, ChironPoolState,
            lambda spec, pool, st: self._decide_pool(spec, pool, st, now_s))
        return Effects(desired, ChironState(pools), reasons)

    def _decide_pool(self, spec: DeploymentSpec, pool: PoolObservation, st: ChironPoolState,
                     now_s: float) -> tuple[int, str, ChironPoolState]:
        cfg = self.config
        factor = local_batch_factor(st.batch_factor, pool.tbt_p99_s, self.objective.tbt_slo_s, cfg)
        capacity = instance_rps(spec, pool, self.capacity) * factor
        expected = pool.expected
        if capacity <= 0 or not math.isfinite(capacity):
            return expected, "hold: no capacity estimate", ChironPoolState(factor, st.recommendations)
        sizing = size_pools(pool.arrival_rps, pool.queued, capacity, cfg)
        raw = guards.clamp(sizing.total, spec.min_replicas, spec.max_replicas)
        raw = guards.cold_start(raw, expected, pool.queued + (1 if pool.arrival_rps > 0 else 0))
        raw = min(raw, spec.max_replicas)
        recommendations = tuple((t, n) for t, n in (*st.recommendations, (now_s, raw))
                                if now_s - t <= cfg.down_window_s)
        new_state = ChironPoolState(factor, recommendations)
        split = (f"{sizing.mixed} mixed + {sizing.batch} batch, {sizing.absorbed_rps:.2f} batch rps absorbed, "
                 f"batch factor {factor:.2f}")
        if raw > expected:
            return raw, f"scale up: {split}", new_state
        if raw < expected:
            if pool.loading > 0:
                return expected, f"hold: pool still converging ({split})", new_state
            target = min(expected, guards.stabilised_down(recommendations, now_s, cfg.down_window_s, raw))
            if target < expected:
                return target, f"scale down: {split}", new_state
            return expected, f"hold: scale-down stabilisation ({split})", new_state
        return expected, f"steady: {split}", new_state
