"""Solve time and cost of the multi-region MIP planner (`opscale.planning.milp`) on a seeded instance.

The instance comes from `opscale.planning.milp.synthetic` (see there): --demand sageserve (default) is
SageServe's scale, O(10-100) instances per model x region; --demand small is the stress case where most
demands are a fraction of one instance; report the two separately. Solves it within the time limit
(everything included: `solve_s`, of which `build_s` before the solver started), and compares with the
greedy plan (the fallback) built in the same run. With --check-optimal it also solves to a zero gap over
all regions with a long limit and reports how far the answer was from the optimum. Prints one JSON
object as its last line.

    python bench/planner_solve.py --regions 3 --models 4 --skus 3 --time-limit 1 --check-optimal
    python bench/planner_solve.py --regions 20 --models 50 --skus 6 --time-limit 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine  # noqa: E402

from opscale.model import Purchase  # noqa: E402
from opscale.planning.milp import solve_plan  # noqa: E402
from opscale.planning.milp.candidates import DEFAULT_MAX_SERVING_REGIONS  # noqa: E402
from opscale.planning.milp.check import evaluate_costs, violations  # noqa: E402
from opscale.planning.milp.greedy import greedy_plan  # noqa: E402
from opscale.planning.milp.inputs import PlanInputs, PlanSolution  # noqa: E402
from opscale.planning.milp.synthetic import DemandProfile, synthetic_instance  # noqa: E402


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
    parser.add_argument("--demand", choices=[p.value for p in DemandProfile], default=DemandProfile.SAGESERVE.value,
                        help="sageserve: O(10-100) instances per model x region; small: fractions of one instance")
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds, everything included")
    parser.add_argument("--solver", default="SCIP", help="SCIP or HIGHS")
    parser.add_argument("--max-serving-regions", type=int, default=DEFAULT_MAX_SERVING_REGIONS,
                        help="candidate regions per demand (0: all within the RTT budget)")
    parser.add_argument("--check-optimal", action="store_true",
                        help="also solve to a zero gap over all regions and report the distance to the optimum")
    parser.add_argument("--optimal-limit", type=float, default=300.0, help="seconds for the zero-gap solve")
    ns = parser.parse_args()

    t0 = time.perf_counter()
    try:
        inputs = synthetic_instance(ns.regions, ns.models, ns.skus, ns.seed, ns.demand)
    except ValueError as exc:
        raise SystemExit(f"planner_solve: {exc}") from None
    instance_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    greedy = greedy_plan(inputs)
    greedy_s = time.perf_counter() - t0
    greedy_costs = evaluate_costs(inputs, greedy.fleet, greedy.routing, greedy.unserved_share, None)
    t0 = time.perf_counter()
    solution = solve_plan(inputs, None, ns.time_limit, ns.solver, max_serving_regions=ns.max_serving_regions or None)
    wall_s = time.perf_counter() - t0
    result: dict[str, object] = {
        "benchmark": "planner_solve", "regions": ns.regions, "models": ns.models, "skus": ns.skus, "seed": ns.seed,
        "demand_profile": ns.demand, "solver": ns.solver, "time_limit_s": ns.time_limit,
        "max_serving_regions": ns.max_serving_regions or None,
        "demand_entries": sum(1 for v in inputs.demand_rps.values() if v > 0),
        "demand_rps": round(sum(inputs.demand_rps.values()), 3),
        "instance_s": round(instance_s, 3), "wall_s": round(wall_s, 4), "build_s": round(solution.build_s, 4),
        **summary(inputs, solution),
        "baseline": {"name": "greedy (cheapest capacity per req/s first, local routing first)",
                     "solve_s": round(greedy_s, 4), "objective_usd_per_h": round(greedy_costs.total_usd_per_h, 3),
                     "gpu_cost_usd_per_h": round(greedy_costs.gpu_usd_per_h, 3),
                     "unserved_rps": round(sum(inputs.demand_rps[k] * s for k, s in greedy.unserved_share.items()), 4)},
        "saving_vs_greedy": round(1 - solution.objective_usd_per_h / greedy_costs.total_usd_per_h, 4),
    }
    if ns.check_optimal:
        exact = solve_plan(inputs, None, ns.optimal_limit, ns.solver, relative_gap=0.0, max_serving_regions=None)
        best = min(exact.objective_usd_per_h, solution.objective_usd_per_h)
        bound = exact.objective_usd_per_h * (1 - exact.gap) if exact.gap is not None else None
        result["optimum"] = {"status": exact.status.value, "solve_s": round(exact.solve_s, 3),
                             "objective_usd_per_h": round(exact.objective_usd_per_h, 3),
                             "gap": None if exact.gap is None else round(exact.gap, 6),
                             "lower_bound_usd_per_h": None if bound is None else round(bound, 3)}
        # against the best plan known; when the zero-gap solve did not finish, the excess over its proven
        # lower bound is the most the answer can be above the true optimum
        result["excess_over_optimum"] = round(solution.objective_usd_per_h / best - 1, 5)
        if bound:
            result["excess_over_bound"] = round(solution.objective_usd_per_h / bound - 1, 5)
    result["machine"] = machine()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
