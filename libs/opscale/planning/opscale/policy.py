"""The `opscale` policy: the three papers' controllers as three nested loops, composed (each is the
policy built for its paper, run unchanged on its share of the fleet):

- hourly (compressed like the rest of an experiment): SageServe's multi-region MIP
  (`sageserve_mip`) plans instances per pool and region, the VMs to hold per (region, SKU, purchase)
  and each origin's cross-region routing shares. A plan becomes each pool's budget, [floor..ceiling]
  around its planned instances (budget.py), once demand was seen for a warm-up (`budget.warmup_s`,
  one demand window: a plan from the first seconds of traffic knows too little to cap anything). The
  MIP plans unified pools as they are and each role of a disaggregated deployment as a pool of its own
  (one solve per role, capacity per role: a prefill instance's rate is its prefill rate), so P and D
  pools and the operator level's base instances all get budgets.
- seconds to minutes: HeteroScale's proportional P/D control (`heteroscale`) sizes the disaggregated
  deployments' prefill and decode pools together, inside their budgets.
- each second (each planner decision): the operator level (`operator_level`) sizes the unified
  deployments' base instances, inside their budgets, and the elastic operator replicas on them, which
  attach in a fraction of a second and so absorb a burst long before a whole replica could load. It
  sizes each region for the demand the plan routes there (_routed_view), not for the region's own
  arrivals: a region taking another's spill grows, and a region whose demand the plan sends elsewhere
  is planned at none, gets no spare in its budget and holds none of the model (where the deployment's
  min_replicas is 0).

An inner loop that wants more than its ceiling gets it only under the emergency rule (the pool's latency
over its objective, or its queue growing: budget.emergency_reason); the borrowing is logged, its VMs are
added to the fleet's (on demand), and the next hourly solve learns from it: it plans that pool for the
demand seen during the emergency (as the MIP's forecast upper bound) and its new ceiling is at least
what was borrowed up to. Every reason names the loop that made the change: `[hourly]`, `[minutes]`,
`[second]`, `[budget]` (an inner wish capped or raised by the hourly budget) or `[emergency]`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial

from opscale.model import LatencyObjective, Observation, OperatorReplicas, PoolKey, Purchase, Role
from opscale.perf import default_catalog
from opscale.planning.base import CapacityFn, DeploymentSpec, Effects
from opscale.planning.heteroscale.policy import HeteroScalePolicy, HeteroScaleState
from opscale.planning.operators.policy import OperatorPolicyState, OperatorScalingPolicy
from opscale.planning.opscale.budget import PoolBudget, budget_from_plan, clamp_to_budget, emergency_reason
from opscale.planning.opscale.config import OpscaleConfig
from opscale.planning.sageserve.mip import SageServeMipPolicy, SageServeMipState

VmCounts = dict[tuple[str, str, str], int]


@dataclass(frozen=True, slots=True)
class Lesson:
    """What an emergency taught the next hourly solve about a pool."""

    demand_rps: float  # the most demand seen while borrowing, with the rule's margin
    replicas: int  # the most instances borrowed up to
    at_s: float
    ceiling: int  # the solve's ceiling it borrowed past


@dataclass(frozen=True, slots=True)
class OpscaleState:
    mip: dict[Role, SageServeMipState] = field(default_factory=dict)  # one solve per pool role
    heteroscale: HeteroScaleState | None = None
    operators: OperatorPolicyState | None = None
    budgets: dict[PoolKey, PoolBudget] = field(default_factory=dict)
    lessons: dict[PoolKey, Lesson] = field(default_factory=dict)
    queued: dict[PoolKey, int] = field(default_factory=dict)  # at the last decision, for queue growth
    replicas: dict[PoolKey, tuple[OperatorReplicas, ...]] = field(default_factory=dict)
    vm_counts: dict[Role, VmCounts] = field(default_factory=dict)  # the last solve's, per role
    capped: dict[PoolKey, int] = field(default_factory=dict)  # an inner wish the ceiling cut, until granted
    emergencies: int = 0
    demand_since_s: float | None = None  # when the first demand was seen (the budgets' warm-up starts)
    budgeting: bool = False  # the hourly plan's budgets bind (after the warm-up)


@dataclass(slots=True)
class _Wish:
    """An inner loop's count for a pool and why."""

    count: int
    loop: str
    why: str


class OpscalePolicy:
    name = "opscale"

    def __init__(self, deployments: list[DeploymentSpec], capacity: CapacityFn, objective: LatencyObjective,
                 config: OpscaleConfig | None = None) -> None:
        self.config = config or OpscaleConfig()
        self.objective = objective
        self.deployments = {d.model: d for d in deployments}
        unified = [d for d in deployments if not d.disaggregated]
        split = [d for d in deployments if d.disaggregated]
        self.mips: dict[Role, SageServeMipPolicy] = {}
        if unified:
            self.mips[Role.UNIFIED] = SageServeMipPolicy(unified, capacity, self.config.mip)
        # Each role's pools as unified-shaped pools of their own, priced at that role's rate. Sized for their
        # region's own demand: two solves could route one origin's demand to different regions for prefill
        # and for decode, and the routers send a request's decode where its prefill ran.
        # Priced at HeteroScale's curated target where the service has one (what the minutes loop will ask
        # for), not at the roofline's rate for the role, which a P/D pair's measured edge falls well short of.
        local = self.config.mip.model_copy(update={"rtt_budget_ms": 0.0})
        self.heteroscale = HeteroScalePolicy(split, objective, self.config.heteroscale) if split else None
        for role in (Role.PREFILL, Role.DECODE) if split else ():
            self.mips[role] = SageServeMipPolicy([d.for_role(role) for d in split],
                                                 partial(self._role_capacity, capacity, role), local)
        self.operators = (OperatorScalingPolicy(unified, objective, self.config.operators, "operator")
                          if unified else None)
        catalog = default_catalog()
        self.gpus_per_vm = {sku: catalog.sku(sku).gpus_per_vm for d in deployments for sku in d.skus()}

    def _role_capacity(self, capacity: CapacityFn, role: Role, model: str, sku: str, tp: int, prompt_tokens: float,
                       output_tokens: float) -> float:
        assert self.heteroscale is not None  # a role's solve exists only beside disaggregated deployments
        spec = self.deployments[model].pool(role)
        # the target was curated on the role's own (SKU, tp); another option the solve weighs is priced as usual
        curated = (self.heteroscale.role_rps(model, role, prompt_tokens, output_tokens)
                   if (sku, tp) == (spec.sku, spec.tp) else None)
        # the simulator's and the live planner's capacity functions take the role (CapacityEstimator)
        return curated if curated is not None else capacity(model, sku, tp, prompt_tokens, output_tokens, role=role)  # type: ignore[call-arg]

    def initial_state(self) -> OpscaleState:
        return OpscaleState(heteroscale=self.heteroscale.initial_state() if self.heteroscale else None,
                            operators=self.operators.initial_state() if self.operators else None)

    def decide(self, observation: Observation, state: OpscaleState, now_s: float) -> Effects:
        state, solved, weights = self._hourly(observation, state, now_s)
        wishes, inner = self._inner(observation, state, now_s)
        desired: dict[PoolKey, int] = {}
        reasons: dict[PoolKey, str] = {}
        lessons = dict(state.lessons)
        capped = dict(state.capped)
        budgets = dict(state.budgets)
        extra_vms: VmCounts = {}
        emergencies = state.emergencies
        for key, wish in sorted(wishes.items(), key=lambda kv: str(kv[0])):
            pool = observation.pools[key]
            spec = self.deployments[key.model].pool(key.role)
            budget = state.budgets.get(key)
            count, note, tag = wish.count, "", wish.loop
            if key in capped and wish.count < capped[key] and budget is not None:
                # an inner loop holds (a cooldown) after a scale-out the budget capped: its wish stands
                # until granted, so the emergency rule can still grant it when the pool breaches
                wish = _Wish(capped[key], wish.loop, f"{wish.why}; still wants {capped[key]} (capped earlier)")
            if budget is not None:
                emergency = (emergency_reason(pool, self.objective, state.queued.get(key), self.config.emergency)
                             if wish.count > budget.ceiling else "")
                clamped = clamp_to_budget(wish.count, budget, emergency, spec.max_replicas)
                count, note = clamped.count, clamped.note
                if clamped.borrowed:
                    tag = "emergency"
                    # what was borrowed stays granted until the next hourly solve re-budgets the pool
                    # (giving it back as soon as the queue stops growing would flap)
                    budgets[key] = replace(budget, ceiling=count)
                    emergencies += 1
                    seen = (pool.arrival_rps + pool.queued / self.config.mip.backlog_drain_s) * self.config.emergency.learn_margin
                    held = lessons.get(key)
                    lessons[key] = Lesson(max(seen, held.demand_rps if held else 0.0),
                                          max(count, held.replicas if held else 0), now_s,
                                          held.ceiling if held else count - clamped.borrowed)
                elif note:
                    tag = "budget"
            desired[key] = count
            if budget is not None and wish.count > budget.ceiling and count < wish.count:
                capped[key] = wish.count
            elif count >= capped.get(key, 0):
                capped.pop(key, None)
            replicas_changed = inner.operator_replicas.get(key, ()) != state.replicas.get(key, ())
            changed = count != pool.expected or key in solved or replicas_changed
            text = "; ".join(part for part in (solved.get(key, ""), f"{wish.loop}: {wish.why}", note) if part)
            if not changed:
                reasons[key] = f"hold: {text}"
            elif key in solved and count == pool.expected and not replicas_changed:
                reasons[key] = f"[hourly] {text}"
            else:
                tag = "second" if tag == wish.loop and count == pool.expected and replicas_changed else tag
                reasons[key] = f"[{tag}] {text}"
        for key, lesson in lessons.items():  # borrowed instances run on VMs bought on demand beyond the plan's
            spec = self.deployments[key.model].pool(key.role)
            vm = (key.region, spec.sku, Purchase.ON_DEMAND.value)
            borrowed_gpus = (lesson.replicas - lesson.ceiling) * spec.tp
            extra_vms[vm] = extra_vms.get(vm, 0) + math.ceil(borrowed_gpus / self.gpus_per_vm[spec.sku])
        vm_counts: VmCounts = {}
        for counts in (*state.vm_counts.values(), extra_vms):
            for vm, n in counts.items():
                vm_counts[vm] = vm_counts.get(vm, 0) + n
        prepare = ({key: max(budget.ceiling, desired.get(key, 0)) for key, budget in state.budgets.items()}
                   if self.config.mip.prestage else {})
        new_state = replace(state, lessons=lessons, emergencies=emergencies, capped=capped, budgets=budgets,
                            queued={k: p.queued for k, p in observation.pools.items()},
                            replicas=dict(inner.operator_replicas),
                            heteroscale=inner.heteroscale_state, operators=inner.operators_state)
        return Effects(desired, new_state, reasons, routing_weights=weights, prepare=prepare,
                       soft_scale_in_s=inner.soft_scale_in_s, ready_ratio_tolerance=inner.ready_ratio_tolerance,
                       operator_replicas=inner.operator_replicas, vm_counts=vm_counts)

    # -- the hourly loop -----------------------------------------------------------------------------

    def _hourly(self, observation: Observation, state: OpscaleState, now_s: float
                ) -> tuple[OpscaleState, dict[PoolKey, str], dict[tuple[str, str], dict[str, float]]]:
        """Each role's MIP; where one solved, the new budgets (learning from the emergencies since the
        last solve), VM counts and a reason per pool. Also the routing shares of the newest plans."""
        mips = dict(state.mip)
        demand_since = state.demand_since_s
        if demand_since is None and any(p.arrival_rps > 0 or p.queued > 0 for p in observation.pools.values()):
            demand_since = now_s
        # A plan binds only once the demand it was made on was observed for a whole warm-up: a plan from
        # the first seconds of traffic (or from none) would cap the inner loops at a fraction of what the
        # first requests need, and each would wait for the emergency rule, then a cold start. Until then
        # the inner loops run unbudgeted, as each paper's policy alone does, and the MIP still routes.
        binding = demand_since is not None and now_s - demand_since >= self.config.budget.warmup_s
        starts_binding = binding and not state.budgeting
        budgets = dict(state.budgets)
        lessons = dict(state.lessons)
        vm_counts = dict(state.vm_counts)
        capped = dict(state.capped)
        solved: dict[PoolKey, str] = {}
        weights: dict[tuple[str, str], dict[str, float]] = {}
        for role, mip in self.mips.items():
            before = mips.get(role) or mip.initial_state()
            effects = mip.decide(self._role_view(observation, role, mip, lessons), before, now_s)
            after: SageServeMipState = effects.state
            mips[role] = after
            solved_now = after.last_solve_s != before.last_solve_s
            if binding and (solved_now or starts_binding):
                for view_key, planned in after.planned.items():
                    key = PoolKey(view_key.model, view_key.region, role)
                    spec = self.deployments[key.model].pool(role)
                    budget = budget_from_plan(planned, spec.min_replicas, spec.max_replicas, self.config.budget)
                    lesson = lessons.pop(key, None)
                    learned = ""
                    if lesson is not None:  # what the emergency borrowed up to stays within the budget
                        budget = replace(budget, ceiling=max(budget.ceiling, min(lesson.replicas, spec.max_replicas)))
                        learned = (f"; learned from the emergency at {lesson.at_s:.0f} s: planned for "
                                   f"{lesson.demand_rps:.2f} req/s, ceiling >= {lesson.replicas}")
                    budgets[key] = budget
                    capped.pop(key, None)
                    plan = (effects.reasons.get(view_key, "MIP solved") if solved_now
                            else f"warm-up over: the plan of {after.last_solve_s:.0f} s binds")
                    solved[key] = f"hourly: {plan}; budget {budget}{learned}"
            elif solved_now:
                for view_key in after.planned:
                    solved[PoolKey(view_key.model, view_key.region, role)] = (
                        f"hourly: {effects.reasons.get(view_key, 'MIP solved')}; no budget during the warm-up")
            if solved_now and after.previous is not None:
                vm_counts[role] = dict(after.vm_counts)  # the solve's, as the MIP keeps them
            if role is Role.UNIFIED:  # the disaggregated pools are planned local (above): no shares to send
                weights.update(after.routing_weights)
        return (replace(state, mip=mips, budgets=budgets, lessons=lessons, vm_counts=vm_counts, capped=capped,
                        demand_since_s=demand_since, budgeting=binding), solved, weights)

    def _role_view(self, observation: Observation, role: Role, mip: SageServeMipPolicy,
                   lessons: Mapping[PoolKey, Lesson]) -> Observation:
        """The pools of `role` as the MIP plans them (unified-shaped keys); a pool an emergency taught
        about carries the demand seen then as its forecast upper bound. The fleet's GPUs (the hosts' and
        an elastic fleet's quotas) are those the other roles' pools do not hold: each role's solve shares
        one fleet with the others."""
        pools = {}
        held_elsewhere: dict[tuple[str, str], int] = {}
        for key, pool in observation.pools.items():
            if key.role is not role or key.model not in mip.deployments:
                spec = self.deployments[key.model].pool(key.role) if key.model in self.deployments else None
                # where its instances run (placed_by_option), else its own SKU
                held = pool.placed_by_option or ({(spec.sku, spec.tp): pool.expected} if spec is not None else {})
                for (sku, tp), n in held.items():
                    held_elsewhere[(key.region, sku)] = held_elsewhere.get((key.region, sku), 0) + n * tp
                continue
            view_key = PoolKey(key.model, key.region)
            forecast = pool.forecast_rps_hi
            lesson = lessons.get(key)
            if lesson is not None:
                forecast = max(forecast or 0.0, lesson.demand_rps)
            pools[view_key] = replace(pool, key=view_key, forecast_rps_hi=forecast)

        def left(gpus: Mapping[tuple[str, str], int]) -> dict[tuple[str, str], int]:
            return {where: max(0, n - held_elsewhere.get(where, 0)) for where, n in gpus.items()}

        return replace(observation, pools=pools, total_gpus=left(observation.total_gpus),
                       gpu_quotas=left(observation.gpu_quotas))

    # -- the inner loops -----------------------------------------------------------------------------

    def _inner(self, observation: Observation, state: OpscaleState, now_s: float) -> tuple[dict[PoolKey, _Wish], _Inner]:
        wishes: dict[PoolKey, _Wish] = {}
        inner = _Inner(heteroscale_state=state.heteroscale, operators_state=state.operators)
        if self.heteroscale is not None:
            assert state.heteroscale is not None
            effects = self.heteroscale.decide(observation, state.heteroscale, now_s)
            inner.heteroscale_state = effects.state
            inner.soft_scale_in_s = effects.soft_scale_in_s
            inner.ready_ratio_tolerance = dict(effects.ready_ratio_tolerance)
            for key, n in effects.desired.items():
                wishes[key] = _Wish(n, "minutes", f"heteroscale: {effects.reasons.get(key, '')}")
        if self.operators is not None:
            assert state.operators is not None
            unified = state.mip.get(Role.UNIFIED)
            routed = _routed_view(observation, unified.routing_weights) if unified is not None else observation
            effects = self.operators.decide(routed, state.operators, now_s)
            inner.operators_state = effects.state
            inner.operator_replicas = dict(effects.operator_replicas)
            for key, n in effects.desired.items():
                wishes[key] = _Wish(n, "second", effects.reasons.get(key, ""))
        return wishes, inner


def _routed_view(observation: Observation, weights: Mapping[tuple[str, str], dict[str, float]]) -> Observation:
    """The unified pools' demand as the hourly plan routes it: each pool sees the share of every origin's
    arrivals (and tokens) the plan sends its region, so the operator level sizes a region for the spill
    it takes from quiet regions, and a region whose demand goes elsewhere for none of it. An origin the
    plan names no shares for stays at home."""
    moved = {key: [0.0, 0.0, 0.0] for key, pool in observation.pools.items() if key.role is Role.UNIFIED}
    for key in moved:
        pool = observation.pools[key]
        shares = weights.get((key.model, key.region)) or {key.region: 1.0}
        total = sum(shares.values()) or 1.0
        for region, share in shares.items():
            to = moved.get(PoolKey(key.model, region))
            if to is not None:
                for i, rate in enumerate((pool.arrival_rps, pool.prompt_tokens_per_s, pool.output_tokens_per_s)):
                    to[i] += rate * share / total
    pools = dict(observation.pools)
    for key, (rps, prompt, output) in moved.items():
        pools[key] = replace(pools[key], arrival_rps=rps, prompt_tokens_per_s=prompt, output_tokens_per_s=output)
    return replace(observation, pools=pools)


@dataclass(slots=True)
class _Inner:
    """What the inner loops decided besides counts."""

    heteroscale_state: HeteroScaleState | None
    operators_state: OperatorPolicyState | None
    soft_scale_in_s: float = 0.0
    ready_ratio_tolerance: dict[str, float] = field(default_factory=dict)
    operator_replicas: dict[PoolKey, tuple[OperatorReplicas, ...]] = field(default_factory=dict)

