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
next solve. A plan whose demand is clearly wrong is not kept for the rest of the interval: when a pool's
observed rate exceeds the demand the plan was solved for by `resolve_over` (a burst, or a plan made on
the first seconds of traffic), the MIP is solved again at once, at most every `min_resolve_s`, so the
whole fleet is re-balanced rather than only the starved pool topped up. Each pool is prepared for that
much growth (`Effects.prepare`): the hosts that would take it stage the model's weights into host memory
now, so the scale-out, when it comes, loads warm instead of from remote storage. A solve that finds no
optimum in time returns the MIP's best plan or its greedy fallback, never nothing.

Each deployment keeps its one SKU and TP degree (the placement layer places per deployment). When the
fleet is elastic (`Observation.gpu_quotas`: the simulator's or a live stack's VMs bought through
`opscale.cloud`), the MIP may use a region's whole quota instead of the hosts present, and the policy
asks for the VMs its plan needs (`Effects.vm_counts`): the solution's VMs per (region, SKU, purchase),
raised on demand where the pools' desired instances (bounded below by min_replicas, or grown by a burst
between solves) need more GPUs than the solution bought. A fixed fleet gets no VM counts.
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
from opscale.planning.milp.catalog import planned_model, sku_specs
from opscale.planning.milp.inputs import PlanInputs, PlanSolution, TierSpec

INTERACTIVE = "interactive"


class SageServeMipConfig(BaseModel):
    interval_s: float = Field(300.0, gt=0, description="Seconds between two solves (SageServe: minutes)")
    time_limit_s: float = Field(1.0, gt=0, description="Wall-time limit of one solve, all included")
    solver: Literal["SCIP", "HIGHS"] = Field("SCIP", description="MIP solver behind OR-Tools")
    # The capacity is the perf model's saturation rate at the TBT objective; queueing needs slack below it.
    # 0.85 rather than a more cautious 0.8 because a plan that proves short is corrected within seconds
    # (resolve_over) and warm (prestage), so the slack need not cover a whole interval of surprises.
    headroom: float = Field(0.85, gt=0, le=1, description="Plan each instance at this fraction of its capacity")
    burst_util: float = Field(1.0, gt=0, description="Between solves, add instances when the observed rate "
                              "exceeds this fraction of the pool's planned capacity")
    rtt_budget_ms: float = Field(0.0, ge=0, description="Interactive demand may be planned to be served in "
                                 "another region within this round trip; 0: local only. Raise it only with the "
                                 "multi_region router, which follows the plan's routing shares (another router "
                                 "serves locally and the remote share would go unprovisioned)")
    default_rtt_ms: float = Field(80.0, ge=0, description="Round trip between two regions the catalogue "
                                  "does not know")
    resolve_over: float = Field(1.25, gt=1, description="Solve again before the interval ends when a pool's "
                                "observed rate exceeds this multiple of the demand the plan was solved for")
    min_resolve_s: float = Field(10.0, ge=0, description="Fewest seconds between two solves")
    backlog_drain_s: float = Field(60.0, gt=0, description="Requests waiting (at the router or in engine "
                                   "queues) count as extra demand that must be served within this many seconds")
    prestage: bool = Field(True, description="Stage weights on the hosts that would take each pool's growth "
                           "up to resolve_over x its replicas, so that scale-out loads warm")


@dataclass(frozen=True, slots=True)
class SageServeMipState:
    last_solve_s: float = -math.inf
    regions: tuple[str, ...] = ()
    previous: PlanSolution | None = None
    planned: dict[PoolKey, int] = field(default_factory=dict)
    demand_rps: dict[PoolKey, float] = field(default_factory=dict)  # what the plan was solved for, per origin
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
        why_solve = self._solve_due(pools, regions, state, now_s)
        solving = bool(why_solve)
        if solving:
            inputs = self._inputs(observation, regions, per_instance)
            solution = solve_plan(inputs, state.previous, self.config.time_limit_s, self.config.solver)
            planned = {PoolKey(m, r): 0 for m, r in ((k.model, k.region) for k in pools)}
            for (model, region, _, _), n in solution.instances.items():
                key = PoolKey(model, region)
                if key in planned:
                    planned[key] += n
            demand = {PoolKey(m, r): rate for (m, r, _), rate in inputs.demand_rps.items()}
            state = SageServeMipState(now_s, regions, solution, planned, demand, solution.routing_weights(inputs))
            why = f"MIP {solution.status.value.lower()} in {solution.solve_s:.2f} s ({why_solve})"
            reasons = {key: why for key in planned}
        load = self._routed_load(pools, state.routing_weights)
        desired: dict[PoolKey, int] = {}
        for key, pool in pools.items():
            dep = self.deployments[key.model]
            want = state.planned.get(key, pool.expected)
            if not solving:
                # Nothing is removed between solves: an instance a burst added stays until the next solve
                # decides (removing it as the burst ebbs would be churn, and the next burst a cold start).
                want = max(want, pool.expected)
                # Against full capacity (the plan's has headroom): add only what the plan really lacks.
                full = per_instance[key.model] / self.config.headroom
                burst = math.ceil(load[key] / (full * self.config.burst_util))
                if burst > want:
                    want = burst
                    reasons[key] = f"burst: {load[key]:.2f} rps over the plan's {state.planned.get(key, 0)}"
            desired[key] = min(dep.max_replicas, max(dep.min_replicas, want))
            reasons.setdefault(key, "hold: between solves")
        prepare = {key: min(self.deployments[key.model].max_replicas, math.ceil(n * self.config.resolve_over))
                   for key, n in desired.items()} if self.config.prestage else {}
        vm_counts = self._vm_counts(desired, state.previous) if observation.gpu_quotas else {}
        return Effects(desired, state, reasons, routing_weights=state.routing_weights, prepare=prepare,
                       vm_counts=vm_counts)

    def _vm_counts(self, desired: dict[PoolKey, int], solution: PlanSolution | None) -> dict[tuple[str, str, str], int]:
        """The VMs the fleet should hold: the solution's per (region, SKU, purchase), and on-demand VMs
        added where the desired instances need more GPUs than that (whole instances pack into whole VMs:
        every tp divides a VM's GPU count)."""
        counts: dict[tuple[str, str, str], int] = {}
        for (region, sku, purchase), n in (solution.vm_counts.items() if solution is not None else ()):
            if n > 0:
                counts[(region, sku, Purchase(purchase).value)] = n
        needed: dict[tuple[str, str], int] = {}
        for key, n in desired.items():
            dep = self.deployments[key.model]
            needed[(key.region, dep.sku)] = needed.get((key.region, dep.sku), 0) + n * dep.tp
        per_vm = {s.name: s.gpus_per_vm for s in self.skus}
        for (region, sku), gpus in sorted(needed.items()):
            held = sum(n for (r, s, _), n in counts.items() if r == region and s == sku)
            short = math.ceil(gpus / per_vm[sku]) - held
            if short > 0:
                key = (region, sku, Purchase.ON_DEMAND.value)
                counts[key] = counts.get(key, 0) + short
        return counts

    def _solve_due(self, pools: dict[PoolKey, PoolObservation], regions: tuple[str, ...],
                   state: SageServeMipState, now_s: float) -> str:
        """Why a solve is due now, or "" when the current plan stands."""
        cfg = self.config
        if regions != state.regions:
            return "regions changed" if state.regions else "first plan"
        since = now_s - state.last_solve_s
        if since >= cfg.interval_s:
            return "interval"
        if since < cfg.min_resolve_s:
            return ""
        for key, pool in sorted(pools.items(), key=lambda kv: str(kv[0])):
            planned_for = state.demand_rps.get(key, 0.0)
            wanted = self._wanted_rps(pool)
            if wanted > cfg.resolve_over * planned_for and wanted > 0:
                return f"{key}: {wanted:.2f} rps over the {planned_for:.2f} planned for"
        return ""

    def _routed_load(self, pools: dict[PoolKey, PoolObservation],
                     weights: dict[tuple[str, str], dict[str, float]]) -> dict[PoolKey, float]:
        """The rate each pool serves now when every origin's arrivals are split by the plan's shares
        (all local for an origin the plan has no shares for)."""
        load = dict.fromkeys(pools, 0.0)
        for origin, pool in pools.items():
            shares = weights.get((origin.model, origin.region)) or {origin.region: 1.0}
            for region, share in shares.items():
                key = PoolKey(origin.model, region)
                if key in load:
                    load[key] += share * self._wanted_rps(pool)
        return load

    def _wanted_rps(self, pool: PoolObservation) -> float:
        """The rate a pool must serve now: its arrivals, plus its backlog worked off within
        `backlog_drain_s` (a plan sized on arrivals alone never catches up with a queue that built while
        capacity was short, as at start-up or after a burst)."""
        return pool.arrival_rps + pool.queued / self.config.backlog_drain_s

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
            rate = max(self._wanted_rps(pool), pool.forecast_rps_hi or 0.0)
            demand[(key.model, key.region, INTERACTIVE)] = demand.get((key.model, key.region, INTERACTIVE), 0.0) + rate
            held = (pool.ready + pool.loading) * dep.tp
            used[(key.region, dep.sku)] = used.get((key.region, dep.sku), 0) + held
        quotas = {}
        if observation.gpu_quotas:  # an elastic fleet: the cloud's quota, not the hosts present
            quotas = {(region, sku.name): observation.gpu_quotas.get((region, sku.name), 0)
                      for region in regions for sku in self.skus}
        elif observation.free_gpus:
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
