"""The planner's state machine: observations in, plan epochs and agent commands out.

Every `interval_s` it builds an Observation from the newest heartbeats (actual instances and their
states), the aggregator's 1-minute windows (demand, latency), forecasts and the routers' pending
counts; asks its policy for desired replicas per pool (and, on an elastic fleet whose quotas it was
given, `Observation.gpu_quotas`, for the VMs to hold, which the plan carries as `Plan.vm_counts` for an
actuator to act on; a policy that names none leaves them as they are); applies a soft scale-in when the
policy asks for one (opscale.planning.soft_scale_in: withdraw from discovery, restore, or let go after the window;
`Plan.withdrawn`); places them onto agents; and, when the placement or discovery changed, publishes a
new plan under the next epoch and sends each agent its desired state. Control is
level-triggered: an agent whose heartbeat shows an older epoch than the plan gets its command again
(same epoch and command id, so a repeat changes nothing). Only the shell that holds the planner lease
runs this; a restarted planner calls `restore(plan)` and continues from the stored plan.

A restored planner first re-learns the fleet before it decides anything: it waits until every agent of
the stored plan has sent a heartbeat (or `agent_timeout_s` has passed, when the missing ones count as
lost) and the routers' load reports cover `demand_window_s`. Deciding earlier would read a fleet it has
not heard from as empty and demand as zero, and tear down a plan that was right.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace

from pydantic import BaseModel, Field

from opscale.model import InstanceState, Observation, Plan, PoolKey, PoolObservation, Role
from opscale.planning import DeploymentSpec, PlanningPolicy
from opscale.planning.operator_replicas import attach_operator_replicas
from opscale.planning.placement import AgentSlot, next_seq_after, place, prestage
from opscale.planning.soft_scale_in import soft_scale_in
from opscale.services import subjects
from opscale.services.actions import Action, Log, Publish, SendCommand, Store
from opscale.services.events import (
    AgentHeartbeat,
    ApplyCommand,
    Event,
    ForecastIssued,
    PlanPublished,
    RouterLoad,
    WindowStats,
)


class PlannerConfig(BaseModel):
    interval_s: float = Field(10.0, gt=0, description="Decision period of the scaling loop")
    demand_window_s: float = Field(30.0, gt=0, description="Arrival rates are averaged over this window of "
                                   "router load reports")
    latency_window_s: float = Field(60.0, gt=0, description="Which aggregator window gives latency percentiles")
    agent_timeout_s: float = Field(15.0, gt=0, description="An agent silent this long is considered lost")
    router_timeout_s: float = Field(15.0, gt=0, description="A router silent this long is gone: its held "
                                    "requests no longer count (replicas come and go under new names)")
    resend_after_s: float = Field(5.0, gt=0, description="Re-send a command to an agent not yet converged")
    topology_aware: bool = Field(True, description="Place by the network: deployment groups in one scheduling "
                                 "domain, RDMA subgroup priorities (opscale.planning.placement); False: blind to "
                                 "switches, each instance on the host with the most free GPUs")


@dataclass(frozen=True, slots=True)
class _RouterReport:
    """What the planner holds of one router: its newest load report's region, time and held requests."""

    region: str
    at_s: float
    pending: Mapping[str, int]  # model -> held requests


class PlannerCore:
    """`handle(event, now_s)` / `tick(now_s)` -> actions. See the module docstring."""

    name = "planner"

    def __init__(self, policy: PlanningPolicy, deployments: list[DeploymentSpec],
                 config: PlannerConfig | None = None, gpu_quotas: dict[tuple[str, str], int] | None = None) -> None:
        self.config = config or PlannerConfig()
        # An elastic fleet's GPU quotas per (region, sku) (Observation.gpu_quotas); None: a fixed fleet
        self.gpu_quotas = dict(gpu_quotas or {})
        self.policy = policy
        self.deployments = {d.model: d for d in deployments}
        self.policy_state = policy.initial_state()
        self.plan = Plan(epoch=0, created_s=0.0)
        self._next_seq = 1
        self._agents: dict[str, AgentHeartbeat] = {}
        self._windows: dict[tuple[str, str, str], WindowStats] = {}
        self._forecasts: dict[tuple[str, str, str], ForecastIssued] = {}
        self._routers: dict[str, _RouterReport] = {}  # router id -> its newest load report
        # (model, origin region) -> recent (at_s, requests, prompt tokens, output tokens) from router loads
        self._arrivals: dict[tuple[str, str], deque[tuple[float, int, int, int]]] = {}
        self._first_load_s: float | None = None  # the start of the first report's interval (relearning)
        # (model, origin region) -> the start of the first report interval that carried arrivals for it:
        # the pool's demand rate is measured from there (see `_demand`)
        self._demand_onset_s: dict[tuple[str, str], float] = {}
        self._sent: dict[str, tuple[int, float]] = {}  # agent -> (epoch, sent at)
        # The lease generation this planner acts under (0: no lease, the simulator's single planner): every
        # command carries it, and agents refuse one older than the newest they have seen.
        self.fencing_token = 0
        self._next_tick_s: float | None = None
        self.last_reasons: dict[PoolKey, str] = {}
        self._relearning = False  # restored: observing the fleet again before deciding
        self._relearn_since_s: float | None = None

    def restore(self, plan: Plan) -> None:
        """Continue from a stored plan (a restarted or newly elected planner); see the module docstring."""
        self.plan = plan
        self._next_seq = next_seq_after(plan.assignments)
        self._relearning = True
        self._relearn_since_s = None

    def newest_agent_token(self) -> int:
        """The newest fencing token the agents report following: a lease taken now must exceed it."""
        return max((hb.fencing_token for hb in self._agents.values()), default=0)

    def lead(self, fencing_token: int) -> None:
        """Act from now on under the lease generation `fencing_token` (newly elected): every agent is sent
        the plan again under it, so a predecessor's later commands are refused."""
        self.fencing_token = fencing_token
        self._sent.clear()

    def router_pending(self) -> dict[str, dict[str, int]]:
        """Per router id: the requests it holds per model, as its newest load report said."""
        return {router_id: dict(router.pending) for router_id, router in self._routers.items()}

    def agent_address(self, agent_id: str) -> str | None:
        """Where the agent's control server listens, from its newest heartbeat."""
        hb = self._agents.get(agent_id)
        return hb.address if hb is not None and hb.address else None

    # -- events --------------------------------------------------------------------------------

    def handle(self, event: Event, now_s: float) -> list[Action]:
        match event:
            case AgentHeartbeat():
                known = self._agents.get(event.agent_id)
                if known is None or event.at_s >= known.at_s:
                    self._agents[event.agent_id] = event
                    if event.terminating_at_s is not None and (known is None or known.terminating_at_s is None):
                        self._next_tick_s = now_s  # a host is going away: re-place its instances at once
            case WindowStats() if math.isclose(event.window_s, self.config.latency_window_s):
                self._windows[(event.model, event.region, event.tier)] = event
            case ForecastIssued():
                self._forecasts[(event.model, event.region, event.tier)] = event
            case RouterLoad():
                known = self._routers.get(event.router_id)
                if known is not None and event.at_s < known.at_s:
                    return []  # an older report of this router, redelivered: its newer one stands
                self._routers[event.router_id] = _RouterReport(event.region, event.at_s, dict(event.pending_by_model))
                if self._first_load_s is None:
                    self._first_load_s = event.at_s - event.interval_s
                start_s = event.at_s - event.interval_s
                for model, n in event.arrivals_by_model.items():
                    key = (model, event.region)
                    if n > 0 and start_s < self._demand_onset_s.get(key, math.inf):
                        self._demand_onset_s[key] = start_s
                    self._arrivals.setdefault(key, deque()).append(
                        (event.at_s, n, event.prompt_tokens_by_model.get(model, 0),
                         event.output_tokens_by_model.get(model, 0)))
        return []

    def tick(self, now_s: float) -> list[Action]:
        actions: list[Action] = []
        for agent_id in [a for a, hb in self._agents.items() if now_s - hb.at_s > self.config.agent_timeout_s]:
            del self._agents[agent_id]
            actions.append(Log(self.name, f"agent {agent_id} lost: its instances will be re-placed"))
        for router_id in [r for r, router in self._routers.items() if now_s - router.at_s > self.config.router_timeout_s]:
            del self._routers[router_id]
        if self._relearning and not self._relearned(now_s):
            return actions
        # Until a host has reported there is nothing to place on: the first decision waits for the first
        # heartbeat (the next tick after it), not for a whole interval, so a fleet starting up gets its
        # instances at once, in the simulator as in the live stack.
        if self._agents and (self._next_tick_s is None or now_s >= self._next_tick_s):
            self._next_tick_s = now_s + self.config.interval_s
            actions.extend(self._decide(now_s))
        actions.extend(self._resend(now_s))
        return actions

    def _relearned(self, now_s: float) -> bool:
        if self._relearn_since_s is None:
            self._relearn_since_s = now_s
        waited_s = now_s - self._relearn_since_s
        heard = all(agent in self._agents for agent in self.plan.assignments)
        demand_seen = (self._first_load_s is not None
                       and now_s - self._first_load_s >= self.config.demand_window_s)
        if (heard or waited_s >= self.config.agent_timeout_s) and (demand_seen or waited_s >= self.config.demand_window_s):
            self._relearning = False
        return not self._relearning

    # -- decisions -----------------------------------------------------------------------------

    def observe(self, now_s: float) -> Observation:
        """The planner's current view (also what golden decision traces record)."""
        states: dict[str, tuple[str, InstanceState, int, int]] = {}
        roles: dict[str, Role] = {}
        withdrawn = self.plan.withdrawn
        busy: dict[PoolKey, list[float]] = {}
        kv: dict[PoolKey, list[float]] = {}
        sm: dict[PoolKey, list[float]] = {}
        # (decode, prefill, cache-missed prefill) tokens/s summed over the pool's ready instances
        rates: dict[PoolKey, list[float]] = {}
        for hb in self._agents.values():
            for st in hb.instances:
                states[st.instance_id] = (hb.region, st.state, st.queued, st.running)
                roles[st.instance_id] = st.role
                if st.state == InstanceState.READY:
                    key = PoolKey(st.model, hb.region, st.role)
                    # A withdrawn instance still finishes the work the service took (its tokens count),
                    # but is no longer one of the pool's serving instances (its means do not).
                    sums = rates.setdefault(key, [0.0, 0.0, 0.0])
                    sums[0] += st.decode_tps
                    sums[1] += st.prefill_tps
                    sums[2] += st.prefill_missed_tps
                    if st.instance_id in withdrawn:
                        continue
                    busy.setdefault(key, []).append(st.busy_frac)
                    kv.setdefault(key, []).append(st.kv_used_frac)
                    sm.setdefault(key, []).append(st.sm_activity)
        pending_by_pool: dict[tuple[str, str], int] = {}
        for router in self._routers.values():
            for model, n in router.pending.items():
                pending_by_pool[(model, router.region)] = pending_by_pool.get((model, router.region), 0) + n

        pools: dict[PoolKey, PoolObservation] = {}
        for key in self._pool_keys():
            ready = loading = draining = queued = running = hidden = 0
            by_option: dict[tuple[str, int], int] = {}
            for agent_id, specs in self.plan.assignments.items():
                if self.plan.agent_regions.get(agent_id) != key.region:
                    continue
                for spec in specs:
                    if spec.model != key.model or spec.role != key.role:
                        continue
                    by_option[(spec.sku, spec.tp)] = by_option.get((spec.sku, spec.tp), 0) + 1
                    _, state, q, r = states.get(spec.instance_id, (key.region, InstanceState.LOADING, 0, 0))
                    if spec.instance_id in withdrawn:
                        hidden += 1
                        queued += q
                        running += r
                        continue
                    ready += state == InstanceState.READY
                    loading += state == InstanceState.LOADING
                    queued += q
                    running += r
            planned = {s.instance_id for specs in self.plan.assignments.values() for s in specs}
            draining = sum(1 for iid, (region, state, _, _) in states.items()
                           if iid not in planned and region == key.region and state == InstanceState.DRAINING
                           and iid.startswith(f"{key.model}-") and roles[iid] == key.role)
            windows = [w for (m, r, _), w in self._windows.items() if m == key.model and r == key.region]
            forecasts = [f for (m, r, _), f in self._forecasts.items() if m == key.model and r == key.region]
            rps, prompt_tps, output_tps = self._demand(key.model, key.region, now_s)
            decode_tps, prefill_tps, missed_tps = rates.get(key, (0.0, 0.0, 0.0))
            pools[key] = PoolObservation(
                key=key, ready=ready, loading=loading, draining=draining,
                arrival_rps=rps, prompt_tokens_per_s=prompt_tps, output_tokens_per_s=output_tps,
                queued=queued + pending_by_pool.get((key.model, key.region), 0), running=running,
                busy_frac=_mean(busy.get(key, [])), kv_used_frac=_mean(kv.get(key, [])),
                sm_activity=_mean(sm.get(key, [])), decode_tps=decode_tps, prefill_tps=prefill_tps,
                prefill_missed_tps=missed_tps, withdrawn=hidden,
                ttft_p99_s=max((w.ttft_p99_s for w in windows if w.ttft_p99_s is not None), default=None),
                tbt_p99_s=max((w.tbt_p99_s for w in windows if w.tbt_p99_s is not None), default=None),
                forecast_rps_hi=sum(f.hi_rps for f in forecasts) if forecasts else None,
                placed_by_option=by_option,
            )
        free: dict[tuple[str, str], int] = {}
        total: dict[tuple[str, str], int] = {}
        for agent_id, hb in self._agents.items():
            used = sum(s.gpus for s in self.plan.assignments.get(agent_id, ()))
            free[(hb.region, hb.sku)] = free.get((hb.region, hb.sku), 0) + hb.gpus_total - used
            total[(hb.region, hb.sku)] = total.get((hb.region, hb.sku), 0) + hb.gpus_total
        return Observation(now_s, pools, free, total_gpus=total, gpu_quotas=dict(self.gpu_quotas))

    def _demand(self, model: str, region: str, now_s: float) -> tuple[float, float, float]:
        """Requests, prompt tokens and output tokens per second that arrived at the routers of
        `region` over the demand window, or, for a pool whose first arrivals are more recent than that,
        since the start of the first router-load interval that carried any: a step from zero is seen at
        its rate at once, not averaged with the quiet time before it (the routers report load, and the
        first report comes, before any traffic does)."""
        samples = self._arrivals.get((model, region))
        onset_s = self._demand_onset_s.get((model, region))
        if not samples or onset_s is None:
            return 0.0, 0.0, 0.0
        horizon = now_s - self.config.demand_window_s
        while samples and samples[0][0] <= horizon:
            samples.popleft()
        span = min(self.config.demand_window_s, max(1e-9, now_s - onset_s))
        return (sum(s[1] for s in samples) / span, sum(s[2] for s in samples) / span,
                sum(s[3] for s in samples) / span)

    def _pool_keys(self) -> list[PoolKey]:
        regions = sorted({hb.region for hb in self._agents.values()})
        keys = []
        for dep in self.deployments.values():
            for region in regions:
                if dep.regions and region not in dep.regions:
                    continue
                for role in dep.roles():  # a disaggregated deployment has a prefill and a decode pool
                    # a pool may run on its preferred SKU or a compatible one: a host of either serves it
                    skus = {sku.casefold() for sku, _ in dep.pool(role).choices()}
                    if any(hb.region == region and hb.sku.casefold() in skus for hb in self._agents.values()):
                        keys.append(PoolKey(dep.model, region, role))
        return keys

    def _decide(self, now_s: float) -> list[Action]:
        observation = self.observe(now_s)
        effects = self.policy.decide(observation, self.policy_state, now_s)
        self.policy_state = effects.state
        self.last_reasons = effects.reasons
        # A host being reclaimed takes nothing new, and its instances are as good as gone: like those of
        # a lost agent, dropping them from the current assignments places them again elsewhere now,
        # while they still drain.
        usable = {a: hb for a, hb in self._agents.items() if hb.terminating_at_s is None}
        agents = [AgentSlot(a, hb.region, hb.sku, hb.gpus_total, frozenset(hb.warm_models), hb.s0, hb.s1, hb.s2,
                            hb.rdma_priority)
                  for a, hb in sorted(usable.items())]
        states = {st.instance_id: st.state for hb in self._agents.values() for st in hb.instances}
        current = {a: specs for a, specs in self.plan.assignments.items() if a in usable}
        # Soft scale-in first (a no-op for a policy that does not ask for it and has nothing withdrawn):
        # it restores withdrawn instances before placement would place new ones, and withdraws instead
        # of removing; placement then realises the counts it hands on.
        soft = soft_scale_in(effects.desired, current, {a.agent_id: a.region for a in agents}, states,
                             self.plan.withdrawn, effects.soft_scale_in_s, now_s)
        aware = self.config.topology_aware
        # A new base instance of an operator-level pool goes where its share of the pool's operator
        # replicas fits beside it (they attach on its host); without that, bases packed onto one warm host
        # leave their replicas no room.
        reserve = {key: sum(r.gpu_equivalents for r in replicas) / max(1, soft.desired.get(key, 1))
                   for key, replicas in effects.operator_replicas.items()}
        result = place(soft.desired, soft.assignments, agents, self.deployments, states, self._next_seq,
                       topology_aware=aware, sku_mix=effects.sku_mix, reserve=reserve)
        self._next_seq = result.next_seq
        actions: list[Action] = []
        for key, note in sorted(soft.notes.items(), key=lambda kv: str(kv[0])):
            actions.append(Log(self.name, f"{key}: {note}", {"pool": str(key)}))
        for key, n in result.unplaced.items():
            why = result.reasons.get(key, "no free GPUs")
            actions.append(Log(self.name, f"{key}: {n} instance(s) could not be placed: {why}",
                               {"pool": str(key), "unplaced": n}))
        new_assignments = result.assignments
        if effects.operator_replicas or any(s.operator_replicas for specs in new_assignments.values() for s in specs):
            attached = attach_operator_replicas(new_assignments, effects.operator_replicas,
                                                [(a.agent_id, a.region, a.gpus_total) for a in agents])
            new_assignments = attached.assignments
            for key, short in sorted(attached.unplaced.items(), key=lambda kv: str(kv[0])):
                actions.append(Log(self.name, f"{key}: operator replicas without room on the pool's hosts: {short}",
                                   {"pool": str(key), "unplaced_operator_replicas": short}))
        staging = prestage(effects.prepare, new_assignments, agents, self.deployments, topology_aware=aware,
                           sku_mix=effects.sku_mix)
        weights = effects.routing_weights or self.plan.routing_weights
        vm_counts = effects.vm_counts or self.plan.vm_counts  # empty: the fleet's VMs stay as they are
        placed = {s.instance_id for specs in new_assignments.values() for s in specs}
        withdrawn = {iid: at for iid, at in soft.withdrawn.items() if iid in placed}
        gates = dict(effects.ready_ratio_tolerance)
        discovery_same = withdrawn == self.plan.withdrawn and gates == self.plan.ready_ratio_tolerance
        if (_same_assignments(self.plan.assignments, new_assignments) and weights == self.plan.routing_weights
                and staging == self.plan.prestage and discovery_same and vm_counts == self.plan.vm_counts):
            return actions
        reason = "; ".join(f"{k}: {why}" for k, why in sorted(effects.reasons.items(), key=lambda kv: str(kv[0]))
                           if not why.startswith(("steady", "hold")))
        self.plan = Plan(
            epoch=max(self.plan.epoch, self._newest_agent_epoch()) + 1, created_s=now_s, assignments=new_assignments,
            agent_regions={a: hb.region for a, hb in self._agents.items()},
            routing_weights=weights, vm_counts=vm_counts,
            reason=reason or ("placement changed" if new_assignments != self.plan.assignments
                              else "routing changed" if weights != self.plan.routing_weights
                              else "discovery changed" if not discovery_same
                              else "VMs changed" if vm_counts != self.plan.vm_counts else "pre-staging changed"),
            prestage=staging, withdrawn=withdrawn, ready_ratio_tolerance=gates,
        )
        actions.append(Store("plan", self.plan))
        actions.append(Publish(subjects.plans(), PlanPublished(self.plan)))
        actions.append(Log(self.name, f"plan epoch {self.plan.epoch}: {self.plan.reason}",
                           {"epoch": self.plan.epoch, "replicas": {str(k): v for k, v in self.plan.replicas().items()}}))
        for agent_id in sorted(new_assignments):
            actions.append(self._command(agent_id, now_s))
        return actions

    def _command(self, agent_id: str, now_s: float) -> SendCommand:
        self._sent[agent_id] = (self.plan.epoch, now_s)
        return SendCommand(agent_id, ApplyCommand(agent_id, self.plan.epoch, f"apply-{self.plan.epoch}-{agent_id}",
                                                  self.plan.assignments.get(agent_id, ()),
                                                  self.plan.prestage.get(agent_id, ()), self.fencing_token))

    def _newest_agent_epoch(self) -> int:
        return max((hb.epoch for hb in self._agents.values()), default=0)

    def _fence_past_agents(self, now_s: float) -> list[Action]:
        """An agent reporting a newer epoch than this planner's plan applied a command that no plan of
        this planner made (a deposed leader's, or a forged or faulty Apply). Its agent would ignore every
        later plan as older, so the current plan is issued again under an epoch past the newest
        reported one; the agents then converge to it as to any new plan."""
        ahead = self._newest_agent_epoch()
        if self.plan.epoch == 0 or ahead <= self.plan.epoch:
            return []
        agents = sorted(a for a, hb in self._agents.items() if hb.epoch == ahead)
        self.plan = replace(self.plan, epoch=ahead + 1, created_s=now_s,
                            reason=f"fenced past epoch {ahead} reported by {', '.join(agents)}")
        return [Store("plan", self.plan), Publish(subjects.plans(), PlanPublished(self.plan)),
                Log(self.name, f"plan epoch {self.plan.epoch}: {self.plan.reason}",
                    {"epoch": self.plan.epoch, "fenced_past": ahead})]

    def _resend(self, now_s: float) -> list[Action]:
        actions: list[Action] = []
        if self.plan.epoch == 0:
            return actions
        actions.extend(self._fence_past_agents(now_s))
        for agent_id, hb in sorted(self._agents.items()):
            if hb.epoch >= self.plan.epoch and hb.fencing_token >= self.fencing_token:
                continue
            epoch, sent_s = self._sent.get(agent_id, (0, -math.inf))
            if epoch < self.plan.epoch or now_s - sent_s >= self.config.resend_after_s:
                actions.append(self._command(agent_id, now_s))
        return actions


def _same_assignments(old: dict[str, tuple], new: dict[str, tuple]) -> bool:
    """Equal when every agent runs the same instances (an agent with none equals an absent one)."""
    return all(old.get(a, ()) == new.get(a, ()) for a in set(old) | set(new))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
