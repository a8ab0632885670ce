"""SageServe's long-term planner as a planning policy, on the multi-region MIP (`opscale.planning.milp`).

Every `interval_s` (and at once when the set of regions changes) it solves, within `time_limit_s`, how
many instances of each model to run in each region and which share of each origin region's demand
each region serves: demand is the forecast's upper bound when the forecaster has one, else the
observed rate; per-instance capacity is the perf model's at the TBT objective (observed mean lengths)
derated by `headroom`; prices are the region catalogue's (`opscale.cloud`); the GPUs a region may use
are what its hosts hold; a change is priced by the MIP's change cost against the previous solution
(keeping a warm instance is cheaper than a cold start). The routing shares go out with the plan, for
the `multi_region` router. Between solves a fast reactive loop only ever adds instances where the
observed rate outruns what the plan gave a pool (a burst the forecast missed); scale-in waits for the
next solve. A solve that finds no optimum in time returns the MIP's best plan or its greedy fallback,
never nothing.

Each deployment keeps its one SKU and TP degree (the placement layer places per deployment); the MIP's
choice among SKUs and purchase types applies when the fleet is elastic (VM autoscaling), not here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from opscale.cloud import default_region_catalog
from opscale.model import Observation, PoolKey, PoolObservation, Purchase
from opscale.perf import default_catalog
from opscale.planning.base import CapacityFn, DeploymentSpec, Effects
from opscale.planning.milp import solve_plan
from opscale.planning.milp_catalog import planned_model, sku_specs
from opscale.planning.milp_inputs import PlanInputs, PlanSolution, TierSpec

INTERACTIVE = "interactive"


class SageServeMipConfig(BaseModel):
    interval_s: float = Field(300.0, gt=0, description="Seconds between two solves (SageServe: minutes)")
    time_limit_s: float = Field(1.0, gt=0, description="Wall-time limit of one solve, all included")
    solver: Literal["SCIP", "HIGHS"] = Field("SCIP", description="MIP solver behind OR-Tools")
    headroom: float = Field(0.8, gt=0, le=1, description="Plan each instance at this fraction of its capacity")
    burst_util: float = Field(1.0, gt=0, description="Between solves, add instances when the observed rate "
                              "exceeds this fraction of the pool's planned capacity")
    rtt_budget_ms: float = Field(0.0, ge=0, description="Interactive demand may be planned to be served in "
                                 "another region within this round trip; 0: local only. Raise it only with the "
                                 "multi_region router, which follows the plan's routing shares (another router "
                                 "serves locally and the remote share would go unprovisioned)")
    default_rtt_ms: float = Field(80.0, ge=0, description="Round trip between two regions the catalogue "
                                  "does not know")


@dataclass(frozen=True, slots=True)
class SageServeMipState:
    last_solve_s: float = -math.inf
    regions: tuple[str, ...] = ()
    previous: PlanSolution | None = None
    planned: dict[PoolKey, int] = field(default_factory=dict)
    routing_weights: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)


class SageServeMipPolicy:
    name = "sageserve_mip"

    def __init__(self, deployments: list[DeploymentSpec], capacity: CapacityFn,
                 config: SageServeMipConfig | None = None) -> None:
        self.config = config or SageServeMipConfig()
        self.deployments = {d.model: d for d in deployments}
        self.capacity = capacity
        catalog = default_catalog()
        self.skus = sku_specs(catalog, sorted({d.sku for d in deployments}))
        self.models = {d.model: planned_model(catalog, d.model, tp_options=(d.tp,)) for d in deployments}
        self.regions = default_region_catalog()

    def initial_state(self) -> SageServeMipState:
        return SageServeMipState()

    def decide(self, observation: Observation, state: SageServeMipState, now_s: float) -> Effects:
        pools = {k: p for k, p in observation.pools.items() if k.model in self.deployments}
        regions = tuple(sorted({k.region for k in pools}))
        if not regions:
            return Effects({}, state)
        per_instance = self._per_instance_rps(observation)
        reasons: dict[PoolKey, str] = {}
        solving = now_s - state.last_solve_s >= self.config.interval_s or regions != state.regions
        if solving:
            inputs = self._inputs(observation, regions, per_instance)
            solution = solve_plan(inputs, state.previous, self.config.time_limit_s, self.config.solver)
            planned = {PoolKey(m, r): 0 for m, r in ((k.model, k.region) for k in pools)}
            for (model, region, _, _), n in solution.instances.items():
                key = PoolKey(model, region)
                if key in planned:
                    planned[key] += n
            state = SageServeMipState(now_s, regions, solution, planned, solution.routing_weights(inputs))
            why = f"MIP {solution.status.value.lower()} in {solution.solve_s:.2f} s"
            reasons = {key: why for key in planned}
        load = self._routed_load(pools, state.routing_weights)
        desired: dict[PoolKey, int] = {}
        for key, pool in pools.items():
            dep = self.deployments[key.model]
            want = state.planned.get(key, pool.expected)
            if not solving:
                # Against full capacity (the plan's has headroom): add only what the plan really lacks.
                full = per_instance[key.model] / self.config.headroom
                burst = math.ceil(load[key] / (full * self.config.burst_util))
                if burst > want:
                    want = burst
                    reasons[key] = f"burst: {load[key]:.2f} rps over the plan's {state.planned.get(key, 0)}"
            desired[key] = min(dep.max_replicas, max(dep.min_replicas, want))
            reasons.setdefault(key, "hold: between solves")
        return Effects(desired, state, reasons, routing_weights=state.routing_weights)

    @staticmethod
    def _routed_load(pools: dict[PoolKey, PoolObservation],
                     weights: dict[tuple[str, str], dict[str, float]]) -> dict[PoolKey, float]:
        """The rate each pool serves now when every origin's arrivals are split by the plan's shares
        (all local for an origin the plan has no shares for)."""
        load = dict.fromkeys(pools, 0.0)
        for origin, pool in pools.items():
            shares = weights.get((origin.model, origin.region)) or {origin.region: 1.0}
            for region, share in shares.items():
                key = PoolKey(origin.model, region)
                if key in load:
                    load[key] += share * pool.arrival_rps
        return load

    def _per_instance_rps(self, observation: Observation) -> dict[str, float]:
        """Planned req/s of one instance per model, at the mean lengths seen (deployment's until traffic)."""
        rates: dict[str, float] = {}
        for model, dep in self.deployments.items():
            seen = [p for k, p in observation.pools.items() if k.model == model and p.arrival_rps > 0]
            arrivals = sum(p.arrival_rps for p in seen)
            prompt = sum(p.prompt_tokens_per_s for p in seen) / arrivals if arrivals else dep.typical_prompt_tokens
            output = sum(p.output_tokens_per_s for p in seen) / arrivals if arrivals else dep.typical_output_tokens
            rates[model] = self.capacity(model, dep.sku, dep.tp, max(1.0, prompt), max(1.0, output)) * self.config.headroom
        return rates

    def _inputs(self, observation: Observation, regions: tuple[str, ...], per_instance: dict[str, float]) -> PlanInputs:
        demand: dict[tuple[str, str, str], float] = {}
        used: dict[tuple[str, str], int] = {}
        for key, pool in observation.pools.items():
            dep = self.deployments.get(key.model)
            if dep is None:
                continue
            rate = max(pool.arrival_rps, pool.forecast_rps_hi or 0.0)
            demand[(key.model, key.region, INTERACTIVE)] = demand.get((key.model, key.region, INTERACTIVE), 0.0) + rate
            held = (pool.ready + pool.loading) * dep.tp
            used[(key.region, dep.sku)] = used.get((key.region, dep.sku), 0) + held
        quotas = {}
        if observation.free_gpus:
            for region in regions:
                for sku in self.skus:
                    quotas[(region, sku.name)] = observation.free_gpus.get((region, sku.name), 0) + used.get((region, sku.name), 0)
        prices = {(r, s.name, Purchase.ON_DEMAND): self.regions.price(r, s.name, Purchase.ON_DEMAND)
                  for r in regions for s in self.skus}
        capacity = {(model, dep.sku, dep.tp): per_instance[model] for model, dep in self.deployments.items()}
        return PlanInputs(
            regions=regions, skus=self.skus, models=tuple(self.models.values()),
            tiers=(TierSpec(INTERACTIVE, rtt_budget_ms=self.config.rtt_budget_ms),),
            prices_usd_per_gpu_h=prices, capacity_rps=capacity, demand_rps=demand, quotas_gpus=quotas,
            rtt_ms={(a, b): self._rtt_ms(a, b) for a in regions for b in regions if a != b})

    def _rtt_ms(self, a: str, b: str) -> float:
        try:
            return self.regions.rtt_ms(a, b)
        except (KeyError, ValueError):
            return self.config.default_rtt_ms
