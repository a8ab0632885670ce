"""Budgets: what the hourly plan lets the inner loops spend on a pool, and the one way past it (the
emergency rule). Pure functions on counts and observations."""

from __future__ import annotations

import math
from dataclasses import dataclass

from opscale.model import LatencyObjective, PoolObservation, Role
from opscale.planning.opscale.config import BudgetConfig, EmergencyRule


@dataclass(frozen=True, slots=True)
class PoolBudget:
    """Instances a pool may hold between two hourly solves: `floor` to `ceiling`, from `planned`."""

    planned: int
    floor: int
    ceiling: int

    def __str__(self) -> str:
        return f"[{self.floor}..{self.ceiling}] of plan {self.planned}"


def budget_from_plan(planned: int, min_replicas: int, max_replicas: int, config: BudgetConfig) -> PoolBudget:
    """The budget around `planned` instances, within the deployment's bounds. Example: 4 planned,
    floor 0.5, ceiling 1.25, slack 1 -> [2..6]. A pool planned at none gets no slack: the plan routes
    its region's demand to other regions' pools, which hold the spare, so a quiet region need not hold
    an idle instance of its own (the emergency rule still lets it borrow if demand arrives anyway)."""
    ceiling = math.ceil(config.ceiling * planned - 1e-9) + (config.slack if planned > 0 else 0)
    floor = math.ceil(config.floor * planned - 1e-9)
    ceiling = min(max_replicas, max(min_replicas, ceiling))
    floor = min(ceiling, max(min_replicas, floor))
    return PoolBudget(planned, floor, ceiling)


def emergency_reason(pool: PoolObservation, objective: LatencyObjective, queued_before: int | None,
                     rule: EmergencyRule) -> str:
    """Why `pool` is in an emergency now ("" when it is not): the latency its role is judged on
    (TTFT for prefill, TBT for decode, either for a unified pool) above its objective, or a queue of at
    least `queue_min` that grew by `queue_growth` since the last decision."""
    checks = []
    if pool.key.role is not Role.DECODE:
        checks.append(("TTFT", pool.ttft_p99_s, objective.ttft_slo_s))
    if pool.key.role is not Role.PREFILL:
        checks.append(("TBT", pool.tbt_p99_s, objective.tbt_slo_s))
    for name, seen, slo in checks:
        if seen is not None and math.isfinite(seen) and seen > rule.latency_over * slo:
            return f"{name} p99 {seen:.3f} s > {rule.latency_over:g} x {slo:g} s"
    if pool.queued >= rule.queue_min and queued_before is not None and pool.queued >= rule.queue_growth * max(1, queued_before):
        return f"queue grew {queued_before} -> {pool.queued}"
    return ""


@dataclass(frozen=True, slots=True)
class Clamped:
    """An inner loop's wish after the budget: `count`, why, and how many instances it borrowed past the
    ceiling (> 0 only under the emergency rule)."""

    count: int
    note: str
    borrowed: int = 0


def clamp_to_budget(want: int, budget: PoolBudget, emergency: str, max_replicas: int) -> Clamped:
    """`want` inside `budget`; above the ceiling only with an `emergency` (then up to max_replicas)."""
    if want < budget.floor:
        return Clamped(budget.floor, f"raised {want} -> floor {budget.floor} (hourly budget {budget})")
    if want <= budget.ceiling:
        return Clamped(want, "")
    if emergency:
        count = min(want, max(max_replicas, budget.ceiling))
        return Clamped(count, f"EMERGENCY: {emergency}: {count} past the ceiling {budget.ceiling} "
                              f"(borrowed {count - budget.ceiling})", count - budget.ceiling)
    return Clamped(budget.ceiling, f"capped {want} -> ceiling {budget.ceiling} (hourly budget {budget})")
