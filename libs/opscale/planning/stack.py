"""One assembly of the planning stack: the capacity estimator and the planning policy sized by it.

The simulated world (opscale.experiments.runner), the experiment reports and the live planner
(services/planner) all build theirs here, so the simulator and the live stack cannot size capacity
differently: the TBT budget is the tiers' objective (`latency_objective`), the batch and memory limits
are the engine's (`EngineConfig`), and the latency model is the caller's (normally `LatencyModels`,
with measured profiles when there are any). Builds objects only: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from opscale.engine.config import EngineConfig
from opscale.model import ModelSpec, Role, Sku, TierSpec, latency_objective
from opscale.perf import Catalog
from opscale.planning.base import DeploymentSpec, PlanningPolicy
from opscale.planning.capacity import CapacityEstimator, SupportsStepLatency
from opscale.planning.registry import make_planning_policy

LatencyFactory = Callable[[ModelSpec, Sku, int], SupportsStepLatency]


@dataclass(frozen=True, slots=True)
class PlanningStack:
    """What a planner core is built on: per-instance capacity, and the policy that plans with it."""

    capacity: CapacityEstimator
    policy: PlanningPolicy


def capacity_estimator(tiers: Mapping[str, TierSpec], catalog: Catalog, latency: LatencyFactory,
                       engine: EngineConfig | None = None) -> CapacityEstimator:
    """Per-instance capacity at the tiers' TBT objective, with `engine`'s batch and memory limits
    (the engine defaults when None)."""
    engine = engine if engine is not None else EngineConfig()
    return CapacityEstimator(catalog, latency_objective(tiers).tbt_slo_s, max_batch=engine.max_num_seqs,
                             gpu_memory_utilization=engine.gpu_memory_utilization, latency_factory=latency)


def build_planning_stack(deployments: list[DeploymentSpec], tiers: Mapping[str, TierSpec], policy: str,
                         policy_params: Mapping[str, Any], *, catalog: Catalog, latency: LatencyFactory,
                         engine: EngineConfig | None = None) -> PlanningStack:
    """The capacity estimator (see `capacity_estimator`) and the planning policy `policy` with
    `policy_params`, defending the tiers' objectives. A bad policy name or parameter is a ValueError
    naming it; so is a deployment of a model or SKU the catalogue does not know."""
    for dep in deployments:  # unknown names fail here, naming the known ones, not at the first decision
        catalog.model(dep.model)
        if not dep.disaggregated:
            catalog.sku(dep.pool(Role.UNIFIED).sku)
        for role in dep.roles():
            pool = dep.pool(role)
            where = "" if role is Role.UNIFIED else f"{role.value}."
            for field, sku in ((f"{where}sku", pool.sku),
                               *((f"{where}compatible_skus", name) for name in pool.compatible_skus)):
                try:
                    catalog.sku(sku)
                except ValueError as exc:
                    raise ValueError(f"deployment {dep.model!r}: {field}: {exc}") from None
    capacity = capacity_estimator(tiers, catalog, latency, engine)
    return PlanningStack(capacity, make_planning_policy(policy, deployments, capacity, tiers=tiers,
                                                        **dict(policy_params)))
