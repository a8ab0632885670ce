"""Inputs and outputs of the multi-region VM and placement planner (`opscale.planning.milp`).

Plain frozen dataclasses, filled from any source (the perf catalogue, a cloud model, a config file):
prices per (region, SKU, purchase), GPU quotas per (region, SKU), RTTs per (origin, serving region), a
capacity table per (model, SKU, TP degree), and demand per (model, origin region, tier). `PlanInputs`
checks every key and value when it is built, so a bad entry fails with an error that names the mapping,
the key and the value rather than deep inside the solver. No I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from opscale.model import Purchase

RegionSku = tuple[str, str]  # (region, sku)
VmKey = tuple[str, str, Purchase]  # (region, sku, purchase)
OptionKey = tuple[str, str, int]  # (model, sku, tp)
InstanceKey = tuple[str, str, str, int]  # (model, region, sku, tp)
DemandKey = tuple[str, str, str]  # (model, origin region, tier)
USABLE_MEMORY_FRACTION = 0.9  # of a GPU's memory, for weights and KV (the rest: activations, runtime)


class PlanInputError(ValueError):
    """A planner input names something undeclared or holds an impossible value."""


class SpotCapScope(StrEnum):
    """Where the spot share cap applies: within every region, or over the whole fleet."""

    REGION = "region"
    GLOBAL = "global"


class SolveStatus(StrEnum):
    """Which path produced a plan: the MIP proved within its gap, the MIP's incumbent when the time limit
    struck, or, when the full search had nothing better, a warm start: HEURISTIC (the rounded LP
    relaxation, or the fleet solved for the greedy or the LP routing; see `milp.warmstart`) or the greedy
    plan."""

    OPTIMAL = "OPTIMAL"
    FEASIBLE = "FEASIBLE"
    HEURISTIC = "HEURISTIC"
    GREEDY_FALLBACK = "GREEDY_FALLBACK"


@dataclass(frozen=True, slots=True)
class SkuSpec:
    """A GPU type as the planner sees it: VM shape, memory per GPU and how long a fresh VM takes to boot
    (its GPUs are paid while booting, which is part of a cold start's cost)."""

    name: str
    gpus_per_vm: int
    gpu_memory_gb: float
    vm_boot_s: float = 180.0

    def __post_init__(self) -> None:
        _positive(f"sku {self.name!r}", "gpus_per_vm", self.gpus_per_vm)
        _positive(f"sku {self.name!r}", "gpu_memory_gb", self.gpu_memory_gb)
        _non_negative(f"sku {self.name!r}", "vm_boot_s", self.vm_boot_s)


@dataclass(frozen=True, slots=True)
class PlannedModel:
    """A model to place: its memory needs, the TP degrees it may use and its load times per instance.

    An option (model, SKU, tp) is offered only when tp is allowed, tp divides the SKU's GPUs per VM and
    tp GPUs hold the weights plus the KV reserve (see `PlanInputs.usable_memory_fraction`)."""

    name: str
    weights_gb: float
    kv_reserve_gb: float
    tp_options: tuple[int, ...] = (1, 2, 4, 8)
    cold_load_s: float = 60.0  # container start + weights from remote storage
    warm_load_s: float = 10.0  # weights from host memory or a peer onto a running VM

    def __post_init__(self) -> None:
        where = f"model {self.name!r}"
        _positive(where, "weights_gb", self.weights_gb)
        _non_negative(where, "kv_reserve_gb", self.kv_reserve_gb)
        _non_negative(where, "cold_load_s", self.cold_load_s)
        _non_negative(where, "warm_load_s", self.warm_load_s)
        if not self.tp_options or any(tp < 1 for tp in self.tp_options):
            raise PlanInputError(f"{where}: tp_options must be positive integers, got {self.tp_options!r}")

    @property
    def memory_gb(self) -> float:
        return self.weights_gb + self.kv_reserve_gb


@dataclass(frozen=True, slots=True)
class TierSpec:
    """A service tier. Interactive tiers are provisioned at their (upper-quantile) demand and may be
    served remotely only within `rtt_budget_ms`. A deferrable tier (batch work with a deadline window)
    gives its mean rate over the window and may use the capacity interactive traffic leaves idle on
    average (see `PlanInputs.interactive_mean_to_quantile`)."""

    name: str
    rtt_budget_ms: float = math.inf
    deferrable: bool = False
    rtt_penalty_usd_per_rps_ms_h: float = 1e-3  # routing 1 req/s over 100 ms RTT costs $0.1/h
    unserved_weight: float = 1.0  # relative utility: unserved interactive work may cost more

    def __post_init__(self) -> None:
        where = f"tier {self.name!r}"
        _non_negative(where, "rtt_budget_ms", self.rtt_budget_ms, allow_inf=True)
        _non_negative(where, "rtt_penalty_usd_per_rps_ms_h", self.rtt_penalty_usd_per_rps_ms_h)
        _positive(where, "unserved_weight", self.unserved_weight)


@dataclass(frozen=True, slots=True)
class ObjectiveWeights:
    """How the objective's terms compare, all in USD per hour.

    Change cost: loading GPU-seconds (cold: VM boot + cold load on fresh VMs; warm: warm load on VMs
    already running) priced at the (region, SKU) reference price per GPU-second, times
    `change_cost_weight`, amortised over `plan_horizon_s` (a one-off cost spread over the hour-scale
    period the plan is expected to hold). Unserved demand costs `unserved_penalty_usd_per_rps_h` per
    req/s (times the tier's weight); None picks 100 x the dearest GPU cost of one req/s among the
    offered options, so slack is used only when capacity truly cannot be had."""

    change_cost_weight: float = 1.0
    plan_horizon_s: float = 3600.0
    unserved_penalty_usd_per_rps_h: float | None = None
    # Spot's risk term: a preempted spot VM is replaced, and the GPU-seconds of the replacement's boot and
    # of reloading its instances are lost; this weight scales that expected loss (0: spot's price alone).
    preemption_risk_weight: float = 1.0

    def __post_init__(self) -> None:
        _non_negative("objective weights", "change_cost_weight", self.change_cost_weight)
        _non_negative("objective weights", "preemption_risk_weight", self.preemption_risk_weight)
        _positive("objective weights", "plan_horizon_s", self.plan_horizon_s)
        if self.unserved_penalty_usd_per_rps_h is not None:
            _positive("objective weights", "unserved_penalty_usd_per_rps_h", self.unserved_penalty_usd_per_rps_h)


@dataclass(frozen=True, slots=True)
class Fleet:
    """A fleet state: VMs per (region, SKU, purchase) and instances per (model, region, SKU, tp). The
    planner's output, and its anchor when given as the previous (or the observed) state."""

    vm_counts: Mapping[VmKey, int] = field(default_factory=dict)
    instances: Mapping[InstanceKey, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    """A plan's objective, term by term, in USD per hour."""

    gpu_usd_per_h: float
    change_usd_per_h: float
    rtt_penalty_usd_per_h: float
    unserved_penalty_usd_per_h: float
    cold_gpus: float  # GPUs of new instances loading cold on fresh VMs
    warm_gpus: float  # GPUs of new instances loading warm on VMs already running
    preemption_risk_usd_per_h: float = 0.0  # spot VMs' expected preemption loss (`PlanInputs.preemption_risk`)

    @property
    def total_usd_per_h(self) -> float:
        return (self.gpu_usd_per_h + self.change_usd_per_h + self.rtt_penalty_usd_per_h
                + self.unserved_penalty_usd_per_h + self.preemption_risk_usd_per_h)


@dataclass(frozen=True, slots=True)
class PlanSolution:
    """The planner's answer.

    `routing[(model, origin, tier)]` maps serving regions to their share of that demand; the shares plus
    `unserved_share` for the same key sum to 1. `gap` is the relative gap to the best lower bound known,
    the solver's or the LP relaxation's (0 when proven optimal; None when no bound is known, as for the
    greedy plan when the LP did not finish). `objective_usd_per_h` is `costs.total`.
    `solve_s` is the whole call's wall time, `build_s` the part of it before any solver ran."""

    status: SolveStatus
    fleet: Fleet
    routing: Mapping[DemandKey, Mapping[str, float]]
    unserved_share: Mapping[DemandKey, float]
    costs: CostBreakdown
    gap: float | None
    solve_s: float
    solver: str
    reason: str = ""
    variables: int = 0  # size of the MIP built (0 when none was)
    constraints: int = 0
    build_s: float = 0.0  # part of solve_s spent on the greedy plan and building the model

    @property
    def objective_usd_per_h(self) -> float:
        return self.costs.total_usd_per_h

    @property
    def vm_counts(self) -> Mapping[VmKey, int]:
        return self.fleet.vm_counts

    @property
    def instances(self) -> Mapping[InstanceKey, int]:
        return self.fleet.instances

    def unserved_rps(self, inputs: PlanInputs) -> dict[DemandKey, float]:
        return {key: share * inputs.demand_rps[key] for key, share in self.unserved_share.items() if share > 0}

    def routing_weights(self, inputs: PlanInputs) -> dict[tuple[str, str], dict[str, float]]:
        """Shares per (model, origin) over all tiers, weighted by demand: the shape `Plan.routing_weights`
        takes. Example: interactive 3 req/s all local ("eu"), batch 1 req/s all to "us" ->
        {"eu": 0.75, "us": 0.25}."""
        served: dict[tuple[str, str], dict[str, float]] = {}
        for (model, origin, tier), shares in self.routing.items():
            rps = inputs.demand_rps.get((model, origin, tier), 0.0)
            bucket = served.setdefault((model, origin), {})
            for region, share in shares.items():
                bucket[region] = bucket.get(region, 0.0) + share * rps
        out: dict[tuple[str, str], dict[str, float]] = {}
        for key, rps_by_region in served.items():
            total = sum(rps_by_region.values())
            if total > 0:
                out[key] = {region: rps / total for region, rps in sorted(rps_by_region.items()) if rps > 0}
        return out


@dataclass(frozen=True, slots=True)
class PlanInputs:
    """Everything one planning round needs.

    Absent keys mean: a (region, SKU, purchase) without a price is not offered there; a (region, SKU)
    without a quota has no quota; an (origin, serving) pair without an RTT is unreachable (a region
    always reaches itself at 0 ms); a (model, SKU, tp) without capacity is not an option.
    `spot_share_cap` bounds spot GPUs to that fraction of all GPUs, within each region or over the
    fleet (`spot_cap_scope`); `spot_preemptions_per_h` (per (region, SKU); absent: 0) prices spot's risk
    on top of its price (`preemption_risk`), so spot is bought only where it is cheaper after that term.
    `interactive_mean_to_quantile` (rho) is the ratio of interactive traffic's mean to the quantile it is
    forecast at: a model's capacity C in a region must hold the interactive
    load I (at its quantile) and also rho*I + B, where B is the deferrable tiers' window-mean load.
    """

    regions: tuple[str, ...]
    skus: tuple[SkuSpec, ...]
    models: tuple[PlannedModel, ...]
    tiers: tuple[TierSpec, ...]
    prices_usd_per_gpu_h: Mapping[VmKey, float]
    capacity_rps: Mapping[OptionKey, float]
    demand_rps: Mapping[DemandKey, float]
    quotas_gpus: Mapping[RegionSku, int] = field(default_factory=dict)
    rtt_ms: Mapping[tuple[str, str], float] = field(default_factory=dict)
    spot_preemptions_per_h: Mapping[RegionSku, float] = field(default_factory=dict)
    spot_share_cap: float = 0.5
    spot_cap_scope: SpotCapScope = SpotCapScope.REGION
    interactive_mean_to_quantile: float = 0.8
    usable_memory_fraction: float = USABLE_MEMORY_FRACTION
    weights: ObjectiveWeights = field(default_factory=ObjectiveWeights)

    def __post_init__(self) -> None:
        for label, names in (("regions", self.regions), ("skus", tuple(s.name for s in self.skus)),
                             ("models", tuple(m.name for m in self.models)), ("tiers", tuple(t.name for t in self.tiers))):
            if not names:
                raise PlanInputError(f"{label}: at least one is needed")
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise PlanInputError(f"{label}: duplicate names {dupes}")
        if not 0.0 <= self.spot_share_cap <= 1.0:
            raise PlanInputError(f"spot_share_cap must be in [0, 1], got {self.spot_share_cap!r}")
        if not 0.0 < self.interactive_mean_to_quantile <= 1.0:
            raise PlanInputError(f"interactive_mean_to_quantile must be in (0, 1], got {self.interactive_mean_to_quantile!r}")
        if not 0.0 < self.usable_memory_fraction <= 1.0:
            raise PlanInputError(f"usable_memory_fraction must be in (0, 1], got {self.usable_memory_fraction!r}")
        regions, skus = set(self.regions), {s.name for s in self.skus}
        models, tiers = {m.name for m in self.models}, {t.name for t in self.tiers}
        for key, price in self.prices_usd_per_gpu_h.items():
            region, sku, purchase = key
            _known("prices_usd_per_gpu_h", key, (("region", region, regions), ("sku", sku, skus)))
            if purchase not in set(Purchase):
                raise PlanInputError(f"prices_usd_per_gpu_h{key!r}: purchase must be one of {[p.value for p in Purchase]}")
            _positive(f"prices_usd_per_gpu_h{key!r}", "price", price)
        for key, quota in self.quotas_gpus.items():
            _known("quotas_gpus", key, (("region", key[0], regions), ("sku", key[1], skus)))
            _non_negative(f"quotas_gpus{key!r}", "quota", quota)
        for key, rate in self.spot_preemptions_per_h.items():
            _known("spot_preemptions_per_h", key, (("region", key[0], regions), ("sku", key[1], skus)))
            _non_negative(f"spot_preemptions_per_h{key!r}", "rate", rate)
        for key, rtt in self.rtt_ms.items():
            _known("rtt_ms", key, (("origin region", key[0], regions), ("serving region", key[1], regions)))
            _non_negative(f"rtt_ms{key!r}", "rtt", rtt)
        for key, rate in self.capacity_rps.items():
            _known("capacity_rps", key, (("model", key[0], models), ("sku", key[1], skus)))
            if not isinstance(key[2], int) or key[2] < 1:
                raise PlanInputError(f"capacity_rps{key!r}: tp must be a positive integer")
            _positive(f"capacity_rps{key!r}", "capacity", rate)
        for key, rps in self.demand_rps.items():
            _known("demand_rps", key, (("model", key[0], models), ("origin region", key[1], regions),
                                       ("tier", key[2], tiers)))
            _non_negative(f"demand_rps{key!r}", "demand", rps)
        # read-only views: the solver and the greedy plan index these many times and must not change them
        for name in ("prices_usd_per_gpu_h", "capacity_rps", "demand_rps", "quotas_gpus", "rtt_ms",
                     "spot_preemptions_per_h"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    # ---- derived views (computed on demand; the mappings above are the one owner of each fact)

    def sku(self, name: str) -> SkuSpec:
        return self.sku_by_name()[name]

    def sku_by_name(self) -> dict[str, SkuSpec]:
        return {s.name: s for s in self.skus}

    def tier_by_name(self) -> dict[str, TierSpec]:
        return {t.name: t for t in self.tiers}

    def rtt(self, origin: str, serving: str) -> float:
        """Round trip from origin to serving region; inf when unreachable, 0 within a region."""
        if origin == serving:
            return 0.0
        return self.rtt_ms.get((origin, serving), math.inf)

    def options(self) -> dict[OptionKey, float]:
        """The usable (model, SKU, tp) options and their req/s per instance (see `PlannedModel`)."""
        skus, models = self.sku_by_name(), {m.name: m for m in self.models}
        out: dict[OptionKey, float] = {}
        for (model, sku, tp), rate in sorted(self.capacity_rps.items()):
            if option_fits(models[model], skus[sku], tp, self.usable_memory_fraction):
                out[(model, sku, tp)] = rate
        return out

    def offered(self, region: str, sku: str) -> list[Purchase]:
        return [p for p in Purchase if (region, sku, p) in self.prices_usd_per_gpu_h]

    def reference_price(self, region: str, sku: str) -> float:
        """Price of a GPU-second's worth of loading: the on-demand price when offered, else the spot one."""
        for purchase in (Purchase.ON_DEMAND, Purchase.SPOT):
            price = self.prices_usd_per_gpu_h.get((region, sku, purchase))
            if price is not None:
                return price
        return 0.0

    def preemption_risk(self, region: str, sku: str, purchase: Purchase) -> float:
        """USD per GPU-hour a VM of `purchase` is expected to lose to preemption (0 for on-demand): the
        Poisson rate of preemption per hour times the GPU-seconds a replacement costs (the SKU's boot
        plus the slowest model's cold load) priced at the reference price, times the risk weight.

        Example: 0.1 preemptions/h, 180 s boot + 120 s load, on-demand 4 USD/GPU-h, weight 1 ->
        0.1 x 300 / 3600 x 4 = 0.033 USD per GPU-hour on top of spot's price."""
        if purchase != Purchase.SPOT:
            return 0.0
        rate = self.spot_preemptions_per_h.get((region, sku), 0.0)
        if rate <= 0:
            return 0.0
        lost_s = self.sku(sku).vm_boot_s + max((m.cold_load_s for m in self.models), default=0.0)
        return rate * lost_s / 3600.0 * self.reference_price(region, sku) * self.weights.preemption_risk_weight

    def effective_price(self, key: VmKey) -> float:
        """USD per GPU-hour the plan weighs a (region, SKU, purchase) VM at: its price plus its risk term."""
        return self.prices_usd_per_gpu_h[key] + self.preemption_risk(*key)

    def weighed_prices(self, region: str, sku: str) -> tuple[float | None, float | None]:
        """(on-demand, spot) `effective_price` of a (region, SKU); None where that purchase is not offered."""
        od, spot = (region, sku, Purchase.ON_DEMAND), (region, sku, Purchase.SPOT)
        offered = self.prices_usd_per_gpu_h
        return (self.effective_price(od) if od in offered else None,
                self.effective_price(spot) if spot in offered else None)

    def unserved_penalty(self) -> float:
        """USD per hour per unserved req/s (before the tier's weight); see `ObjectiveWeights`."""
        if self.weights.unserved_penalty_usd_per_rps_h is not None:
            return self.weights.unserved_penalty_usd_per_rps_h
        dearest = max((max(self.prices_usd_per_gpu_h.values(), default=1.0) * tp / rate
                       for (_, _, tp), rate in self.options().items()), default=1.0)
        return 100.0 * dearest


def option_fits(model: PlannedModel, sku: SkuSpec, tp: int,
                usable_memory_fraction: float = USABLE_MEMORY_FRACTION) -> bool:
    """Whether `model` may run on `tp` GPUs of `sku`: tp is one of its degrees, divides the VM's GPUs,
    and tp GPUs hold its weights plus KV reserve in `usable_memory_fraction` of their memory."""
    return (tp in model.tp_options and sku.gpus_per_vm % tp == 0
            and tp * sku.gpu_memory_gb * usable_memory_fraction >= model.memory_gb)


def _known(mapping: str, key: tuple, parts: tuple[tuple[str, str, set[str]], ...]) -> None:
    for what, name, known in parts:
        if name not in known:
            raise PlanInputError(f"{mapping}{key!r}: unknown {what} {name!r}; known: {sorted(known)}")


def _positive(where: str, field_name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise PlanInputError(f"{where}: {field_name} must be a positive finite number, got {value!r}")


def _non_negative(where: str, field_name: str, value: float, *, allow_inf: bool = False) -> None:
    ok = isinstance(value, int | float) and not math.isnan(value) and value >= 0
    if not ok or (not allow_inf and math.isinf(value)):
        raise PlanInputError(f"{where}: {field_name} must be a non-negative number, got {value!r}")
