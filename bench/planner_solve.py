"""Solve time and cost of the multi-region MIP planner (`opscale.planning.milp`) on a seeded instance.

Builds a random but realistic instance: SKUs from the catalogue (list prices scaled per region, spot
offered in most places, GPU quotas in whole VMs, some SKUs missing in some regions), models from the
catalogue cycled under new names with per-instance capacity from the perf model at a 100 ms TBT SLO,
regions on a plane with RTT growing with distance, and demand per model x region x tier (an interactive
tier with a 40 ms RTT budget, a normal one with 120 ms, a deferrable batch tier with none). Solves it
with the time limit, and compares with the greedy plan (the fallback) built in the same run. With
--check-optimal it also solves to a zero gap with a long limit and reports how far the answer was from
the optimum. Prints one JSON object as its last line.

    python bench/planner_solve.py --regions 3 --models 4 --skus 3 --check-optimal
    python bench/planner_solve.py --regions 20 --models 50 --skus 6 --time-limit 10
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine  # noqa: E402

from opscale.model import Purchase  # noqa: E402
from opscale.perf import load_catalog  # noqa: E402
from opscale.planning.capacity import CapacityEstimator  # noqa: E402
from opscale.planning.milp import solve_plan  # noqa: E402
from opscale.planning.milp_catalog import capacity_table, planned_model, sku_specs  # noqa: E402
from opscale.planning.milp_check import evaluate_costs, violations  # noqa: E402
from opscale.planning.milp_greedy import greedy_plan  # noqa: E402
from opscale.planning.milp_inputs import PlanInputs, PlanSolution, TierSpec  # noqa: E402

# the cheaper, commonly rented SKUs first, so small instances use the usual ones
SKU_ORDER = ("A100-80GB", "H100-80GB", "L40S", "H200", "A10G", "L20", "H20")
TIERS = (TierSpec("interactive", rtt_budget_ms=40.0, unserved_weight=3.0),
         TierSpec("normal", rtt_budget_ms=120.0, unserved_weight=2.0),
         TierSpec("batch", deferrable=True, rtt_penalty_usd_per_rps_ms_h=1e-4))
TIER_MIX = {"interactive": 0.5, "normal": 0.3, "batch": 0.2}


def build_instance(regions: int, models: int, skus: int, seed: int) -> PlanInputs:
    rng = random.Random(seed)
    catalog = load_catalog()
    if not 1 <= skus <= len(SKU_ORDER):
        raise SystemExit(f"--skus must be in 1..{len(SKU_ORDER)}")
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
    capacity = capacity_table(CapacityEstimator(catalog, tbt_budget_s=0.1), planned, names, sku_list)

    demand: dict[tuple[str, str, str], float] = {}
    for n in planned:
        best = max((rate for (m, _, _), rate in capacity.items() if m == n), default=1.0)
        popularity = rng.lognormvariate(0.0, 0.8)
        for r in region_names:
            if rng.random() < 0.35:  # a model is not used everywhere
                continue
            rps = best * popularity * rng.uniform(0.2, 1.5)
            for tier, fraction in TIER_MIX.items():
                demand[(n, r, tier)] = round(rps * fraction, 3)
    return PlanInputs(region_names, sku_list, tuple(planned.values()), TIERS, prices, capacity, demand,
                      quotas_gpus=quotas, rtt_ms=rtt)


def summary(inputs: PlanInputs, solution: PlanSolution) -> dict[str, object]:
    gpus = sum(n * inputs.sku(s).gpus_per_vm for (_, s, _), n in solution.vm_counts.items())
    spot = sum(n * inputs.sku(s).gpus_per_vm for (_, s, p), n in solution.vm_counts.items() if p == Purchase.SPOT)
    return {
        "status": solution.status.value, "solve_s": round(solution.solve_s, 4),
        "gap": None if solution.gap is None else round(solution.gap, 5),
        "objective_usd_per_h": round(solution.objective_usd_per_h, 3),
        "gpu_cost_usd_per_h": round(solution.costs.gpu_usd_per_h, 3),
        "change_cost_usd_per_h": round(solution.costs.change_usd_per_h, 3),
        "rtt_penalty_usd_per_h": round(solution.costs.rtt_penalty_usd_per_h, 3),
        "unserved_rps": round(sum(solution.unserved_rps(inputs).values()), 4),
        "vms": sum(solution.vm_counts.values()), "gpus": gpus, "spot_gpus": spot,
        "instances": sum(solution.instances.values()),
        "variables": solution.variables, "constraints": solution.constraints,
        "valid": not violations(inputs, solution.fleet, dict(solution.routing), dict(solution.unserved_share)),
        "reason": solution.reason,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regions", type=int, default=3)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--skus", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds, model building included")
    parser.add_argument("--solver", default="SCIP", help="SCIP or HIGHS")
    parser.add_argument("--check-optimal", action="store_true",
                        help="also solve to a zero gap (up to 120 s) and report the distance to the optimum")
    ns = parser.parse_args()

    inputs = build_instance(ns.regions, ns.models, ns.skus, ns.seed)
    t0 = time.perf_counter()
    greedy = greedy_plan(inputs)
    greedy_s = time.perf_counter() - t0
    greedy_costs = evaluate_costs(inputs, greedy.fleet, greedy.routing, greedy.unserved_share, None)
    solution = solve_plan(inputs, None, ns.time_limit, ns.solver)
    result: dict[str, object] = {
        "benchmark": "planner_solve", "regions": ns.regions, "models": ns.models, "skus": ns.skus, "seed": ns.seed,
        "solver": ns.solver, "time_limit_s": ns.time_limit,
        "demand_entries": sum(1 for v in inputs.demand_rps.values() if v > 0),
        "demand_rps": round(sum(inputs.demand_rps.values()), 3),
        **summary(inputs, solution),
        "baseline": {"name": "greedy (cheapest capacity per req/s first, local routing first)",
                     "solve_s": round(greedy_s, 4), "objective_usd_per_h": round(greedy_costs.total_usd_per_h, 3),
                     "gpu_cost_usd_per_h": round(greedy_costs.gpu_usd_per_h, 3),
                     "unserved_rps": round(sum(inputs.demand_rps[k] * s for k, s in greedy.unserved_share.items()), 4)},
        "saving_vs_greedy": round(1 - solution.objective_usd_per_h / greedy_costs.total_usd_per_h, 4),
    }
    if ns.check_optimal:
        exact = solve_plan(inputs, None, 120.0, ns.solver, relative_gap=0.0)
        result["optimum"] = {"status": exact.status.value, "solve_s": round(exact.solve_s, 3),
                             "objective_usd_per_h": round(exact.objective_usd_per_h, 3),
                             "gap": None if exact.gap is None else round(exact.gap, 6)}
        result["excess_over_optimum"] = round(solution.objective_usd_per_h / exact.objective_usd_per_h - 1, 5)
    result["machine"] = machine()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
