"""The router's state machine: which instance serves each request.

It learns instances from agent heartbeats, keeps its own count of outstanding tokens per instance (the
one owner of that fact: it changes on every dispatch and completion, far faster than heartbeats), and
holds requests in a bounded queue while no instance can take them (a cold start), so that a model
scaling up from zero loses nothing. It prefers the request's own region and spills to another region
only when its own has no ready instance.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from opscale.model import InstanceState, Plan, Request
from opscale.routing import Candidate, RoutingPolicy, make_routing_policy
from opscale.routing.policies import LoadIndex
from opscale.services import subjects
from opscale.services.actions import Action, Dispatch, Publish, Reject
from opscale.services.events import (
    AgentHeartbeat,
    DispatchFailed,
    Event,
    PlanPublished,
    RequestArrived,
    RequestFinished,
    RouterLoad,
)


class RouterConfig(BaseModel):
    router_id: str = Field("router-0", description="Identity in RouterLoad reports")
    region: str = Field("local", description="Region this router runs in (requests without a region header "
                        "originate here); node-agents default to the same region")
    policy: str = Field("jsq_tokens", description="Routing policy name (see opscale.routing.registry)")
    max_pending_per_model: int = Field(1000, ge=0, description="Requests held while no instance is ready")
    pending_timeout_s: float = Field(120.0, gt=0, description="A held request is refused (503) after this")
    agent_timeout_s: float = Field(15.0, gt=0, description="Instances of an agent silent this long are dropped")
    spill_over: bool = Field(True, description="Serve from another region when the origin has no ready instance")
    load_report_interval_s: float = Field(1.0, gt=0, description="Period of RouterLoad reports")
    max_attempts: int = Field(3, ge=1, description="Dispatches tried per request before it fails (502)")
    models: list[str] = Field(default_factory=list, description="Models deployed here even while no instance "
                              "runs (scaled to zero): their requests are held, not refused")


@dataclass(slots=True)
class _Held:
    request: Request
    deadline_s: float


@dataclass(slots=True)
class _Agent:
    last_seen_s: float
    instance_ids: set[str] = field(default_factory=set)


class RouterCore:
    """`handle(event, now_s)` / `tick(now_s)` -> actions. See the module docstring."""

    name = "router"

    def __init__(self, config: RouterConfig | None = None, policy: RoutingPolicy | None = None) -> None:
        self.config = config or RouterConfig()
        self.policy = policy or make_routing_policy(self.config.policy)
        self._candidates: dict[str, Candidate] = {}
        # ready candidates per (model, region); rebuilt when a heartbeat changes membership
        self._ready: dict[tuple[str, str], list[Candidate]] = {}
        # The same candidates' outstanding tokens, list for list and in the same order, kept in step on
        # every dispatch and release, for a policy that chooses by load alone (`choose_by_load`, as
        # join-shortest-queue does): it finds its choice without scanning every candidate.
        self._ready_loads: dict[tuple[str, str], LoadIndex] = {}
        self._load_slot: dict[str, tuple[LoadIndex, int]] = {}  # instance_id -> (its load index, position)
        self._choose_by_load = getattr(self.policy, "choose_by_load", None)
        self._agents: dict[str, _Agent] = {}
        self._known_models: set[str] = set(self.config.models)
        self._routed: dict[str, tuple[str, int]] = {}  # request_id -> (instance_id, tokens charged)
        self._held: dict[str, deque[_Held]] = {}
        self._next_report_s = 0.0
        self._last_report_s: float | None = None
        # arrivals since the last RouterLoad: model -> [requests, prompt tokens, output tokens]
        self._arrivals: dict[str, list[int]] = {}
        # Dispatch reasons, made once: a string built per request is a measurable share of routing.
        self._reason_local = f"{self.policy.name} local"
        self._reason_spill = f"{self.policy.name} spill-over"

    # -- queries -------------------------------------------------------------------------------

    def models(self) -> list[str]:
        return sorted(self._known_models)

    def held(self) -> list[Request]:
        """Requests waiting for an instance, oldest first per model."""
        return [h.request for q in self._held.values() for h in q]

    def pending(self) -> dict[str, int]:
        return {m: len(q) for m, q in self._held.items() if q}

    def in_flight(self) -> int:
        return len(self._routed)

    def peek(self, request: Request) -> Dispatch | None:
        """Where `request` would go now, without holding or charging it: for gateways that proxy
        themselves and only ask for the decision (the gRPC Route call)."""
        local = self._ready.get((request.model, request.region))
        if not local and self.config.spill_over:
            local = [c for (model, _), cs in self._ready.items() if model == request.model for c in cs]
        if not local:
            return None
        chosen = self.policy.choose(request, local)
        return Dispatch(request, chosen.instance_id, chosen.region, chosen.endpoint, reason=f"{self.policy.name} peek")

    # -- events --------------------------------------------------------------------------------

    def handle(self, event: Event, now_s: float) -> list[Action]:
        # The two per-request events first, by exact type: cheaper than the pattern matching below.
        kind = type(event)
        if kind is RequestArrived:
            request = event.request
            self._count_arrival(request)
            return self._route(request, now_s)
        if kind is RequestFinished:
            self._release(event.outcome.request_id)
            return []
        match event:
            case RequestArrived(request=request):
                self._count_arrival(request)
                return self._route(request, now_s)
            case RequestFinished(outcome=outcome):
                self._release(outcome.request_id)
                return []
            case DispatchFailed(request=request, instance_id=instance_id, attempt=attempt):
                self._release(request.request_id)
                self._drop_candidate(instance_id)
                self._rebuild_index()
                if attempt >= self.config.max_attempts:
                    return [Reject(request, 502, f"request failed on {attempt} instances; last: {event.reason}")]
                return self._route(request, now_s)
            case AgentHeartbeat():
                self._observe_agent(event, now_s)
                return self._dispatch_held(now_s)
            case PlanPublished(plan=plan):
                self._observe_plan(plan)
                return []
            case _:
                return []

    def tick(self, now_s: float) -> list[Action]:
        actions: list[Action] = []
        for agent_id in [a for a, s in self._agents.items() if now_s - s.last_seen_s > self.config.agent_timeout_s]:
            self._forget_agent(agent_id)
        actions.extend(self._dispatch_held(now_s))
        actions.extend(self._expire_held(now_s))
        if now_s >= self._next_report_s:
            self._next_report_s = now_s + self.config.load_report_interval_s
            actions.append(Publish(subjects.router_load(self.config.region), self._load_report(now_s)))
        return actions

    def _load_report(self, now_s: float) -> RouterLoad:
        interval = 0.0 if self._last_report_s is None else now_s - self._last_report_s
        self._last_report_s = now_s
        arrivals, self._arrivals = self._arrivals, {}
        return RouterLoad(self.config.router_id, self.config.region, now_s, self.pending(), interval,
                          {m: a[0] for m, a in arrivals.items()}, {m: a[1] for m, a in arrivals.items()},
                          {m: a[2] for m, a in arrivals.items()})

    # -- routing -------------------------------------------------------------------------------

    def _count_arrival(self, request: Request) -> None:
        counts = self._arrivals.get(request.model)
        if counts is None:
            counts = self._arrivals[request.model] = [0, 0, 0]
        counts[0] += 1
        counts[1] += request.prompt_tokens
        counts[2] += request.output_tokens

    def _route(self, request: Request, now_s: float) -> list[Action]:
        if request.model not in self._known_models:
            known = ", ".join(self.models()) or "none"
            return [Reject(request, 404, f"model {request.model!r} is not served here; known models: {known}")]
        dispatch = self._try_dispatch(request)
        if dispatch is not None:
            return [dispatch]
        queue = self._held.setdefault(request.model, deque())
        if len(queue) >= self.config.max_pending_per_model:
            return [Reject(request, 429, f"no capacity for model {request.model!r} and its queue is full",
                           retry_after_s=5.0)]
        queue.append(_Held(request, now_s + self.config.pending_timeout_s))
        return []

    def _try_dispatch(self, request: Request) -> Dispatch | None:
        key = (request.model, request.region)
        local = self._ready.get(key)
        if local:
            by_load = self._choose_by_load
            chosen = (local[by_load(request, self._ready_loads[key])] if by_load is not None
                      else self.policy.choose(request, local))
            return self._dispatch(request, chosen, self._reason_local)
        if not self.config.spill_over:
            return None
        remote = [c for (model, region), cs in self._ready.items() if model == request.model
                  and region != request.region for c in cs]
        if remote:
            return self._dispatch(request, self.policy.choose(request, remote), self._reason_spill)
        return None

    def _dispatch(self, request: Request, chosen: Candidate, reason: str) -> Dispatch:
        charge = request.prompt_tokens + request.output_tokens
        chosen.outstanding_tokens += charge
        chosen.in_flight += 1
        slot = self._load_slot.get(chosen.instance_id)
        if slot is not None:
            slot[0].set(slot[1], chosen.outstanding_tokens)
        self._routed[request.request_id] = (chosen.instance_id, charge)
        return Dispatch(request, chosen.instance_id, chosen.region, chosen.endpoint, reason)

    def _release(self, request_id: str) -> None:
        routed = self._routed.pop(request_id, None)
        if routed is None:
            return  # a duplicate completion (at-least-once delivery) changes nothing
        instance_id, charge = routed
        cand = self._candidates.get(instance_id)
        if cand is not None:
            left = cand.outstanding_tokens - charge
            cand.outstanding_tokens = left = left if left > 0 else 0
            cand.in_flight = cand.in_flight - 1 if cand.in_flight > 0 else 0
            slot = self._load_slot.get(instance_id)
            if slot is not None:
                slot[0].set(slot[1], left)

    def _dispatch_held(self, now_s: float) -> list[Action]:
        actions: list[Action] = []
        for queue in self._held.values():
            while queue:
                dispatch = self._try_dispatch(queue[0].request)
                if dispatch is None:
                    break
                queue.popleft()
                actions.append(dispatch)
        return actions

    def _expire_held(self, now_s: float) -> list[Action]:
        actions: list[Action] = []
        for model, queue in self._held.items():
            while queue and queue[0].deadline_s <= now_s:
                held = queue.popleft()
                actions.append(Reject(held.request, 503, f"no instance of {model!r} became ready within "
                                      f"{self.config.pending_timeout_s:.0f} s", retry_after_s=10.0))
        return actions

    # -- instance view -------------------------------------------------------------------------

    def _observe_plan(self, plan: Plan) -> None:
        for specs in plan.assignments.values():
            self._known_models.update(s.model for s in specs)

    def _observe_agent(self, hb: AgentHeartbeat, now_s: float) -> None:
        agent = self._agents.setdefault(hb.agent_id, _Agent(now_s))
        agent.last_seen_s = now_s
        seen: set[str] = set()
        changed = False
        for st in hb.instances:
            self._known_models.add(st.model)
            ready = st.state == InstanceState.READY
            if not ready:
                continue  # loading, draining and stopped instances take no new requests
            seen.add(st.instance_id)
            if st.instance_id not in self._candidates:
                self._candidates[st.instance_id] = Candidate(st.instance_id, st.model, hb.region, st.endpoint,
                                                             hb.agent_id)
                changed = True
        for gone in agent.instance_ids - seen:
            self._drop_candidate(gone)
            changed = True
        agent.instance_ids = seen
        if changed:
            self._rebuild_index()

    def _forget_agent(self, agent_id: str) -> None:
        agent = self._agents.pop(agent_id)
        for instance_id in agent.instance_ids:
            self._drop_candidate(instance_id)
        self._rebuild_index()

    def _drop_candidate(self, instance_id: str) -> None:
        # Requests already routed there keep their accounting entry until they finish; the candidate
        # object only stops receiving new work.
        self._candidates.pop(instance_id, None)

    def _rebuild_index(self) -> None:
        index: dict[tuple[str, str], list[Candidate]] = {}
        for cand in sorted(self._candidates.values(), key=lambda c: c.instance_id):
            index.setdefault((cand.model, cand.region), []).append(cand)
        self._ready = index
        self._ready_loads = {key: LoadIndex([c.outstanding_tokens for c in cands]) for key, cands in index.items()}
        self._load_slot = {c.instance_id: (self._ready_loads[key], i)
                           for key, cands in index.items() for i, c in enumerate(cands)}
