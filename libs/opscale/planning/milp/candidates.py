"""Which regions may serve each demand: the routing choices the MIP planner and its greedy plan consider.

A demand (model, origin, tier) may go to any region within the tier's RTT budget that offers a SKU able
to run the model. With many regions that is most of them for loose budgets (20 regions x 50 models x 3
tiers: ~50k routing variables), which makes the model slow to build and hard to search while the far,
dear regions almost never serve. So each demand keeps at most `max_regions` candidates: its own region
(when eligible) and the others ranked by an estimated cost per req/s, the cheapest option's GPU cost
there plus the RTT penalty of going there. Example: origin "a" (local $0.60 per req/s-h), "b" 10 ms
away at $0.50, "c" 30 ms away at $0.70, penalty $0.001 per req/s-ms-h, max_regions=2 -> ["a", "b"]
(b costs 0.51, c 0.73). `max_regions=None` keeps every eligible region (exact). The default, 5, keeps
every region of a SageServe-size fleet (3 regions) and, at 20 regions x 50 models, an LP relaxation that
GLOP's dual simplex solves in 1-2 s on a busy 2-core machine (all 20: 3-6 s, most of the planner's
budget, for a 2.5% lower bound; 4: 0.6 s but 3.4% dearer).

Pure: derived from `PlanInputs` alone.
"""

from __future__ import annotations

from opscale.model import Purchase
from opscale.planning.milp.inputs import DemandKey, PlanInputs

DEFAULT_MAX_SERVING_REGIONS = 5


def serving_regions(inputs: PlanInputs, max_regions: int | None = DEFAULT_MAX_SERVING_REGIONS
                    ) -> dict[DemandKey, tuple[str, ...]]:
    """Candidate serving regions per demand with a positive rate, nearest first."""
    if max_regions is not None and max_regions < 1:
        raise ValueError(f"max_regions must be at least 1 (or None for all), got {max_regions!r}")
    tiers = inputs.tier_by_name()
    per_rps = _cheapest_per_rps(inputs)
    out: dict[DemandKey, tuple[str, ...]] = {}
    for key, rps in inputs.demand_rps.items():
        if rps <= 0:
            continue
        model, origin, tier = key
        spec = tiers[tier]
        eligible = [(inputs.rtt(origin, r), r) for r in inputs.regions
                    if (model, r) in per_rps and inputs.rtt(origin, r) <= spec.rtt_budget_ms]
        if max_regions is not None and len(eligible) > max_regions:
            # the origin first (cost -inf), then the cheapest estimated cost per req/s
            ranked = sorted(eligible, key=lambda e: (-1.0 if e[1] == origin else
                                                     per_rps[(model, e[1])] + e[0] * spec.rtt_penalty_usd_per_rps_ms_h,
                                                     e[0], e[1]))
            eligible = ranked[:max_regions]
        out[key] = tuple(r for _, r in sorted(eligible))
    return out


def _cheapest_per_rps(inputs: PlanInputs) -> dict[tuple[str, str], float]:
    """(model, region) -> lowest GPU cost (USD/h) of one req/s over the offered options there, at the
    cheaper purchase type (a lower bound: the spot cap may forbid all-spot)."""
    skus = inputs.sku_by_name()
    cheapest_gpu: dict[tuple[str, str], float] = {}
    for (region, sku, purchase) in inputs.prices_usd_per_gpu_h:
        price = inputs.effective_price((region, sku, purchase))
        quota = inputs.quotas_gpus.get((region, sku))
        if quota is not None and quota < skus[sku].gpus_per_vm:  # not one whole VM allowed
            continue
        if purchase == Purchase.SPOT and inputs.spot_share_cap <= 0.0:
            continue
        cheapest_gpu[(region, sku)] = min(price, cheapest_gpu.get((region, sku), price))
    out: dict[tuple[str, str], float] = {}
    for (model, sku, tp), cap in inputs.options().items():
        for region in inputs.regions:
            price = cheapest_gpu.get((region, sku))
            if price is not None:
                cost = price * tp / cap
                out[(model, region)] = min(cost, out.get((model, region), cost))
    return out
