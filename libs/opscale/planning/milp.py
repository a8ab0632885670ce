"""SageServe-style multi-region planner: VMs, instances and routing shares from one MIP.

    solve_plan(inputs, previous, time_limit_s, solver="SCIP") -> PlanSolution

Formulation (OR-Tools pywraplp, SCIP or HiGHS), aggregated per region x SKU so its size does not grow
with the number of VMs:

  variables   vms[r,s,p]       integer VMs per region, SKU, purchase (on-demand / spot)
              inst[m,r,s,tp]   integer instances per model, region, SKU, TP degree (offered options only)
              share[m,o,t,r]   continuous share of origin o's demand of model m, tier t served in r
                               (only where RTT(o, r) is within the tier's budget)
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

Warm start: the greedy plan (`milp_greedy`) is computed first and given to the solver as a complete
hint; the change cost anchors the solution to the previous fleet. The time limit covers building and
solving; with no solution in time (or one costlier than the greedy plan) the greedy plan is returned
as GREEDY_FALLBACK. The relative MIP gap is 1% by default. Pure: reads no clock except to enforce the
time limit and report how long it took, and keeps no state between calls.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from enum import StrEnum

from ortools.linear_solver import pywraplp

from opscale.model import Purchase
from opscale.planning.milp_check import change_detail, evaluate_costs, violations
from opscale.planning.milp_greedy import GreedyPlan, greedy_plan
from opscale.planning.milp_inputs import (
    DemandKey,
    Fleet,
    InstanceKey,
    PlanInputs,
    PlanSolution,
    RegionSku,
    SolveStatus,
    VmKey,
)

DEFAULT_RELATIVE_GAP = 0.01


_SCIP_PARAMS = "separating/maxroundsroot = 5\nseparating/maxstallroundsroot = 2\n"


class MipSolverName(StrEnum):
    SCIP = "SCIP"
    HIGHS = "HIGHS"


def solve_plan(inputs: PlanInputs, previous: PlanSolution | Fleet | None = None, time_limit_s: float = 10.0,
               solver: str = "SCIP", *, relative_gap: float = DEFAULT_RELATIVE_GAP) -> PlanSolution:
    """Plan VMs, instances and routing for `inputs`, changing `previous` (a plan or the observed fleet)
    only where it pays. Never raises for hard or infeasible demand: unmet demand shows in
    `unserved_share`. Raises ValueError only for an unknown solver name."""
    started = time.perf_counter()
    name = _solver_name(solver)
    prev = previous.fleet if isinstance(previous, PlanSolution) else (previous or Fleet())
    greedy = greedy_plan(inputs)

    def fallback(reason: str, mip: _Mip | None = None) -> PlanSolution:
        return _greedy_solution(inputs, greedy, prev, time.perf_counter() - started, name, reason, mip)

    if time_limit_s <= 0:
        return fallback("no time to solve")
    mip = _build(inputs, prev, name)
    if name == MipSolverName.SCIP:  # OR-Tools 9.15's HiGHS interface crashes on hints: it starts cold
        mip.set_hint(inputs, greedy, prev)
    remaining_s = time_limit_s - (time.perf_counter() - started)
    if remaining_s <= 0:
        return fallback("building the model used the whole time limit", mip)
    # keep a margin for reading the answer back; SCIP also overshoots its limit a little
    mip.solver.SetTimeLimit(max(1, int(remaining_s * 0.85 * 1000)))
    if name == MipSolverName.SCIP:
        # SCIP's default root node runs dozens of cut rounds that each move the bound a hair (seconds on
        # small plans); a few rounds then branching with its heuristics finds good plans far sooner
        mip.solver.SetSolverSpecificParametersAsString(_SCIP_PARAMS)
    params = pywraplp.MPSolverParameters()
    params.SetDoubleParam(pywraplp.MPSolverParameters.RELATIVE_MIP_GAP, relative_gap)
    result = mip.solver.Solve(params)
    if result not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        return fallback(f"{name} found no solution in {time_limit_s:g} s (status {result})", mip)

    fleet, routing, unserved = mip.extract()
    problems = violations(inputs, fleet, routing, unserved)
    if problems:
        return fallback(f"{name} solution broke {len(problems)} constraint(s): {problems[0]}", mip)
    costs = evaluate_costs(inputs, fleet, routing, unserved, prev)
    greedy_costs = evaluate_costs(inputs, greedy.fleet, greedy.routing, greedy.unserved_share, prev)
    if costs.total_usd_per_h > greedy_costs.total_usd_per_h * (1 + 1e-9):
        return fallback(f"{name} incumbent ({costs.total_usd_per_h:.2f} USD/h) costs more than the greedy plan", mip)
    objective = mip.solver.Objective()
    value, bound = objective.Value(), objective.BestBound()
    gap = 0.0 if result == pywraplp.Solver.OPTIMAL and math.isclose(value, bound) else \
        abs(value - bound) / max(abs(value), 1e-9)
    status = SolveStatus.OPTIMAL if result == pywraplp.Solver.OPTIMAL else SolveStatus.FEASIBLE
    return PlanSolution(status, fleet, routing, unserved, costs, gap, time.perf_counter() - started, name,
                        f"{name} {status.value.lower()} within a relative gap of {gap:.4f}",
                        mip.solver.NumVariables(), mip.solver.NumConstraints())


def _solver_name(solver: str) -> MipSolverName:
    try:
        return MipSolverName(solver.upper())
    except ValueError:
        known = ", ".join(n.value for n in MipSolverName)
        raise ValueError(f"unknown MIP solver {solver!r}; known solvers: {known}") from None


def _greedy_solution(inputs: PlanInputs, greedy: GreedyPlan, prev: Fleet, elapsed_s: float, solver: str,
                     reason: str, mip: _Mip | None) -> PlanSolution:
    costs = evaluate_costs(inputs, greedy.fleet, greedy.routing, greedy.unserved_share, prev)
    size = (mip.solver.NumVariables(), mip.solver.NumConstraints()) if mip else (0, 0)
    return PlanSolution(SolveStatus.GREEDY_FALLBACK, greedy.fleet, greedy.routing, greedy.unserved_share, costs,
                        None, elapsed_s, solver, reason, *size)


@dataclass
class _Mip:
    """The built model and its variables by key, so hints go in and values come out by name."""

    solver: pywraplp.Solver
    vms: dict[VmKey, pywraplp.Variable] = field(default_factory=dict)
    inst: dict[InstanceKey, pywraplp.Variable] = field(default_factory=dict)
    share: dict[tuple[DemandKey, str], pywraplp.Variable] = field(default_factory=dict)
    unserved: dict[DemandKey, pywraplp.Variable] = field(default_factory=dict)
    new: dict[InstanceKey, pywraplp.Variable] = field(default_factory=dict)
    warm: dict[InstanceKey, pywraplp.Variable] = field(default_factory=dict)
    kept_vm: dict[VmKey, pywraplp.Variable] = field(default_factory=dict)
    fresh: dict[VmKey, pywraplp.Variable] = field(default_factory=dict)

    def extract(self) -> tuple[Fleet, dict[DemandKey, dict[str, float]], dict[DemandKey, float]]:
        vms = {k: round(v.solution_value()) for k, v in self.vms.items()}
        inst = {k: round(v.solution_value()) for k, v in self.inst.items()}
        routing: dict[DemandKey, dict[str, float]] = {key: {} for key in self.unserved}
        for (key, region), var in self.share.items():
            value = min(1.0, max(0.0, var.solution_value()))
            if value > 1e-9:
                routing[key][region] = value
        unserved: dict[DemandKey, float] = {}
        for key, var in self.unserved.items():
            slack = min(1.0, max(0.0, var.solution_value()))
            total = sum(routing[key].values()) + slack
            if total > 0 and abs(total - 1.0) > 1e-12:  # solver tolerance: renormalise to exactly 1
                routing[key] = {r: s / total for r, s in routing[key].items()}
                slack /= total
            if slack > 1e-9:
                unserved[key] = slack
        return (Fleet({k: n for k, n in vms.items() if n}, {k: n for k, n in inst.items() if n}),
                routing, unserved)

    def set_hint(self, inputs: PlanInputs, greedy: GreedyPlan, prev: Fleet) -> None:
        """Give the solver the greedy plan as a complete starting solution (SCIP takes it as its first
        incumbent; a solver that ignores hints just solves from scratch)."""
        fleet = greedy.fleet
        detail = change_detail(inputs, fleet, prev)
        skus = inputs.sku_by_name()
        values: dict[pywraplp.Variable, float] = {}
        for key, var in self.vms.items():
            values[var] = fleet.vm_counts.get(key, 0)
        for key, var in self.fresh.items():
            values[var] = max(0, fleet.vm_counts.get(key, 0) - prev.vm_counts.get(key, 0))
        for key, var in self.kept_vm.items():
            values[var] = min(fleet.vm_counts.get(key, 0), prev.vm_counts.get(key, 0)) * skus[key[1]].gpus_per_vm
        for key, var in self.inst.items():
            values[var] = fleet.instances.get(key, 0)
        for key, var in self.new.items():
            values[var] = detail.new_instances.get(key, 0.0)
        for key, var in self.warm.items():
            values[var] = detail.warm_instances.get(key, 0.0)
        for (key, region), var in self.share.items():
            values[var] = greedy.routing.get(key, {}).get(region, 0.0)
        for key, var in self.unserved.items():
            values[var] = greedy.unserved_share.get(key, 0.0)
        self.solver.SetHint(list(values), list(values.values()))


def _build(inputs: PlanInputs, prev: Fleet, name: MipSolverName) -> _Mip:
    solver = pywraplp.Solver.CreateSolver(name.value)
    if solver is None:  # pragma: no cover - both ship with the ortools wheel
        raise ValueError(f"MIP solver {name.value} is not available in this OR-Tools build")
    mip = _Mip(solver)
    inf = solver.infinity()
    skus, tiers = inputs.sku_by_name(), inputs.tier_by_name()
    options = _undominated(inputs.options(), prev)
    rho = inputs.interactive_mean_to_quantile
    change_per_gpu_s = inputs.weights.change_cost_weight / inputs.weights.plan_horizon_s
    models = {m.name: m for m in inputs.models}
    objective = solver.Objective()
    objective.SetMinimization()

    offered = {(r, s) for (r, s, _) in inputs.prices_usd_per_gpu_h}
    # demand each region could be asked to serve, per model: bounds the instance counts
    reach: dict[tuple[str, str], float] = {}
    for (model, origin, tier), rps in inputs.demand_rps.items():
        if rps > 0:
            for region in inputs.regions:
                if inputs.rtt(origin, region) <= tiers[tier].rtt_budget_ms:
                    reach[(model, region)] = reach.get((model, region), 0.0) + rps
    max_gpus: dict[RegionSku, float] = {}
    for (model, sku, tp), cap in options.items():
        for region in inputs.regions:
            rps = reach.get((model, region), 0.0)
            if rps <= 0 or (region, sku) not in offered:
                continue
            upper = math.ceil(rps / cap - 1e-9)
            quota = inputs.quotas_gpus.get((region, sku))
            if quota is not None:
                upper = min(upper, (quota // skus[sku].gpus_per_vm * skus[sku].gpus_per_vm) // tp)
            if upper <= 0:
                continue
            key = (model, region, sku, tp)
            mip.inst[key] = solver.IntVar(0, upper, f"inst[{model},{region},{sku},{tp}]")
            max_gpus[(region, sku)] = max_gpus.get((region, sku), 0) + upper * tp

    # VMs: cost, quota, and room for the instances
    gpu_fit: dict[RegionSku, pywraplp.Constraint] = {}
    for (region, sku), gpus in sorted(max_gpus.items()):
        gpv = skus[sku].gpus_per_vm
        upper = math.ceil(gpus / gpv)
        quota = inputs.quotas_gpus.get((region, sku))
        if quota is not None:
            upper = min(upper, quota // gpv)
        fit = solver.Constraint(0, inf, f"gpu_fit[{region},{sku}]")
        gpu_fit[(region, sku)] = fit
        quota_ct = solver.Constraint(-inf, quota, f"quota[{region},{sku}]") if quota is not None else None
        ref_price = inputs.reference_price(region, sku)
        for purchase in inputs.offered(region, sku):
            key = (region, sku, purchase)
            var = solver.IntVar(0, upper, f"vms[{region},{sku},{purchase}]")
            mip.vms[key] = var
            fit.SetCoefficient(var, gpv)
            if quota_ct is not None:
                quota_ct.SetCoefficient(var, gpv)
            boot_cost = gpv * skus[sku].vm_boot_s * ref_price * change_per_gpu_s
            before = prev.vm_counts.get(key, 0)
            gpu_cost = gpv * inputs.prices_usd_per_gpu_h[key]
            if before:
                fresh = solver.NumVar(0, inf, f"fresh[{region},{sku},{purchase}]")
                mip.fresh[key] = fresh
                objective.SetCoefficient(fresh, boot_cost)
                ct = solver.Constraint(-before, inf)  # fresh >= vms - before
                ct.SetCoefficient(fresh, 1)
                ct.SetCoefficient(var, -1)
                kept = solver.NumVar(0, before * gpv, f"kept_vm[{region},{sku},{purchase}]")
                mip.kept_vm[key] = kept
                ct = solver.Constraint(-inf, 0)  # kept GPUs <= GPUs of the VMs now
                ct.SetCoefficient(kept, 1)
                ct.SetCoefficient(var, -gpv)
                objective.SetCoefficient(var, gpu_cost)
            else:
                objective.SetCoefficient(var, gpu_cost + boot_cost)
    _spot_cap(inputs, mip, skus)

    # instances: GPUs, change bookkeeping
    warm_room: dict[RegionSku, pywraplp.Constraint] = {}
    prev_inst_at = {(k[1], k[2]) for k, n in prev.instances.items() if n}
    for (region, sku) in gpu_fit:
        has_prev_vm = any((region, sku, p) in mip.kept_vm for p in Purchase)
        if has_prev_vm or (region, sku) in prev_inst_at:
            room = solver.Constraint(-inf, 0, f"warm_room[{region},{sku}]")
            for purchase in Purchase:
                if (region, sku, purchase) in mip.kept_vm:
                    room.SetCoefficient(mip.kept_vm[(region, sku, purchase)], -1)
            warm_room[(region, sku)] = room
    for key, var in mip.inst.items():
        model, region, sku, tp = key
        gpu_fit[(region, sku)].SetCoefficient(var, -tp)
        per_vm = skus[sku].gpus_per_vm // tp
        if var.ub() < per_vm:
            # any instance needs a whole VM: VMs >= inst / ub, tighter than the GPU count's inst / per_vm
            whole = solver.Constraint(0, inf)
            whole.SetCoefficient(var, -1.0 / var.ub())
            for purchase in inputs.offered(region, sku):
                whole.SetCoefficient(mip.vms[(region, sku, purchase)], 1)
        spec = models[model]
        per_instance_s = tp * inputs.reference_price(region, sku) * change_per_gpu_s
        before = prev.instances.get(key, 0)
        room = warm_room.get((region, sku))
        added = var
        if before:
            added = solver.NumVar(0, var.ub(), f"new[{model},{region},{sku},{tp}]")
            mip.new[key] = added
            ct = solver.Constraint(-before, inf)  # new >= inst - before
            ct.SetCoefficient(added, 1)
            ct.SetCoefficient(var, -1)
            if room is not None:  # kept instances (inst - new) occupy kept VMs
                room.SetCoefficient(var, tp)
                room.SetCoefficient(added, -tp)
        objective.SetCoefficient(added, objective.GetCoefficient(added) + per_instance_s * spec.cold_load_s)
        if room is not None and any((region, sku, p) in mip.kept_vm for p in Purchase):
            warm = solver.NumVar(0, var.ub(), f"warm[{model},{region},{sku},{tp}]")
            mip.warm[key] = warm
            ct = solver.Constraint(-inf, 0)  # warm <= new
            ct.SetCoefficient(warm, 1)
            ct.SetCoefficient(added, -1)
            room.SetCoefficient(warm, tp)
            objective.SetCoefficient(warm, per_instance_s * (spec.warm_load_s - spec.cold_load_s))

    # routing and capacity
    capacity_i: dict[tuple[str, str], pywraplp.Constraint] = {}
    capacity_b: dict[tuple[str, str], pywraplp.Constraint] = {}
    serving_regions: dict[str, list[str]] = {}
    deferrable_models = {m for (m, _, t), rps in inputs.demand_rps.items() if rps > 0 and tiers[t].deferrable}
    inst_by_model_region: dict[tuple[str, str], list[pywraplp.Variable]] = {}
    for (model, region, sku, tp), var in mip.inst.items():
        inst_by_model_region.setdefault((model, region), []).append(var)
        if (model, region) not in capacity_i:
            capacity_i[(model, region)] = solver.Constraint(0, inf, f"cap_i[{model},{region}]")
            if model in deferrable_models:
                capacity_b[(model, region)] = solver.Constraint(0, inf, f"cap_b[{model},{region}]")
            serving_regions.setdefault(model, []).append(region)
        capacity_i[(model, region)].SetCoefficient(var, options[(model, sku, tp)])
        if model in deferrable_models:
            capacity_b[(model, region)].SetCoefficient(var, options[(model, sku, tp)])
    penalty = inputs.unserved_penalty()
    for key, rps in sorted(inputs.demand_rps.items()):
        if rps <= 0:
            continue
        model, origin, tier = key
        spec = tiers[tier]
        slack = solver.NumVar(0, 1, f"unserved[{model},{origin},{tier}]")
        mip.unserved[key] = slack
        objective.SetCoefficient(slack, rps * penalty * spec.unserved_weight)
        total = solver.Constraint(1, 1, f"route[{model},{origin},{tier}]")
        total.SetCoefficient(slack, 1)
        for region in serving_regions.get(model, []):
            rtt = inputs.rtt(origin, region)
            if rtt > spec.rtt_budget_ms:
                continue
            var = solver.NumVar(0, 1, f"share[{model},{origin},{tier},{region}]")
            mip.share[(key, region)] = var
            total.SetCoefficient(var, 1)
            # a region serves a model only if it runs an instance of it: valid for integer instances,
            # and far tighter than capacity alone when the demand is a fraction of one instance
            opened = solver.Constraint(0, inf)
            opened.SetCoefficient(var, -1)
            for inst_var in inst_by_model_region[(model, region)]:
                opened.SetCoefficient(inst_var, 1)
            if rtt:
                objective.SetCoefficient(var, rps * rtt * spec.rtt_penalty_usd_per_rps_ms_h)
            ct_b = capacity_b.get((model, region))
            if spec.deferrable:
                ct_b.SetCoefficient(var, ct_b.GetCoefficient(var) - rps)  # type: ignore[union-attr]
            else:
                ct_i = capacity_i[(model, region)]
                ct_i.SetCoefficient(var, ct_i.GetCoefficient(var) - rps)
                if ct_b is not None:
                    ct_b.SetCoefficient(var, ct_b.GetCoefficient(var) - rho * rps)
    return mip


def _undominated(options: dict[tuple[str, str, int], float], prev: Fleet) -> dict[tuple[str, str, int], float]:
    """Drop an option (m, s, tp) when a smaller TP degree tp' dividing tp on the same SKU gives at least as
    much capacity on the same GPUs ((tp/tp') x cap' >= cap): any plan using the larger one can use the
    smaller ones instead at no extra cost (same GPUs, same loading GPU-seconds), and the finer grain
    only helps. Exact, and it removes most integer variables. Options the previous fleet runs stay, so
    keeping those instances is still expressible."""
    running = {(m, s, tp) for (m, _, s, tp), n in prev.instances.items() if n}
    degrees: dict[tuple[str, str], list[int]] = {}
    for model, sku, tp in options:
        degrees.setdefault((model, sku), []).append(tp)
    kept: dict[tuple[str, str, int], float] = {}
    for (model, sku, tp), cap in options.items():
        dominated = any(small < tp and tp % small == 0 and (tp // small) * options[(model, sku, small)] >= cap
                        for small in degrees[(model, sku)])
        if not dominated or (model, sku, tp) in running:
            kept[(model, sku, tp)] = cap
    return kept


def _spot_cap(inputs: PlanInputs, mip: _Mip, skus: dict) -> None:
    """spot GPUs <= cap x all GPUs, i.e. (1 - cap) x spot GPUs - cap x on-demand GPUs <= 0."""
    cap = inputs.spot_share_cap
    if cap >= 1.0:
        return
    cts: dict[str, pywraplp.Constraint] = {}
    for (region, sku, purchase), var in mip.vms.items():
        scope = region if inputs.spot_cap_scope == "region" else "*"
        if scope not in cts:
            cts[scope] = mip.solver.Constraint(-mip.solver.infinity(), 0, f"spot_cap[{scope}]")
        gpv = skus[sku].gpus_per_vm
        cts[scope].SetCoefficient(var, (1 - cap) * gpv if purchase == Purchase.SPOT else -cap * gpv)
