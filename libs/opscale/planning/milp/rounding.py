"""A plan from the MIP's LP relaxation: keep its routing, round its instances up, repack the VMs.

The LP relaxation already makes the plan's global trade-offs (which regions and SKUs, how much remote
routing, where spot pays); at SageServe's scale (tens of instances per model x region) rounding it
loses about one instance per model x region and one VM per region x SKU, so the rounded plan is
typically within 1-2% of the optimum, far closer than the greedy plan, and makes a strong hint.

Steps, all deterministic:
1. routing: the LP's shares as they are; each (model, region) needs capacity for the interactive load
   I it receives and rho*I + B with the deferrable load B (the MIP's capacity rule);
2. instances: each option's LP count rounded down, then the shortfall covered by rounding up options in
   order of their LP fraction (largest first: the ones the LP nearly bought), then by lowest GPU cost
   per req/s, within the quota's GPUs left in whole VMs;
3. VMs: the instances' GPUs per (region, SKU) in whole VMs; spot for as many as the spot cap allows,
   largest saving per GPU first (spot-only offers first, as they have no choice).
Where a quota leaves a model short in a region, load moves to the demand's other candidate regions with
spare rounded capacity, else to unserved. Returns None when a step cannot hold a constraint (forced
spot breaks the cap): the caller keeps its other hint. Pure: no solver and no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from opscale.model import Purchase
from opscale.planning.milp.greedy import GreedyPlan
from opscale.planning.milp.inputs import DemandKey, Fleet, InstanceKey, PlanInputs, RegionSku, VmKey

_EPS = 1e-6


def rounded_plan(inputs: PlanInputs, lp_instances: Mapping[InstanceKey, float],
                 routing: dict[DemandKey, dict[str, float]], unserved: dict[DemandKey, float],
                 serving: Mapping[DemandKey, tuple[str, ...]]) -> GreedyPlan | None:
    """A whole-instance, whole-VM plan serving the LP's `routing`, or None (see module doc)."""
    need = _capacity_needed(inputs, routing)
    instances = _round_instances(inputs, lp_instances, need)
    if instances is None:
        return None
    routing, unserved = _reroute_shortfalls(inputs, instances, routing, unserved, serving)
    vms = _pack_vms(inputs, instances)
    if vms is None:
        return None
    return GreedyPlan(Fleet(vms, {k: n for k, n in instances.items() if n}), routing, unserved)


def _reroute_shortfalls(inputs: PlanInputs, instances: dict[InstanceKey, int],
                        routing: dict[DemandKey, dict[str, float]], unserved: dict[DemandKey, float],
                        serving: Mapping[DemandKey, tuple[str, ...]]
                        ) -> tuple[dict[DemandKey, dict[str, float]], dict[DemandKey, float]]:
    """Where a quota kept the rounding short of the LP's load, move load off to the demand's other
    candidate regions that have spare rounded capacity (deferrable work first), and what fits nowhere to
    unserved. Example: (x, a) holds 8 instances of 10 req/s but the LP sent it 82 req/s of interactive
    work; 2 req/s move to a candidate b whose rounded-up capacity has 5 req/s spare."""
    options, tiers, rho = inputs.options(), inputs.tier_by_name(), inputs.interactive_mean_to_quantile
    capacity: dict[tuple[str, str], float] = {}
    for (model, region, sku, tp), n in instances.items():
        capacity[(model, region)] = capacity.get((model, region), 0.0) + n * options[(model, sku, tp)]
    load_i, load_b = _loads(inputs, routing)

    def excess(mr: tuple[str, str], deferrable: bool) -> float:
        """req/s of this kind of load to take off `mr` so its capacity suffices (negative: room)."""
        cap, i, b = capacity.get(mr, 0.0), load_i.get(mr, 0.0), load_b.get(mr, 0.0)
        if deferrable:
            return rho * i + b - cap
        return max(i - cap, (rho * i + b - cap) / rho)

    def add(mr: tuple[str, str], deferrable: bool, rps: float) -> None:
        bucket = load_b if deferrable else load_i
        bucket[mr] = bucket.get(mr, 0.0) + rps

    short = sorted(mr for mr in set(load_i) | set(load_b)
                   if max(excess(mr, False), excess(mr, True)) > _EPS * max(1.0, capacity.get(mr, 0.0)))
    if not short:
        return routing, unserved
    routing = {key: dict(shares) for key, shares in routing.items()}
    unserved = dict(unserved)
    for model, region in short:
        keys = sorted((k for k, shares in routing.items() if k[0] == model and shares.get(region, 0.0) > 0),
                      key=lambda k: (not tiers[k[2]].deferrable, k))
        for key in keys:
            deferrable, rps = tiers[key[2]].deferrable, inputs.demand_rps[key]
            move = min(rps * routing[key][region], max(0.0, excess((model, region), deferrable)) * (1 + 1e-9))
            if move <= 0:
                continue
            routing[key][region] -= move / rps
            add((model, region), deferrable, -move)
            for other in serving.get(key, ()):
                room = -excess((model, other), deferrable)
                if other == region or room <= _EPS:
                    continue
                placed = min(move, room)
                routing[key][other] = routing[key].get(other, 0.0) + placed / rps
                add((model, other), deferrable, placed)
                move -= placed
                if move <= _EPS * rps:
                    break
            if move > _EPS * rps:
                unserved[key] = unserved.get(key, 0.0) + move / rps
            routing[key] = {r: sh for r, sh in routing[key].items() if sh > 1e-12}
    return routing, unserved


def _loads(inputs: PlanInputs, routing: Mapping[DemandKey, Mapping[str, float]]
           ) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], float]]:
    """(interactive, deferrable) req/s routed to each (model, region)."""
    tiers = inputs.tier_by_name()
    interactive: dict[tuple[str, str], float] = {}
    deferrable: dict[tuple[str, str], float] = {}
    for key, shares in routing.items():
        model, _, tier = key
        bucket = deferrable if tiers[tier].deferrable else interactive
        for region, share in shares.items():
            bucket[(model, region)] = bucket.get((model, region), 0.0) + share * inputs.demand_rps[key]
    return interactive, deferrable


def _capacity_needed(inputs: PlanInputs, routing: dict[DemandKey, dict[str, float]]) -> dict[tuple[str, str], float]:
    rho = inputs.interactive_mean_to_quantile
    interactive, deferrable = _loads(inputs, routing)
    return {mr: max(interactive.get(mr, 0.0), rho * interactive.get(mr, 0.0) + deferrable.get(mr, 0.0))
            for mr in set(interactive) | set(deferrable)}


def _round_instances(inputs: PlanInputs, lp_instances: Mapping[InstanceKey, float],
                     need: dict[tuple[str, str], float]) -> dict[InstanceKey, int] | None:
    """Whole instances per option covering `need` where the quota allows (shortfalls stay short), or
    None when the LP's own counts break a quota (solver tolerance)."""
    skus, options = inputs.sku_by_name(), inputs.options()
    room: dict[RegionSku, float] = {}  # GPUs the quota still allows, in whole VMs
    for (region, sku), quota in inputs.quotas_gpus.items():
        gpv = skus[sku].gpus_per_vm
        room[(region, sku)] = (quota // gpv) * gpv
    count: dict[InstanceKey, int] = {}
    by_model_region: dict[tuple[str, str], list[InstanceKey]] = {}
    for key, value in lp_instances.items():
        n = math.floor(value + _EPS)
        count[key] = n
        by_model_region.setdefault((key[0], key[1]), []).append(key)
        region_sku = (key[1], key[2])
        room[region_sku] = room.get(region_sku, math.inf) - n * key[3]
    if any(left < 0 for left in room.values()):  # the LP broke a quota: only by solver tolerance
        return None
    for model_region in sorted(need):
        short = need[model_region] * (1 - 1e-9) - sum(count[k] * options[(k[0], k[2], k[3])]
                                                      for k in by_model_region.get(model_region, []))
        if short <= _EPS:
            continue
        region = model_region[1]
        ranked = sorted(by_model_region.get(model_region, []),
                        key=lambda k: (-(lp_instances[k] - count[k]) if lp_instances[k] - count[k] > _EPS else 1.0,
                                       inputs.reference_price(region, k[2]) * k[3] / options[(k[0], k[2], k[3])], k))
        for key in ranked:
            cap, tp = options[(key[0], key[2], key[3])], key[3]
            fits = room.get((region, key[2]), math.inf) // tp
            add = min(math.ceil(short / cap - _EPS), fits)
            if add <= 0:
                continue
            count[key] += int(add)
            room[(region, key[2])] = room.get((region, key[2]), math.inf) - add * tp
            short -= add * cap
            if short <= _EPS:
                break
    return count


def _pack_vms(inputs: PlanInputs, instances: dict[InstanceKey, int]) -> dict[VmKey, int] | None:
    skus = inputs.sku_by_name()
    total_vms: dict[RegionSku, int] = {}
    gpus: dict[RegionSku, int] = {}
    for (_, region, sku, tp), n in instances.items():
        gpus[(region, sku)] = gpus.get((region, sku), 0) + n * tp
    for region_sku, g in gpus.items():
        if g:
            total_vms[region_sku] = math.ceil(g / skus[region_sku[1]].gpus_per_vm)
    scope_of = (lambda region: region) if inputs.spot_cap_scope == "region" else (lambda region: "*")
    all_gpus: dict[str, float] = {}
    for (region, sku), n in total_vms.items():
        all_gpus[scope_of(region)] = all_gpus.get(scope_of(region), 0) + n * skus[sku].gpus_per_vm
    spot_room = {scope: inputs.spot_share_cap * g + _EPS for scope, g in all_gpus.items()}
    spot: dict[RegionSku, int] = {}
    flexible: list[tuple[float, RegionSku]] = []
    for (region, sku), n in sorted(total_vms.items()):
        od, sp = inputs.weighed_prices(region, sku)
        if od is None:  # spot only: no choice
            spot[(region, sku)] = n
            spot_room[scope_of(region)] -= n * skus[sku].gpus_per_vm
        elif sp is not None and sp < od:
            flexible.append((od - sp, (region, sku)))
    if any(left < 0 for left in spot_room.values()):
        return None
    for _, (region, sku) in sorted(flexible, key=lambda f: (-f[0], f[1])):
        gpv = skus[sku].gpus_per_vm
        n = min(total_vms[(region, sku)], int(spot_room[scope_of(region)] // gpv))
        if n > 0:
            spot[(region, sku)] = n
            spot_room[scope_of(region)] -= n * gpv
    vms: dict[VmKey, int] = {}
    for region_sku, n in total_vms.items():
        n_spot = spot.get(region_sku, 0)
        if n_spot:
            vms[(*region_sku, Purchase.SPOT)] = n_spot
        if n - n_spot:
            vms[(*region_sku, Purchase.ON_DEMAND)] = n - n_spot
    return vms
