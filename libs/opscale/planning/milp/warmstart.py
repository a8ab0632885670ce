"""Plans the MIP planner starts its search from, or answers with when the full search is out of reach.

- The greedy plan (`milp.greedy`).
- The LP relaxation, rounded (`milp.rounding`), solved by GLOP on a model of its own. The LP makes the
  global trade-offs (remote routing to spot-rich or cheaper regions, spot across SKUs); at SageServe's
  scale its rounding lands 1-3% above the optimum, a far better first incumbent than the greedy plan
  (30-60% above), so the full search mostly improves and proves.
- A fleet solved for a fixed routing (the rounded LP's, else the greedy plan's): the MIP with every
  routing share fixed, for plans whose full model is too big to search in time (at 20 regions x 50
  models SCIP's root LP alone outlasts 10 s). What is left is one small problem per region (instance
  mix, VM packing, spot split).
Each runs under its own time limit and gives up (None) when it does not finish or its plan breaks a
constraint (`milp.check.violations`); the model is left as built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ortools.linear_solver import pywraplp

from opscale.planning.milp.build import Mip, build_mip
from opscale.planning.milp.check import evaluate_costs, violations
from opscale.planning.milp.greedy import GreedyPlan
from opscale.planning.milp.inputs import CostBreakdown, DemandKey, Fleet, PlanInputs, SolveStatus
from opscale.planning.milp.rounding import rounded_plan

MIN_SOLVER_S = 0.01
FIXED_ROUTING_GAP = 2e-3


@dataclass(frozen=True, slots=True)
class WarmStart:
    """A plan found without the full search, how it was found, and what it costs."""

    status: SolveStatus
    label: str
    plan: GreedyPlan
    costs: CostBreakdown

    @property
    def total_usd_per_h(self) -> float:
        return self.costs.total_usd_per_h


def warm_start(status: SolveStatus, label: str, plan: GreedyPlan, inputs: PlanInputs, prev: Fleet) -> WarmStart:
    return WarmStart(status, label, plan, evaluate_costs(inputs, plan.fleet, plan.routing, plan.unserved_share, prev))


def better(best: WarmStart, candidate: WarmStart | None) -> WarmStart:
    return candidate if candidate is not None and candidate.total_usd_per_h < best.total_usd_per_h else best


def fixed_routing(inputs: PlanInputs, mip: Mip, start: WarmStart, prev: Fleet, limit_s: float, *, hint: bool,
                  label: str) -> WarmStart | None:
    """The MIP with routing fixed to `start`'s, solved to `FIXED_ROUTING_GAP` within `limit_s`, or None.
    `hint` gives `start` to the solver first (SCIP only)."""
    if limit_s < MIN_SOLVER_S:
        return None
    routing, unserved = start.plan.routing, start.plan.unserved_share
    _fix_routing(mip, routing, unserved)
    try:
        if hint:
            mip.set_hint(inputs, start.plan, prev)
        mip.solver.SetTimeLimit(max(1, int(limit_s * 1000)))
        params = pywraplp.MPSolverParameters()
        params.SetDoubleParam(pywraplp.MPSolverParameters.RELATIVE_MIP_GAP, FIXED_ROUTING_GAP)
        result = mip.solver.Solve(params)
        if result not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
            return None
        fleet, _, _ = mip.extract()
    finally:
        for var in (*mip.share.values(), *mip.unserved.values()):
            var.SetBounds(0.0, 1.0)
    plan = GreedyPlan(fleet, dict(routing), dict(unserved))
    if violations(inputs, plan.fleet, plan.routing, plan.unserved_share):
        return None
    return warm_start(SolveStatus.HEURISTIC, label, plan, inputs, prev)


@dataclass(frozen=True, slots=True)
class LpOutcome:
    """The rounded LP relaxation (None when the LP did not finish or its rounding broke a constraint),
    the LP's optimum (a lower bound on the MIP's; None when it did not finish) and the LP's solve time."""

    start: WarmStart | None
    solve_s: float
    lower_bound: float | None = None


def lp_rounded(inputs: PlanInputs, prev: Fleet, serving: Mapping[DemandKey, tuple[str, ...]],
               limit_s: float, clock: Callable[[], float]) -> LpOutcome:
    """The LP relaxation, solved by GLOP's dual simplex on a model of its own (about a fifth of SCIP's
    root LP time on the largest plans) within `limit_s` including building it, then rounded."""
    if limit_s < MIN_SOLVER_S:
        return LpOutcome(None, 0.0)
    started = clock()
    lp = build_mip(inputs, prev, "GLOP", dict(serving))  # GLOP relaxes the integer variables
    # dual simplex: 0.6 s against 4 s for GLOP's default primal at 20 regions x 50 models
    lp.solver.SetSolverSpecificParametersAsString("use_dual_simplex: true")
    left_s = limit_s - (clock() - started)
    if left_s < MIN_SOLVER_S:
        return LpOutcome(None, 0.0)
    lp.solver.SetTimeLimit(max(1, int(left_s * 1000)))
    solve_started = clock()
    result = lp.solver.Solve()
    solve_s = clock() - solve_started
    if result != pywraplp.Solver.OPTIMAL:
        return LpOutcome(None, solve_s)
    bound = lp.solver.Objective().Value()
    routing, unserved = lp.extract_routing()
    plan = rounded_plan(inputs, {k: v.solution_value() for k, v in lp.inst.items()}, routing, unserved, serving)
    if plan is None or violations(inputs, plan.fleet, plan.routing, plan.unserved_share):
        return LpOutcome(None, solve_s, bound)
    return LpOutcome(warm_start(SolveStatus.HEURISTIC, "rounded LP relaxation", plan, inputs, prev), solve_s, bound)


def _fix_routing(mip: Mip, routing: Mapping[DemandKey, Mapping[str, float]],
                 unserved: Mapping[DemandKey, float]) -> None:
    for (key, region), var in mip.share.items():
        value = routing.get(key, {}).get(region, 0.0)
        var.SetBounds(value, value)
    for key, var in mip.unserved.items():
        value = unserved.get(key, 0.0)
        var.SetBounds(value, value)
