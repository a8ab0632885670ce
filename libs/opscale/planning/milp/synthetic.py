"""A seeded synthetic instance of the multi-region MIP planner, for its benchmark and its tests.

SKUs from the perf catalogue (list prices scaled by 0.9-1.25 per region, spot offered in ~70% of places,
some SKUs missing in some regions), models from the catalogue cycled under new names with per-instance
capacity from the perf model at a 100 ms TBT SLO, regions on a 100 x 60 ms plane with RTT growing with
distance, and three tiers: interactive (40 ms RTT budget), normal (120 ms) and a deferrable batch tier
(no budget), in a 50/30/20 mix, as SageServe's IW-F / IW-N / NIW.

Two demand profiles (`DemandProfile`):
- SAGESERVE, SageServe's scale: every model in every region at a peak of O(10-100) instances of its
  cheapest option per req/s (median 30, clamped to 8-120), GPU quotas in proportion to each region's
  need, so quotas bind on some SKUs and some demand spills to neighbours.
- SMALL, the stress case: a model is absent from 35% of the regions and elsewhere needs 0.2-1.5x its
  largest instance, often a fraction of one, with quotas of 4-24 VMs per SKU. Rounding then dominates
  the cost and the LP relaxation is far (~9%) below the optimum, so it is much harder to prove.

No I/O beyond loading the packaged catalogue; the same seed gives the same instance.
"""

from __future__ import annotations

import math
import random
from enum import StrEnum

from opscale.model import DEFAULT_TIERS, Purchase, latency_objective
from opscale.perf import Catalog, load_catalog
from opscale.planning.capacity import CapacityEstimator
from opscale.planning.milp.catalog import capacity_table, planned_model, sku_specs
from opscale.planning.milp.inputs import DemandKey, OptionKey, PlanInputs, PlannedModel, TierSpec


class DemandProfile(StrEnum):
    SAGESERVE = "sageserve"
    SMALL = "small"


# the cheaper, commonly rented SKUs first, so small instances use the usual ones
SKU_ORDER = ("A100-80GB", "H100-80GB", "L40S", "H200", "A10G", "L20", "H20")
TIERS = (TierSpec("interactive", rtt_budget_ms=40.0, unserved_weight=3.0),
         TierSpec("normal", rtt_budget_ms=120.0, unserved_weight=2.0),
         TierSpec("batch", deferrable=True, rtt_penalty_usd_per_rps_ms_h=1e-4))
TIER_MIX = {"interactive": 0.5, "normal": 0.3, "batch": 0.2}
SAGESERVE_MEDIAN_INSTANCES = 30.0
SAGESERVE_INSTANCES = (8.0, 120.0)  # clamp of the peak instances per model x region


def synthetic_instance(regions: int, models: int, skus: int, seed: int,
                       profile: DemandProfile | str = DemandProfile.SAGESERVE) -> PlanInputs:
    """`regions` x `models` x `skus` planner inputs drawn from `seed` (see the module docstring)."""
    profile = DemandProfile(profile)
    if not 1 <= skus <= len(SKU_ORDER):
        raise ValueError(f"skus must be in 1..{len(SKU_ORDER)}, got {skus}")
    if regions < 1 or models < 1:
        raise ValueError(f"regions and models must be at least 1, got {regions} and {models}")
    rng = random.Random(seed)
    catalog = load_catalog()
    sku_names = SKU_ORDER[:skus]
    sku_list = sku_specs(catalog, sku_names)
    region_names = tuple(f"r{i:02d}" for i in range(regions))
    where = {r: (rng.uniform(0, 100), rng.uniform(0, 60)) for r in region_names}  # ms of RTT per unit
    rtt = {(a, b): round(2.0 + math.dist(where[a], where[b]), 1)
           for a in region_names for b in region_names if a != b}

    prices: dict[tuple[str, str, Purchase], float] = {}
    quotas: dict[tuple[str, str], int] = {}
    for r in region_names:
        scale = rng.uniform(0.9, 1.25)
        for i, s in enumerate(sku_names):
            if i > 0 and rng.random() < 0.15:  # not every SKU in every region; the first one always
                continue
            gpu = catalog.sku(s)
            prices[(r, s, Purchase.ON_DEMAND)] = round(gpu.price_usd_per_h * scale, 3)
            if rng.random() < 0.7:
                prices[(r, s, Purchase.SPOT)] = round(gpu.spot_price_usd_per_h * scale * rng.uniform(0.9, 1.2), 3)
            quotas[(r, s)] = gpu.gpus_per_vm * rng.randint(4, 24)

    base_names = catalog.model_names
    names = {f"{base_names[i % len(base_names)]}#{i}": base_names[i % len(base_names)] for i in range(models)}
    planned = {n: planned_model(catalog, base, name=n) for n, base in names.items()}
    capacity = capacity_table(CapacityEstimator(catalog, latency_objective(DEFAULT_TIERS).tbt_slo_s), planned, names,
                              sku_list)

    if profile == DemandProfile.SAGESERVE:
        demand = _sageserve_demand(rng, planned, region_names, capacity, catalog)
        quotas = _scale_quotas(quotas, demand, capacity, catalog)
    else:
        demand = _small_demand(rng, planned, region_names, capacity)
    return PlanInputs(region_names, sku_list, tuple(planned.values()), TIERS, prices, capacity, demand,
                      quotas_gpus=quotas, rtt_ms=rtt)


def _sageserve_demand(rng: random.Random, planned: dict[str, PlannedModel], region_names: tuple[str, ...],
                      capacity: dict[OptionKey, float], catalog: Catalog) -> dict[DemandKey, float]:
    """SageServe's scale: every model served in every region at a peak of O(10-100) instances of its
    cheapest option per req/s (median about 30; a lognormal popularity per model, a regional factor)."""
    demand: dict[DemandKey, float] = {}
    for n in planned:
        sku, tp = _reference_option(n, capacity, catalog)
        popularity = rng.lognormvariate(0.0, 0.6)
        for r in region_names:
            instances = min(SAGESERVE_INSTANCES[1], max(SAGESERVE_INSTANCES[0],
                                                        SAGESERVE_MEDIAN_INSTANCES * popularity * rng.uniform(0.6, 1.4)))
            rps = instances * capacity[(n, sku, tp)]
            for tier, fraction in TIER_MIX.items():
                demand[(n, r, tier)] = round(rps * fraction, 3)
    return demand


def _reference_option(model: str, capacity: dict[OptionKey, float], catalog: Catalog) -> tuple[str, int]:
    """The (SKU, tp) with the lowest list price per req/s for `model`."""
    per_rps = {(s, tp): catalog.sku(s).price_usd_per_h * tp / rate for (m, s, tp), rate in capacity.items() if m == model}
    return min(per_rps, key=per_rps.__getitem__)


def _scale_quotas(quotas: dict[tuple[str, str], int], demand: dict[DemandKey, float], capacity: dict[OptionKey, float],
                  catalog: Catalog) -> dict[tuple[str, str], int]:
    """Quotas in proportion to each region's need (GPUs of its demand on the reference options): the
    drawn 4-24 VMs become 1/6-1x of 1.5x that need per SKU, so some SKUs are scarce and some regions
    spill over to their neighbours, as at SageServe's scale quotas bind but do not strand demand."""
    reference = {model: _reference_option(model, capacity, catalog) for model, _, _ in demand}
    need: dict[str, float] = {}
    for (model, region, _), rps in demand.items():
        sku, tp = reference[model]
        need[region] = need.get(region, 0.0) + rps / capacity[(model, sku, tp)] * tp
    out: dict[tuple[str, str], int] = {}
    for (region, sku), quota in quotas.items():
        gpv = catalog.sku(sku).gpus_per_vm
        out[(region, sku)] = gpv * math.ceil(quota / gpv / 24 * 1.5 * need.get(region, 0.0) / gpv)
    return out


def _small_demand(rng: random.Random, planned: dict[str, PlannedModel], region_names: tuple[str, ...],
                  capacity: dict[OptionKey, float]) -> dict[DemandKey, float]:
    """The stress case (the generator before issue #7): a model is absent from 35% of the regions and
    elsewhere needs 0.2-1.5x its largest instance, often a fraction of one, so rounding dominates."""
    demand: dict[DemandKey, float] = {}
    for n in planned:
        best = max((rate for (m, _, _), rate in capacity.items() if m == n), default=1.0)
        popularity = rng.lognormvariate(0.0, 0.8)
        for r in region_names:
            if rng.random() < 0.35:  # a model is not used everywhere
                continue
            rps = best * popularity * rng.uniform(0.2, 1.5)
            for tier, fraction in TIER_MIX.items():
                demand[(n, r, tier)] = round(rps * fraction, 3)
    return demand
