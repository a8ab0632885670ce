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

The MIP chooses, per model, among the deployment's (SKU, TP) options (its own and its
`compatible_skus`) and per (region, SKU) between on-demand and spot VMs: spot at the region catalogue's spot
price plus a preemption-risk term (its preemption rate x the GPU-seconds a replacement costs), at most
`spot_share_cap` of a region's GPUs. The policy acts on both: each pool's instances are asked for with the
chosen (SKU, TP) mix (`Effects.sku_mix`, which placement follows on the hosts of those SKUs), and the
VMs per (region, SKU, purchase) go out as `Effects.vm_counts` when the fleet is elastic
(`Observation.gpu_quotas`: the simulator's or a live stack's VMs bought through `opscale.cloud`): the MIP
may then use a region's whole quota instead of the hosts present, and the counts are the solution's VMs,
raised with on-demand VMs (within the quota) where the pools' instances need more GPUs than the solution
bought: the desired instances (bounded below by min_replicas, or grown by a burst between solves) and the
growth prestage prepares for (a VM boots for minutes; without room held for it a scale-out would wait for
one, then load cold), each counted on the SKU it runs or will run on (placement keeps a running instance on
its SKU whatever a later plan's mix says). A new VM is weighed at the catalogue's boot time. A fixed fleet
gets no VM counts: the MIP chooses among the GPUs present.

Batch (NIW) work is deferred as SageServe does (`batch_share` > 0): that share of each pool's arrivals is
a deferrable tier whose volume, averaged over its deadline window (plus the held backlog, worked off
within `batch_backlog_drain_s`), fills the capacity the interactive peak leaves idle on average: the
MIP sizes for max(I, rho x I + B) (see `opscale.planning.milp.solve`), not for the peak of both. The
router holds batch requests while interactive work needs the room (RouterConfig.batch_admission_share)
and feeds them as it frees, in order of arrival + 0.8 x deadline (hold order tier_priority).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from opscale.cloud import default_region_catalog
from opscale.model import Observation, PoolKey, PoolObservation, Purchase, Role
from opscale.perf import default_catalog
from opscale.planning.base import CapacityFn, DeploymentSpec, Effects
from opscale.planning.milp import solve_plan
from opscale.planning.milp.catalog import planned_model, sku_specs
from opscale.planning.milp.inputs import (
    PlanInputs,
    PlannedModel,
    PlanSolution,
    SkuSpec,
    TierSpec,
    option_fits,
)
from opscale.planning.placement import mix_outcome

INTERACTIVE = "interactive"
BATCH = "batch"

Option = tuple[str, int]  # (sku, tp)


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
    spot: bool = Field(True, description="Offer spot VMs beside on-demand ones, at the region catalogue's spot "
                       "price plus the preemption-risk term")
    spot_share_cap: float = Field(0.5, ge=0, le=1, description="Spot GPUs at most this share of a region's GPUs")
    preemption_risk_weight: float = Field(1.0, ge=0, description="Scales spot's expected preemption loss (a "
                                          "replacement's boot and cold load, at the on-demand price) in the "
                                          "MIP; 0: spot is weighed at its price alone")
    default_spot_preemptions_per_h: float = Field(0.05, ge=0, description="Preemptions per spot VM-hour in a "
                                                  "region the catalogue does not know")
    interactive_mean_to_quantile: float | None = Field(
        None, gt=0, le=1, description="Mean over planned quantile of interactive demand (rho): batch fills "
        "rho x I + B <= capacity. None: measured at each solve, as the observed arrivals over the rate "
        "planned for (the forecast's upper bound where it is higher)")
    batch_share: float = Field(0.0, ge=0, lt=1, description="Share of each pool's arrivals that is deferrable "
                               "batch (NIW) work, planned over its deadline window; the observation has no "
                               "per-tier demand (as for chiron's interactive_fraction). 0: all interactive")
    batch_deadline_s: float = Field(7200.0, gt=0, description="The batch tier's deadline: its arrivals are "
                                    "averaged over this window")
    batch_backlog_drain_s: float = Field(1440.0, gt=0, description="With batch_share > 0, requests held or "
                                         "queued are batch work the plan serves within this many seconds (the "
                                         "time left after SageServe's 0.8 x deadline)")


@dataclass(frozen=True, slots=True)
class SageServeMipState:
    last_solve_s: float = -math.inf
    regions: tuple[str, ...] = ()
    previous: PlanSolution | None = None
    planned: dict[PoolKey, int] = field(default_factory=dict)
    demand_rps: dict[PoolKey, float] = field(default_factory=dict)  # what the plan was solved for, per origin
    routing_weights: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    sku_mix: dict[PoolKey, dict[Option, int]] = field(default_factory=dict)
    vm_counts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # pool -> (batch arrivals averaged over the deadline window, when last updated)
    batch_mean: dict[PoolKey, tuple[float, float]] = field(default_factory=dict)
    rho: float = 1.0  # the interactive mean over quantile the plan was solved with


class SageServeMipPolicy:
    name = "sageserve_mip"

    def __init__(self, deployments: list[DeploymentSpec], capacity: CapacityFn,
                 config: SageServeMipConfig | None = None) -> None:
        self.config = config or SageServeMipConfig()
        self.deployments = {d.model: d for d in deployments}
        self.capacity = capacity
        catalog = default_catalog()
        self.options: dict[str, list[Option]] = {d.model: d.pool(Role.UNIFIED).choices() for d in deployments}
        self.skus = sku_specs(catalog, sorted({sku for opts in self.options.values() for sku, _ in opts}))
        self.models = {m: planned_model(catalog, m, tp_options=tuple(sorted({tp for _, tp in opts})))
                       for m, opts in self.options.items()}
        self.regions = default_region_catalog()
        # A new VM's boot is the change cost the MIP weighs against keeping one: the catalogue's longest
        # on-demand provisioning time for the SKU (minutes for GPU VMs), not a generic guess
        self.skus = tuple(dataclasses.replace(s, vm_boot_s=self._boot_s(s.name, s.vm_boot_s)) for s in self.skus)
        for model, opts in self.options.items():
            _check_fits(model, opts, self.models[model], {s.name: s for s in self.skus})

    def initial_state(self) -> SageServeMipState:
        return SageServeMipState()

    def decide(self, observation: Observation, state: SageServeMipState, now_s: float) -> Effects:
        pools = {k: p for k, p in observation.pools.items() if k.model in self.deployments}
        regions = tuple(sorted({k.region for k in pools}))
        if not regions:
            return Effects({}, state)
        lengths = self._mean_lengths(observation)
        reasons: dict[PoolKey, str] = {}
        batch_mean = self._batch_mean(pools, state, now_s)
        why_solve = self._solve_due(pools, regions, state, now_s)
        solving = bool(why_solve)
        if solving:
            inputs = self._inputs(observation, regions, lengths, batch_mean)
            solution = solve_plan(inputs, state.previous, self.config.time_limit_s, self.config.solver)
            planned = {PoolKey(m, r): 0 for m, r in ((k.model, k.region) for k in pools)}
            mix: dict[PoolKey, dict[Option, int]] = {}
            for (model, region, sku, tp), n in solution.instances.items():
                key = PoolKey(model, region)
                if key in planned:
                    planned[key] += n
                    mix.setdefault(key, {})[(sku, tp)] = n
            demand: dict[PoolKey, float] = {}
            for (m, r, _), rate in inputs.demand_rps.items():
                demand[PoolKey(m, r)] = demand.get(PoolKey(m, r), 0.0) + rate
            vms = {(r, s, Purchase(p).value): n for (r, s, p), n in solution.vm_counts.items() if n}
            state = SageServeMipState(now_s, regions, solution, planned, demand, solution.routing_weights(inputs),
                                      mix, vms, batch_mean, inputs.interactive_mean_to_quantile)
            bought = ", ".join(f"{n} {s} {p} in {r}" for (r, s, p), n in sorted(vms.items())) or "none"
            why = f"MIP {solution.status.value.lower()} in {solution.solve_s:.2f} s ({why_solve}); VMs: {bought}"
            reasons = {key: why for key in planned}
        else:
            state = _with_batch_mean(state, batch_mean)
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
                full = self._instance_rps(key.model, dep.sku, dep.tp, lengths) / self.config.headroom
                burst = math.ceil(self._needed_rps(key, load[key], state) / (full * self.config.burst_util))
                if burst > want:
                    want = burst
                    reasons[key] = f"burst: {load[key]:.2f} rps over the plan's {state.planned.get(key, 0)}"
            desired[key] = min(dep.max_replicas, max(dep.min_replicas, want))
            reasons.setdefault(key, "hold: between solves")
        prepare = {key: min(self.deployments[key.model].max_replicas, math.ceil(n * self.config.resolve_over))
                   for key, n in desired.items()} if self.config.prestage else {}
        mix = {key: _trimmed(state.sku_mix[key], n, self.options[key.model])
               for key, n in desired.items() if key in state.sku_mix}
        # VMs hold room for the growth prestage prepares (an elastic fleet's new host boots for minutes:
        # room bought only once a scale-out asks for it would leave the scale-out waiting, then loading cold)
        room = {key: max(n, prepare.get(key, n)) for key, n in desired.items()}
        vm_counts = (self._vm_counts(pools, room, mix, state.vm_counts, observation.gpu_quotas)
                     if observation.gpu_quotas else {})
        return Effects(desired, state, reasons, routing_weights=state.routing_weights, prepare=prepare,
                       sku_mix=mix, vm_counts=vm_counts)

    def _vm_counts(self, pools: dict[PoolKey, PoolObservation], replicas: dict[PoolKey, int],
                   mix: dict[PoolKey, dict[Option, int]],
                   solved: dict[tuple[str, str, str], int],
                   quotas: dict[tuple[str, str], int]) -> dict[tuple[str, str, str], int]:
        """The VMs the fleet should hold: the solution's per (region, SKU, purchase), and on-demand VMs
        added where `replicas` per pool need more GPUs than that (whole instances pack into whole VMs: every
        tp divides a VM's GPU count). A pool's GPUs are counted on the SKUs its instances will run on
        (`mix_outcome`: those running stay on their SKU, whatever the plan's mix; new ones follow the mix),
        not on the mix alone: an instance a previous plan put on another SKU holds GPUs there until it is
        scaled in, and a count that ignored it would leave the plan's next instance of that SKU no room.
        The VMs added stay within the (region, SKU)'s quota."""
        counts = dict(solved)
        needed: dict[tuple[str, str], int] = {}
        for key, n in replicas.items():
            placed = pools[key].placed_by_option if key in pools else {}
            split = mix_outcome(self.options[key.model], mix.get(key), placed, n)
            for (sku, tp), m in split.items():
                needed[(key.region, sku)] = needed.get((key.region, sku), 0) + m * tp
        per_vm = {s.name.casefold(): s.gpus_per_vm for s in self.skus}
        for (region, sku), gpus in sorted(needed.items()):
            held = sum(n for (r, s, _), n in counts.items() if r == region and s.casefold() == sku.casefold())
            gpv = per_vm[sku.casefold()]
            quota = next((q for (r, s), q in quotas.items() if r == region and s.casefold() == sku.casefold()), 0)
            short = min(math.ceil(gpus / gpv), quota // gpv) - held
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

    def _needed_rps(self, key: PoolKey, load: float, state: SageServeMipState) -> float:
        """The rate a pool's capacity must hold for `load` (its routed arrivals and backlog) by the plan's
        own law: all of it, or with batch deferred, the interactive share and the batch window mean
        in the room its average leaves (max(I, rho x I + B)), so a burst check does not undo deferral."""
        if self.config.batch_share <= 0:
            return load
        interactive = (1.0 - self.config.batch_share) * load
        batch = state.batch_mean.get(key, (0.0, 0.0))[0]
        return max(interactive, state.rho * interactive + batch)

    def _wanted_rps(self, pool: PoolObservation) -> float:
        """The rate a pool must serve now: its arrivals, plus its backlog worked off within
        `backlog_drain_s` (a plan sized on arrivals alone never catches up with a queue that built while
        capacity was short, as at start-up or after a burst). With batch deferred, the backlog is mostly
        held batch work, due within `batch_backlog_drain_s` instead."""
        cfg = self.config
        drain_s = cfg.batch_backlog_drain_s if cfg.batch_share > 0 else cfg.backlog_drain_s
        return pool.arrival_rps + pool.queued / drain_s

    def _batch_mean(self, pools: dict[PoolKey, PoolObservation], state: SageServeMipState,
                    now_s: float) -> dict[PoolKey, tuple[float, float]]:
        """Each pool's batch arrivals averaged over the deadline window (an exponential mean with that
        time constant): the volume deferral spreads over the window."""
        share = self.config.batch_share
        if share <= 0:
            return {}
        out: dict[PoolKey, tuple[float, float]] = {}
        for key, pool in pools.items():
            rate = share * pool.arrival_rps
            previous = state.batch_mean.get(key)
            if previous is None:
                out[key] = (rate, now_s)
                continue
            weight = 1.0 - math.exp(-max(0.0, now_s - previous[1]) / self.config.batch_deadline_s)
            out[key] = (previous[0] + weight * (rate - previous[0]), now_s)
        return out

    def _mean_lengths(self, observation: Observation) -> dict[str, tuple[float, float]]:
        """Mean (prompt, output) tokens per model as seen (the deployment's typical ones until traffic)."""
        lengths: dict[str, tuple[float, float]] = {}
        for model, dep in self.deployments.items():
            seen = [p for k, p in observation.pools.items() if k.model == model and p.arrival_rps > 0]
            arrivals = sum(p.arrival_rps for p in seen)
            prompt = sum(p.prompt_tokens_per_s for p in seen) / arrivals if arrivals else dep.typical_prompt_tokens
            output = sum(p.output_tokens_per_s for p in seen) / arrivals if arrivals else dep.typical_output_tokens
            lengths[model] = (max(1.0, prompt), max(1.0, output))
        return lengths

    def _instance_rps(self, model: str, sku: str, tp: int, lengths: dict[str, tuple[float, float]]) -> float:
        """Planned req/s of one instance of `model` on (sku, tp), at the headroom."""
        return self.capacity(model, sku, tp, *lengths[model]) * self.config.headroom

    def _inputs(self, observation: Observation, regions: tuple[str, ...], lengths: dict[str, tuple[float, float]],
                batch_mean: dict[PoolKey, tuple[float, float]]) -> PlanInputs:
        cfg = self.config
        demand: dict[tuple[str, str, str], float] = {}
        used: dict[tuple[str, str], int] = {}
        for key, pool in observation.pools.items():
            dep = self.deployments.get(key.model)
            if dep is None:
                continue
            wanted = max(self._wanted_rps(pool), pool.forecast_rps_hi or 0.0)
            if cfg.batch_share > 0:
                interactive = (1.0 - cfg.batch_share) * max(pool.arrival_rps, pool.forecast_rps_hi or 0.0)
                mean = batch_mean.get(key, (0.0, 0.0))[0]
                batch = mean + pool.queued / cfg.batch_backlog_drain_s
                _add(demand, (key.model, key.region, BATCH), batch)
            else:
                interactive = wanted
            _add(demand, (key.model, key.region, INTERACTIVE), interactive)
            used[(key.region, dep.sku)] = used.get((key.region, dep.sku), 0) + (pool.ready + pool.loading) * dep.tp
        prices: dict[tuple[str, str, Purchase], float] = {}
        preemptions: dict[tuple[str, str], float] = {}
        purchases = (Purchase.ON_DEMAND, Purchase.SPOT) if cfg.spot else (Purchase.ON_DEMAND,)
        for region in regions:
            spec = self.regions.get(region)
            for sku in self.skus:
                for purchase in purchases:
                    prices[(region, sku.name, purchase)] = self.regions.price(region, sku.name, purchase)
                if cfg.spot:
                    preemptions[(region, sku.name)] = (spec.spot_preemptions_per_h if spec is not None
                                                       else cfg.default_spot_preemptions_per_h)
        capacity = {(model, sku, tp): self._instance_rps(model, sku, tp, lengths)
                    for model, opts in self.options.items() for sku, tp in opts}
        tiers = [TierSpec(INTERACTIVE, rtt_budget_ms=cfg.rtt_budget_ms)]
        if cfg.batch_share > 0:  # batch may be served wherever interactive may (the router follows the plan)
            tiers.append(TierSpec(BATCH, rtt_budget_ms=cfg.rtt_budget_ms, deferrable=True))
        return PlanInputs(
            regions=regions, skus=self.skus, models=tuple(self.models.values()), tiers=tuple(tiers),
            prices_usd_per_gpu_h=prices, capacity_rps=capacity, demand_rps=demand,
            quotas_gpus=self._quotas(observation, regions, used),
            rtt_ms={(a, b): self._rtt_ms(a, b) for a in regions for b in regions if a != b},
            spot_preemptions_per_h=preemptions, spot_share_cap=cfg.spot_share_cap,
            interactive_mean_to_quantile=cfg.interactive_mean_to_quantile or self._measured_rho(observation))

    def _measured_rho(self, observation: Observation) -> float:
        """Arrivals over the rate planned for (arrivals or the forecast's upper bound, the higher), over
        the planned pools: how far the interactive quantile the plan holds sits above its mean. 1 when
        nothing arrives (no room to defer into)."""
        pools = [p for k, p in observation.pools.items() if k.model in self.deployments]
        planned = sum(max(p.arrival_rps, p.forecast_rps_hi or 0.0) for p in pools)
        return min(1.0, max(0.05, sum(p.arrival_rps for p in pools) / planned)) if planned > 0 else 1.0

    def _quotas(self, observation: Observation, regions: tuple[str, ...],
                used: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
        """GPUs the plan may hold per (region, SKU): an elastic fleet's quotas (what the cloud lets it buy),
        else the GPUs of the hosts present; without a view of the hosts' totals (an observation that gives
        free GPUs only), free plus what its pools hold."""
        if observation.gpu_quotas:  # an elastic fleet: the cloud's quota, not the hosts present
            return {(r, s.name): observation.gpu_quotas.get((r, s.name), 0) for r in regions for s in self.skus}
        if observation.total_gpus:
            return {(r, s.name): observation.total_gpus.get((r, s.name), 0) for r in regions for s in self.skus}
        if observation.free_gpus:
            return {(r, s.name): observation.free_gpus.get((r, s.name), 0) + used.get((r, s.name), 0)
                    for r in regions for s in self.skus}
        return {}

    def _boot_s(self, sku: str, default_s: float) -> float:
        """The longest on-demand provisioning time of `sku` over the catalogue's regions (`default_s` where
        none sells it)."""
        times = [offer.on_demand_provision_s for region in self.regions.regions
                 if (offer := region.offer(sku)) is not None]
        return max(times, default=default_s)

    def _rtt_ms(self, a: str, b: str) -> float:
        try:
            return self.regions.rtt_ms(a, b)
        except (KeyError, ValueError):
            return self.config.default_rtt_ms


def _add(table: dict[tuple[str, str, str], float], key: tuple[str, str, str], value: float) -> None:
    table[key] = table.get(key, 0.0) + value


def _trimmed(mix: dict[Option, int], replicas: int, options: list[Option]) -> dict[Option, int]:
    """The plan's mix cut to `replicas` (a pool's max_replicas bounds what the MIP planned), taking from
    the deployment's least preferred options first. A mix below `replicas` (min_replicas, a burst) stays:
    placement puts the extra instances by the deployment's order."""
    out, excess = dict(mix), sum(mix.values()) - replicas
    for option in reversed(options):
        if excess <= 0:
            break
        cut = min(excess, out.get(option, 0))
        if cut:
            out[option] -= cut
            excess -= cut
    return {option: n for option, n in out.items() if n}


def _with_batch_mean(state: SageServeMipState, batch_mean: dict[PoolKey, tuple[float, float]]) -> SageServeMipState:
    if not batch_mean:
        return state
    return SageServeMipState(state.last_solve_s, state.regions, state.previous, state.planned, state.demand_rps,
                             state.routing_weights, state.sku_mix, state.vm_counts, batch_mean, state.rho)


def _check_fits(model: str, options: list[Option], spec: PlannedModel, skus: dict[str, SkuSpec]) -> None:
    """A deployment none of whose (SKU, tp) holds its weights and KV reserve cannot be planned: a
    ValueError naming the fields to change."""
    if not any(option_fits(spec, skus[sku], tp) for sku, tp in options):
        raise ValueError(f"deployment {model!r}: none of its (sku, tp) options {options} holds its "
                         f"{spec.memory_gb:.0f} GB of weights and KV reserve; raise 'tp' or add a larger SKU to "
                         f"'compatible_skus'")
