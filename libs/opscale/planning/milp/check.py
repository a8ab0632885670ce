"""Cost and feasibility of a planner answer, computed from the inputs alone.

The MIP, the greedy plan and the tests all judge a fleet with these two functions, so the objective a
solution reports means the same whichever path produced it, and "valid plan" has one definition:
`violations(...)` returns a human-readable line per broken constraint (empty list: valid).

Change cost (see `ObjectiveWeights`), worked example: one region, SKU of 8 GPUs/VM at $1/GPU-h, boot
180 s; the previous fleet ran 1 VM with 8 x tp1 instances of model a; the new fleet runs 2 VMs with 8 of
a and 8 of b (cold load 60 s, warm 10 s). The 8 a instances are kept; the kept VM has no free GPU, so b
loads cold on the fresh VM: 8 GPUs x 180 s boot + 8 x 60 s load = 1920 GPU-s = $0.533, spread over a
3600 s horizon: $0.533/h. Had a's demand gone, b would load warm onto a's VM: 8 x 10 s = $0.022/h.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from opscale.model import Purchase
from opscale.planning.milp.inputs import CostBreakdown, DemandKey, Fleet, InstanceKey, PlanInputs, RegionSku

FEASIBILITY_TOLERANCE = 1e-6


def evaluate_costs(inputs: PlanInputs, fleet: Fleet, routing: dict[DemandKey, dict[str, float]] | None,
                   unserved_share: dict[DemandKey, float], previous: Fleet | None) -> CostBreakdown:
    """The objective of `fleet` with this routing, term by term (USD/h)."""
    skus = inputs.sku_by_name()
    tiers = inputs.tier_by_name()
    gpu = sum(n * skus[sku].gpus_per_vm * inputs.prices_usd_per_gpu_h[(region, sku, purchase)]
              for (region, sku, purchase), n in fleet.vm_counts.items() if n)
    risk = sum(n * skus[sku].gpus_per_vm * inputs.preemption_risk(region, sku, purchase)
               for (region, sku, purchase), n in fleet.vm_counts.items() if n)
    rtt_penalty = 0.0
    for (model, origin, tier), shares in (routing or {}).items():
        rps = inputs.demand_rps.get((model, origin, tier), 0.0)
        for region, share in shares.items():
            rtt_penalty += rps * share * inputs.rtt(origin, region) * tiers[tier].rtt_penalty_usd_per_rps_ms_h
    penalty = inputs.unserved_penalty()
    unserved = sum(inputs.demand_rps[key] * share * penalty * tiers[key[2]].unserved_weight
                   for key, share in unserved_share.items())
    change = change_detail(inputs, fleet, previous or Fleet())
    return CostBreakdown(gpu, change.usd_per_h, rtt_penalty, unserved, change.cold_gpus, change.warm_gpus, risk)


@dataclass(frozen=True, slots=True)
class ChangeDetail:
    """How a fleet differs from the previous one: instances (re)loading per key, how many of those load
    warm, and the amortised cost (USD/h) of the GPU-seconds spent booting and loading."""

    new_instances: dict[InstanceKey, float]
    warm_instances: dict[InstanceKey, float]
    usd_per_h: float
    cold_gpus: float
    warm_gpus: float


def change_detail(inputs: PlanInputs, fleet: Fleet, previous: Fleet) -> ChangeDetail:
    """Instances kept cost nothing; new ones load warm on GPUs of kept VMs that kept instances leave
    free (the largest saving per GPU first), the rest cold; fresh VMs pay their boot time. Instances
    kept on VMs that went away reload cold (the quickest loaders first)."""
    skus = inputs.sku_by_name()
    models = {m.name: m for m in inputs.models}
    gpu_s: dict[RegionSku, float] = {}
    kept_vm_gpus: dict[RegionSku, int] = {}
    for key in set(fleet.vm_counts) | set(previous.vm_counts):
        region, sku, _ = key
        now, before = fleet.vm_counts.get(key, 0), previous.vm_counts.get(key, 0)
        kept_vm_gpus[(region, sku)] = kept_vm_gpus.get((region, sku), 0) + min(now, before) * skus[sku].gpus_per_vm
        fresh = max(0, now - before) * skus[sku].gpus_per_vm
        gpu_s[(region, sku)] = gpu_s.get((region, sku), 0.0) + fresh * skus[sku].vm_boot_s
    kept: dict[InstanceKey, float] = {}
    new: dict[InstanceKey, float] = {}
    for key, now in fleet.instances.items():
        kept[key] = min(now, previous.instances.get(key, 0))
        new[key] = now - kept[key]
    by_region_sku: dict[RegionSku, list[InstanceKey]] = {}
    for key in fleet.instances:
        by_region_sku.setdefault((key[1], key[2]), []).append(key)
    warm: dict[InstanceKey, float] = {}
    cold_total = warm_total = 0.0
    for region_sku, keys in sorted(by_region_sku.items()):
        free = kept_vm_gpus.get(region_sku, 0) - sum(kept[k] * k[3] for k in keys)
        for key in sorted(keys, key=lambda k: (models[k[0]].cold_load_s, k)):
            if free >= 0:
                break
            moved = min(kept[key], math.ceil(-free / key[3]))
            kept[key] -= moved
            new[key] += moved
            free += moved * key[3]
        for key in sorted(keys, key=lambda k: (models[k[0]].warm_load_s - models[k[0]].cold_load_s, k)):
            spec, tp = models[key[0]], key[3]
            w = min(new[key], max(0.0, free) / tp)
            free -= w * tp
            warm[key] = w
            cold_total += (new[key] - w) * tp
            warm_total += w * tp
            gpu_s[region_sku] = gpu_s.get(region_sku, 0.0) + tp * (w * spec.warm_load_s + (new[key] - w) * spec.cold_load_s)
    # price per GPU-hour x GPU-seconds x weight / horizon: the one-off dollars (GPU-s x price / 3600)
    # spread over the horizon in hours (horizon_s / 3600)
    weighted = sum(seconds * inputs.reference_price(*region_sku) for region_sku, seconds in gpu_s.items())
    per_h = weighted * inputs.weights.change_cost_weight / inputs.weights.plan_horizon_s
    return ChangeDetail({k: v for k, v in new.items() if v}, {k: v for k, v in warm.items() if v},
                        per_h, cold_total, warm_total)


def violations(inputs: PlanInputs, fleet: Fleet, routing: dict[DemandKey, dict[str, float]],
               unserved_share: dict[DemandKey, float], tol: float = FEASIBILITY_TOLERANCE) -> list[str]:
    """Every constraint the plan breaks, one line each; an empty list means the plan is valid."""
    problems: list[str] = []
    skus, tiers, options = inputs.sku_by_name(), inputs.tier_by_name(), inputs.options()
    vm_gpus: dict[RegionSku, int] = {}
    spot_gpus: dict[str, int] = {}
    all_gpus: dict[str, int] = {}
    for key, n in fleet.vm_counts.items():
        region, sku, purchase = key
        if not isinstance(n, int) or n < 0:
            problems.append(f"vm_counts{key!r} = {n!r} is not a non-negative integer")
            continue
        if n and key not in inputs.prices_usd_per_gpu_h:
            problems.append(f"vm_counts{key!r} = {n}: not offered (no price)")
        gpus = n * skus[sku].gpus_per_vm
        vm_gpus[(region, sku)] = vm_gpus.get((region, sku), 0) + gpus
        all_gpus[region] = all_gpus.get(region, 0) + gpus
        if purchase == Purchase.SPOT:
            spot_gpus[region] = spot_gpus.get(region, 0) + gpus
    for region_sku, gpus in vm_gpus.items():
        quota = inputs.quotas_gpus.get(region_sku)
        if quota is not None and gpus > quota:
            problems.append(f"quota {region_sku!r}: {gpus} GPUs > {quota}")
    cap = inputs.spot_share_cap
    scopes = (list(all_gpus) if inputs.spot_cap_scope == "region" else ["*"])
    for scope in scopes:
        spot = sum(spot_gpus.values()) if scope == "*" else spot_gpus.get(scope, 0)
        total = sum(all_gpus.values()) if scope == "*" else all_gpus.get(scope, 0)
        if spot > cap * total + tol:
            problems.append(f"spot cap ({inputs.spot_cap_scope} {scope}): {spot} spot GPUs > {cap} x {total}")
    inst_gpus: dict[RegionSku, int] = {}
    capacity: dict[tuple[str, str], float] = {}
    for key, n in fleet.instances.items():
        model, region, sku, tp = key
        if not isinstance(n, int) or n < 0:
            problems.append(f"instances{key!r} = {n!r} is not a non-negative integer")
            continue
        if n and (model, sku, tp) not in options:
            problems.append(f"instances{key!r}: ({model}, {sku}, tp={tp}) is not an offered option")
            continue
        inst_gpus[(region, sku)] = inst_gpus.get((region, sku), 0) + n * tp
        capacity[(model, region)] = capacity.get((model, region), 0.0) + n * options.get((model, sku, tp), 0.0)
    for region_sku, gpus in inst_gpus.items():
        if gpus > vm_gpus.get(region_sku, 0):
            problems.append(f"GPUs {region_sku!r}: instances need {gpus} > {vm_gpus.get(region_sku, 0)} on VMs")
    interactive: dict[tuple[str, str], float] = {}
    deferrable: dict[tuple[str, str], float] = {}
    for key, rps in inputs.demand_rps.items():
        if rps <= 0:
            continue
        model, origin, tier = key
        shares = routing.get(key, {})
        total = sum(shares.values()) + unserved_share.get(key, 0.0)
        if abs(total - 1.0) > 1e-6:
            problems.append(f"routing{key!r}: shares + unserved sum to {total:.9f}, not 1")
        for region, share in shares.items():
            if share < -tol:
                problems.append(f"routing{key!r}[{region!r}] = {share} is negative")
            if share > tol and inputs.rtt(origin, region) > tiers[tier].rtt_budget_ms:
                problems.append(f"routing{key!r}[{region!r}]: RTT {inputs.rtt(origin, region)} ms over the "
                                f"{tier} budget {tiers[tier].rtt_budget_ms} ms")
            bucket = deferrable if tiers[tier].deferrable else interactive
            bucket[(model, region)] = bucket.get((model, region), 0.0) + rps * share
    rho = inputs.interactive_mean_to_quantile
    for model_region in set(interactive) | set(deferrable):
        load_i, load_b = interactive.get(model_region, 0.0), deferrable.get(model_region, 0.0)
        cap_rps = capacity.get(model_region, 0.0)
        slack = tol * max(1.0, cap_rps)
        if load_i > cap_rps + slack or rho * load_i + load_b > cap_rps + slack:
            problems.append(f"capacity {model_region!r}: {cap_rps:.4f} req/s < interactive {load_i:.4f} "
                            f"(+ deferrable {load_b:.4f} at rho={rho})")
    return problems
