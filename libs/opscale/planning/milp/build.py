"""The MIP planner's model: variables, constraints and objective (see `opscale.planning.milp` for the
formulation), and the hint that hands the solver a complete starting plan.

Size control, all exact except the candidate regions (see `milp.candidates`): options dominated by a
smaller TP degree on the same SKU are dropped; instance counts are bounded by the demand that could
reach them and by the quota; the "a region serves a model only if it runs an instance" link is added
only for demands smaller than one instance there (for larger ones capacity already implies it). No
solving and no clock here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ortools.linear_solver import pywraplp

from opscale.model import Purchase
from opscale.planning.milp.check import change_detail
from opscale.planning.milp.greedy import GreedyPlan
from opscale.planning.milp.inputs import DemandKey, Fleet, InstanceKey, PlanInputs, RegionSku, VmKey


@dataclass
class Mip:
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
        routing, unserved = self.extract_routing()
        return (Fleet({k: n for k, n in vms.items() if n}, {k: n for k, n in inst.items() if n}),
                routing, unserved)

    def extract_routing(self) -> tuple[dict[DemandKey, dict[str, float]], dict[DemandKey, float]]:
        """Shares and unserved slack of the last solve, clipped and renormalised to sum to exactly 1."""
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
        return routing, unserved

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


def build_mip(inputs: PlanInputs, prev: Fleet, solver_name: str, serving: dict[DemandKey, tuple[str, ...]]) -> Mip:
    """The model for `inputs` against the previous fleet `prev`; demand key k may be routed only to
    `serving[k]` (candidate regions, see `milp.candidates.serving_regions`)."""
    solver = pywraplp.Solver.CreateSolver(solver_name)
    if solver is None:  # pragma: no cover - both ship with the ortools wheel
        raise ValueError(f"MIP solver {solver_name} is not available in this OR-Tools build")
    mip = Mip(solver)
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
    for key, regions in serving.items():
        for region in regions:
            reach[(key[0], region)] = reach.get((key[0], region), 0.0) + inputs.demand_rps[key]
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
            gpu_cost = gpv * inputs.effective_price(key)  # spot: with its risk term
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
        objective.SetCoefficient(added, per_instance_s * spec.cold_load_s)  # instances carry no other cost
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
    deferrable_models = {m for (m, _, t), rps in inputs.demand_rps.items() if rps > 0 and tiers[t].deferrable}
    inst_by_model_region: dict[tuple[str, str], list[pywraplp.Variable]] = {}
    largest_cap: dict[tuple[str, str], float] = {}
    for (model, region, sku, tp), var in mip.inst.items():
        inst_by_model_region.setdefault((model, region), []).append(var)
        cap = options[(model, sku, tp)]
        largest_cap[(model, region)] = max(cap, largest_cap.get((model, region), 0.0))
        if (model, region) not in capacity_i:
            capacity_i[(model, region)] = solver.Constraint(0, inf, f"cap_i[{model},{region}]")
            if model in deferrable_models:
                capacity_b[(model, region)] = solver.Constraint(0, inf, f"cap_b[{model},{region}]")
        capacity_i[(model, region)].SetCoefficient(var, cap)
        if model in deferrable_models:
            capacity_b[(model, region)].SetCoefficient(var, cap)
    penalty = inputs.unserved_penalty()
    for key, regions in sorted(serving.items()):
        rps = inputs.demand_rps[key]
        model, origin, tier = key
        spec = tiers[tier]
        slack = solver.NumVar(0, 1, f"unserved[{model},{origin},{tier}]")
        mip.unserved[key] = slack
        objective.SetCoefficient(slack, rps * penalty * spec.unserved_weight)
        total = solver.Constraint(1, 1, f"route[{model},{origin},{tier}]")
        total.SetCoefficient(slack, 1)
        for region in regions:
            if (model, region) not in capacity_i:  # no instance can run there (quota, offer)
                continue
            var = solver.NumVar(0, 1, f"share[{model},{origin},{tier},{region}]")
            mip.share[(key, region)] = var
            total.SetCoefficient(var, 1)
            if rps < largest_cap[(model, region)]:
                # a region serves a model only if it runs an instance of it: valid for integer instances,
                # and far tighter than capacity alone when the demand is a fraction of one instance. For
                # a demand of at least one (largest) instance, capacity >= rps x share already implies it.
                opened = solver.Constraint(0, inf)
                opened.SetCoefficient(var, -1)
                for inst_var in inst_by_model_region[(model, region)]:
                    opened.SetCoefficient(inst_var, 1)
            rtt = inputs.rtt(origin, region)
            if rtt:
                objective.SetCoefficient(var, rps * rtt * spec.rtt_penalty_usd_per_rps_ms_h)
            ct_b = capacity_b.get((model, region))
            if spec.deferrable:
                ct_b.SetCoefficient(var, -rps)  # type: ignore[union-attr]
            else:
                capacity_i[(model, region)].SetCoefficient(var, -rps)
                if ct_b is not None:
                    ct_b.SetCoefficient(var, -rho * rps)
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


def _spot_cap(inputs: PlanInputs, mip: Mip, skus: dict) -> None:
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
