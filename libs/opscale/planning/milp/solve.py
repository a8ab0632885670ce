"""SageServe-style multi-region planner: VMs, instances and routing shares from one MIP.

    solve_plan(inputs, previous, time_limit_s, solver="SCIP") -> PlanSolution

Formulation (OR-Tools pywraplp, SCIP or HiGHS), aggregated per region x SKU so its size does not grow
with the number of VMs:

  variables   vms[r,s,p]       integer VMs per region, SKU, purchase (on-demand / spot)
              inst[m,r,s,tp]   integer instances per model, region, SKU, TP degree (offered options only)
              share[m,o,t,r]   continuous share of origin o's demand of model m, tier t served in r
                               (only to candidate regions: within the tier's RTT budget,
                               at most `max_serving_regions`, see `milp.candidates`)
              unserved[m,o,t]  continuous slack share, so the model is always feasible
              new, warm, kept_vm, fresh   continuous change bookkeeping against the previous fleet
  routing     sum_r share + unserved = 1 for every (m, o, t) with demand
  capacity    for every (m, r): I <= C and rho*I + B <= C, where C = sum cap[m,s,tp]*inst, I the
              interactive load routed to r (at its forecast quantile), B the deferrable tiers' load (the
              mean rate over their deadline window). Deferrable work so fills the capacity interactive
              traffic leaves idle on average (rho = mean/quantile) instead of buying its own.
  GPUs        sum_{m,tp} tp*inst[m,r,s,tp] <= sum_p gpus_per_vm*vms[r,s,p]. Every tp divides the VM's
              GPU count, so whole instances always pack into whole VMs: the aggregate is exact.
  quota       sum_p gpus_per_vm*vms[r,s,p] <= quota[r,s]
  spot cap    spot GPUs <= cap * all GPUs, in every region or over the fleet (`SpotCapScope`)
  change      new >= inst - prev (instances added); fresh >= vms - prev (VMs booted); warm <= new;
              per (r,s): GPUs of warm and of kept instances <= GPUs of kept VMs (kept_vm <= both the
              previous and the new VM GPUs). Warm loads happen on VMs already running.
  objective   GPU cost + change cost (boot + cold/warm load GPU-seconds, see `ObjectiveWeights`)
              + RTT penalty on remote shares + unserved penalty (far above any GPU cost), USD/h.

Search (see `milp.warmstart`): the greedy plan first (the fallback); then the LP relaxation (GLOP),
rounded, as SCIP's first incumbent (a complete hint; OR-Tools 9.15's HiGHS interface crashes on hints,
so HiGHS starts cold), after which SCIP mostly improves and proves; the change cost anchors the
solution to the previous fleet. On plans too big for the full search in time (the LP does not finish
in its share, or leaves less time than SCIP's root LP would need) the rest of the time goes to the fleet
for the best routing known (routing fixed: one small problem per region), and that is the answer.
The time limit covers everything: the greedy plan, building the model, each copy into a solver (which
happens outside the solver's own clock, in about the build time), solving, checking the answer and
freeing the model. With no solution in time (or one costlier than the best warm start) the best warm
start is returned (status HEURISTIC or GREEDY_FALLBACK). The relative MIP gap is 1% by default. Pure:
reads no clock except to enforce the time limit and report how long it took, and keeps no state
between calls.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from enum import StrEnum

from ortools.linear_solver import pywraplp

from opscale.planning.milp.build import Mip, build_mip
from opscale.planning.milp.candidates import DEFAULT_MAX_SERVING_REGIONS, serving_regions
from opscale.planning.milp.check import evaluate_costs, violations
from opscale.planning.milp.greedy import greedy_plan
from opscale.planning.milp.inputs import Fleet, PlanInputs, PlanSolution, SolveStatus
from opscale.planning.milp.warmstart import (
    MIN_SOLVER_S,
    WarmStart,
    better,
    fixed_routing,
    lp_rounded,
    warm_start,
)

DEFAULT_RELATIVE_GAP = 0.01
# Time outside the solver's own clock, per second spent building the model (measured at 20 regions x
# 50 models x 6 SKUs: 0.6-0.9 s per Solve() to copy the model in; checking the answer and freeing the
# model about 0.3); SCIP also overshoots its limit a little while presolving, more so on a busy
# machine, which the last 5% of the limit absorbs.
_COPY_PER_BUILD = 1.0
_READ_BACK_PER_BUILD = 0.5
_MARGIN_SHARE = 0.05
# Share of the time left that the LP relaxation may take (milliseconds on small plans, 1-2 s at 20
# regions x 50 models; on the largest ones the rounded LP may be the best answer there is).
_LP_SHARE = 0.6
# SCIP: the root LP by dual simplex (5 s against over 8 s at 20 regions x 50 models); a few cut rounds
# at the root, then branching (the default runs dozens of rounds that each move
# the bound a hair); the heuristics that improve an incumbent by searching around it (RINS, crossover,
# ALNS) more often than by default, as the plan matters more than the proof of its gap (3x4x3 seed 0:
# 0.5% above the optimum in 0.6 s, against 0.9% at the 1 s limit without); and no presolvers whose cost
# grows with the model faster than they pay here (the components presolver alone took 5 s on 20
# regions x 50 models).
_SCIP_PARAMS = "\n".join((
    "lp/initalgorithm = d",
    "separating/maxroundsroot = 5",
    "separating/maxstallroundsroot = 2",
    "heuristics/rins/freq = 5",
    "heuristics/crossover/freq = 5",
    "heuristics/alns/freq = 3",
    "constraints/components/maxprerounds = 0",
    "propagating/probing/maxprerounds = 0",
    "presolving/dualsparsify/maxrounds = 0",
    "presolving/sparsify/maxrounds = 0",
    "presolving/domcol/maxrounds = 0",
)) + "\n"


class MipSolverName(StrEnum):
    SCIP = "SCIP"
    HIGHS = "HIGHS"


def solve_plan(inputs: PlanInputs, previous: PlanSolution | Fleet | None = None, time_limit_s: float = 10.0,
               solver: str = "SCIP", *, relative_gap: float = DEFAULT_RELATIVE_GAP,
               max_serving_regions: int | None = DEFAULT_MAX_SERVING_REGIONS) -> PlanSolution:
    """Plan VMs, instances and routing for `inputs`, changing `previous` (a plan or the observed fleet)
    only where it pays, within `time_limit_s` of wall time in all. Each demand is routed among at most
    `max_serving_regions` candidate regions (None: every region within its RTT budget, exact). Never
    raises for hard or infeasible demand: unmet demand shows in `unserved_share`. Raises ValueError only
    for an unknown solver name or a `max_serving_regions` below 1."""
    started = time.perf_counter()
    name = _solver_name(solver)
    hints = name == MipSolverName.SCIP  # OR-Tools 9.15's HiGHS interface crashes on hints: it starts cold
    prev = previous.fleet if isinstance(previous, PlanSolution) else (previous or Fleet())
    serving = serving_regions(inputs, max_serving_regions)
    best = warm_start(SolveStatus.GREEDY_FALLBACK, "greedy plan", greedy_plan(inputs, serving), inputs, prev)
    if time_limit_s <= 0:
        return _warm_solution(best, time.perf_counter() - started, name, "no time to solve", None, 0.0, None)
    mip = build_mip(inputs, prev, name.value, serving)
    if name == MipSolverName.SCIP:
        mip.solver.SetSolverSpecificParametersAsString(_SCIP_PARAMS)
    build_s = time.perf_counter() - started
    # every Solve() first copies the model into the solver, outside the solver's own clock, in about
    # the time building it took; reading the answer back and freeing the model take a little more
    copy_s = _COPY_PER_BUILD * build_s
    deadline = started + time_limit_s * (1 - _MARGIN_SHARE) - _READ_BACK_PER_BUILD * build_s

    def solver_s(share: float = 1.0) -> float:
        """Solver time for a stage allotted `share` of the time left, less the copy."""
        return (deadline - time.perf_counter()) * share - copy_s

    # warm starts (`milp.warmstart`). When the LP relaxation does not finish in its share, the full
    # model is out of reach (SCIP's root LP takes about 5x GLOP's): the rest of the time goes to the
    # fleet for the greedy routing.
    lp = lp_rounded(inputs, prev, serving, solver_s(_LP_SHARE), time.perf_counter)
    if lp.lower_bound is None:
        fleet = fixed_routing(inputs, mip, best, prev, solver_s(), hint=hints,
                              label="fleet solved for the greedy routing")
        best = better(best, fleet)
        return _done(mip, started, lambda: _warm_solution(
            best, 0.0, name, f"the LP relaxation did not finish in time; {best.label}", mip, build_s, None))
    best = better(best, lp.start)
    if hints:
        mip.set_hint(inputs, best.plan, prev)
    if solver_s() < MIN_SOLVER_S:
        return _done(mip, started, lambda: _warm_solution(
            best, 0.0, name, f"no time left for the full search; {best.label}", mip, build_s, lp.lower_bound))
    mip.solver.SetTimeLimit(max(1, int(solver_s() * 1000)))
    params = pywraplp.MPSolverParameters()
    params.SetDoubleParam(pywraplp.MPSolverParameters.RELATIVE_MIP_GAP, relative_gap)
    result = mip.solver.Solve(params)
    return _done(mip, started, lambda: _answer(inputs, mip, result, best, prev, name, started, build_s,
                                               lp.lower_bound))


def _answer(inputs: PlanInputs, mip: Mip, result: int, best: WarmStart, prev: Fleet, name: MipSolverName,
            started: float, build_s: float, lp_bound: float | None) -> PlanSolution:
    """The full search's plan, or the best warm start when the search found nothing better. The gap is
    against the better of the solver's bound and the LP relaxation's (the solver's is useless when
    its root LP did not finish)."""
    def fallback(reason: str) -> PlanSolution:
        return _warm_solution(best, 0.0, name, f"{reason}; {best.label}", mip, build_s, lp_bound)

    if result not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        return fallback(f"{name} found no solution in time (status {result})")
    fleet, routing, unserved = mip.extract()
    problems = violations(inputs, fleet, routing, unserved)
    if problems:
        return fallback(f"{name} solution broke {len(problems)} constraint(s): {problems[0]}")
    costs = evaluate_costs(inputs, fleet, routing, unserved, prev)
    if costs.total_usd_per_h > best.total_usd_per_h * (1 + 1e-9):
        return fallback(f"{name} incumbent ({costs.total_usd_per_h:.2f} USD/h) costs more than the warm start")
    objective = mip.solver.Objective()
    value, bound = objective.Value(), max(objective.BestBound(), lp_bound if lp_bound is not None else -math.inf)
    gap = 0.0 if result == pywraplp.Solver.OPTIMAL and math.isclose(value, bound) else _gap(value, bound)
    status = SolveStatus.OPTIMAL if result == pywraplp.Solver.OPTIMAL else SolveStatus.FEASIBLE
    return PlanSolution(status, fleet, routing, unserved, costs, gap, time.perf_counter() - started, name,
                        f"{name} {status.value.lower()} within a relative gap of {gap:.4f}",
                        mip.solver.NumVariables(), mip.solver.NumConstraints(), build_s)


def _done(mip: Mip, started: float, answer: Callable[[], PlanSolution]) -> PlanSolution:
    """Read the answer, then free the solver's model before the clock stops: on the largest plans SCIP
    takes a few tenths of a second to free it, which belongs to this call's time."""
    solution = answer()
    mip.solver.Clear()
    return dataclasses.replace(solution, solve_s=time.perf_counter() - started)


def _solver_name(solver: str) -> MipSolverName:
    try:
        return MipSolverName(solver.upper())
    except ValueError:
        known = ", ".join(n.value for n in MipSolverName)
        raise ValueError(f"unknown MIP solver {solver!r}; known solvers: {known}") from None


def _warm_solution(best: WarmStart, elapsed_s: float, solver: str, reason: str, mip: Mip | None,
                   build_s: float, lower_bound: float | None) -> PlanSolution:
    size = (mip.solver.NumVariables(), mip.solver.NumConstraints()) if mip else (0, 0)
    gap = None if lower_bound is None else _gap(best.total_usd_per_h, lower_bound)
    return PlanSolution(best.status, best.plan.fleet, best.plan.routing, best.plan.unserved_share, best.costs,
                        gap, elapsed_s, solver, reason, *size, build_s)


def _gap(value: float, bound: float) -> float:
    return max(0.0, value - bound) / max(abs(value), 1e-9)
