"""The greedy plan: the planner's baseline and its fallback when the MIP has no solution in time.

Demand is taken interactive tiers first, largest first. Each demand goes to the regions it may reach,
nearest first (local routing first), and in each region to the option (SKU, tp) with the lowest GPU cost
per req/s (cheapest capacity per unit first), adding instances until the region's GPU quota for that SKU
(rounded down to whole VMs) is spent; what no reachable region can take is left unserved. Deferrable
load is counted at its full window-mean rate, which implies the MIP's rho*I + B <= C rule. VMs per
(region, SKU) are the instances' GPUs rounded up to whole VMs, spot for floor(cap x VMs) of them where spot
is offered and cheaper, so the spot cap holds in every region and so over the fleet.

It ignores the previous plan (it rebuilds from scratch), so it can churn more than the MIP; it is fast
(linear in demand entries x reachable regions x options) and always valid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from opscale.model import Purchase
from opscale.planning.milp.inputs import DemandKey, Fleet, InstanceKey, PlanInputs, RegionSku, VmKey

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class GreedyPlan:
    fleet: Fleet
    routing: dict[DemandKey, dict[str, float]]
    unserved_share: dict[DemandKey, float]


def greedy_plan(inputs: PlanInputs, serving: Mapping[DemandKey, tuple[str, ...]] | None = None) -> GreedyPlan:
    """The greedy plan; with `serving`, demand key k goes only to the regions in `serving[k]` (the MIP's
    candidates, so the plan is a valid hint for it)."""
    skus, tiers = inputs.sku_by_name(), inputs.tier_by_name()
    options = inputs.options()
    price = {(r, s): _ranking_price(inputs, r, s) for r in inputs.regions for s in skus}
    gpu_budget: dict[RegionSku, float] = {}
    for (r, s), p in price.items():
        if p is None:
            continue
        quota = inputs.quotas_gpus.get((r, s))
        gpv = skus[s].gpus_per_vm
        gpu_budget[(r, s)] = math.inf if quota is None else (quota // gpv) * gpv
    per_model: dict[str, list[tuple[str, int, float]]] = {}
    for (model, sku, tp), cap in options.items():
        per_model.setdefault(model, []).append((sku, tp, cap))
    ranked: dict[tuple[str, str], list[tuple[str, int, float]]] = {}  # (model, region) -> cheapest per req/s first
    for model, opts in per_model.items():
        for region in inputs.regions:
            costed = sorted((price[(region, sku)] * tp / cap, sku, tp, cap)  # type: ignore[operator]
                            for sku, tp, cap in opts if price[(region, sku)] is not None)
            ranked[(model, region)] = [(sku, tp, cap) for _, sku, tp, cap in costed]
    reachable: dict[tuple[str, float], list[str]] = {}

    load: dict[InstanceKey, float] = {}
    count: dict[InstanceKey, int] = {}
    used: dict[RegionSku, int] = {}
    routing: dict[DemandKey, dict[str, float]] = {}
    unserved: dict[DemandKey, float] = {}
    order = sorted((key for key, rps in inputs.demand_rps.items() if rps > 0),
                   key=lambda k: (tiers[k[2]].deferrable, -inputs.demand_rps[k], k))
    for key in order:
        model, origin, tier = key
        rps = inputs.demand_rps[key]
        remaining = rps
        budget_ms = tiers[tier].rtt_budget_ms
        if serving is not None:
            regions = list(serving.get(key, ()))  # nearest first already
        elif (origin, budget_ms) in reachable:
            regions = reachable[(origin, budget_ms)]
        else:
            regions = sorted((r for r in inputs.regions if inputs.rtt(origin, r) <= budget_ms),
                             key=lambda r: (inputs.rtt(origin, r), r))
            reachable[(origin, budget_ms)] = regions
        shares: dict[str, float] = {}
        for region in regions:
            for sku, tp, cap in ranked.get((model, region), []):
                ikey = (model, region, sku, tp)
                have = count.get(ikey, 0)
                free_gpus = gpu_budget[(region, sku)] - used.get((region, sku), 0)
                max_instances = have + (free_gpus // tp if math.isfinite(free_gpus) else math.inf)
                room = max_instances * cap - load.get(ikey, 0.0)
                take = min(remaining, room)
                if take <= _EPS:
                    continue
                load[ikey] = load.get(ikey, 0.0) + take
                now = max(have, math.ceil(load[ikey] / cap - _EPS))
                count[ikey] = now
                used[(region, sku)] = used.get((region, sku), 0) + (now - have) * tp
                shares[region] = shares.get(region, 0.0) + take / rps
                remaining -= take
                if remaining <= _EPS * rps:
                    break
            if remaining <= _EPS * rps:
                break
        routing[key] = shares
        served = sum(shares.values())
        if served < 1.0:
            unserved[key] = 1.0 - served
    return GreedyPlan(Fleet(_vms(inputs, used), {k: n for k, n in count.items() if n}), routing, unserved)


def _ranking_price(inputs: PlanInputs, region: str, sku: str) -> float | None:
    """Price per GPU-hour the greedy ranks by, or None when the greedy cannot use this (region, SKU):
    it needs on-demand VMs unless the spot cap allows an all-spot fleet."""
    od, spot = inputs.weighed_prices(region, sku)
    if od is None:
        return spot if spot is not None and inputs.spot_share_cap >= 1.0 else None
    if spot is None or spot >= od:
        return od
    # the blend the VM split below buys, so a SKU with a deep spot discount ranks by what it really costs
    cap = inputs.spot_share_cap
    return cap * spot + (1 - cap) * od


def _vms(inputs: PlanInputs, used: dict[RegionSku, int]) -> dict[VmKey, int]:
    skus = inputs.sku_by_name()
    vms: dict[VmKey, int] = {}
    for (region, sku), gpus in sorted(used.items()):
        n = math.ceil(gpus / skus[sku].gpus_per_vm)
        if n == 0:
            continue
        od, spot = inputs.weighed_prices(region, sku)
        if od is None:
            n_spot = n
        elif spot is None or spot >= od:
            n_spot = 0
        else:
            n_spot = math.floor(inputs.spot_share_cap * n + _EPS)
        if n_spot:
            vms[(region, sku, Purchase.SPOT)] = n_spot
        if n - n_spot:
            vms[(region, sku, Purchase.ON_DEMAND)] = n - n_spot
    return vms

