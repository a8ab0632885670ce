"""The router's state machine: which instance serves each request.

It learns instances from agent heartbeats, keeps its own count of outstanding tokens per instance (the
one owner of that fact: it changes on every dispatch and completion, far faster than heartbeats), and
holds requests in a bounded queue while no instance can take them (a cold start, or every instance at
the admission limit), so that a model scaling up from zero loses nothing. It prefers the request's own
region and spills to another region only when its own has no ready instance (or, with the multi_region
policy, when its own instances are saturated).

Candidates are kept per (model, region) pool, each with a load index over outstanding tokens and, for a
policy that keeps one (see opscale.routing.hooks.IndexedRoutingPolicy), the policy's own index; both
are told of every change to a candidate, so a decision never scans the pool. Which of its optional
hooks a policy offers (the protocols of opscale.routing.hooks) is checked once, when the core is built. The multi_region policy
is fed, per request, every region's least outstanding tokens and the newest plan's `routing_weights`
for the request's (model, origin region).

A newly ready instance is eased in (`slow_start_s`, as Envoy's and nginx's slow start): it joins
empty, and a policy ranking by outstanding tokens would send it every request until it holds as many as
the instances that were already serving, a burst of prefills that misses first-token objectives. So for
`slow_start_s` its load counts as if it also held its pool's mean outstanding tokens (of the other
instances of its model, region and role), a phantom that decays linearly to nothing over the window: its
share of new requests ramps up, and after the window it is treated as any other. The phantom is added to
the candidate's counts (`Candidate.slow_start_tokens`) when it joins and renewed on each tick, never on
the per-request path. It never holds back a request the instance has room for: admission reads real
loads, and when a pool is full but for an instance whose phantom closes it, that slow start ends.

An instance stops taking new work the moment the router learns it is leaving, not at its next
heartbeat: when a heartbeat reports it draining, and when the newest plan no longer assigns an instance
an earlier plan did (the planner is scaling it in; its agent drains it shortly). A request whose
dispatch failed is routed again to an instance it has not tried yet, up to `max_attempts` in all.

A disaggregated model's instances (role prefill or decode) form, per (model, region), a prefill list and
a decode list apart from the unified pools. Its request is dispatched as a pair (`Dispatch` with a
`decode_instance_id`), chosen by opscale.routing.pd_pairing (the configured policy when it is
`pd_pairing`, else one with default parameters): prefill on the instance with the fewest outstanding
prefill tokens, decode by KV use, near the prefill. The request counts against both until the prefill
is handed off (`PrefillHandedOff`), then against the decode instance until it finishes. A pair needs
both roles ready in one region: the origin's first, another region's with spill-over.

Discovery follows the plan beyond its assignments. An instance the plan lists as withdrawn (a soft
scale-in, `Plan.withdrawn`) takes no new request while it keeps running; when a newer plan restores it,
it is a candidate again at once, from its agent's newest heartbeat (no load, no wait for the next
heartbeat). For a model the plan names in `Plan.ready_ratio_tolerance`, the Ready-ratio gate
(opscale.routing.ready_gate) holds back newly ready instances of the role that is over-represented
against the plan's P/D split, until the other role catches up.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydantic import BaseModel, Field, model_validator

from opscale.model import InstanceState, Plan, Request, Role, TierSpec
from opscale.model.tiers import DEFAULT_TIERS
from opscale.routing import (
    Candidate,
    CandidateIndex,
    HoldQueue,
    IndexedRoutingPolicy,
    KvRoutingPolicy,
    LoadIndex,
    LoadRoutingPolicy,
    NotingRoutingPolicy,
    RegionRoutingPolicy,
    RoutingPolicy,
    make_hold_queue,
    make_routing_policy,
)
from opscale.routing.pd_pairing import PdPairing
from opscale.routing.prefix_index import KvIndexStats, PrefixIndex
from opscale.routing.ready_gate import paused
from opscale.services import subjects
from opscale.services.actions import Action, Dispatch, Publish, Reject
from opscale.services.events import (
    AgentHeartbeat,
    DispatchFailed,
    Event,
    KvEventBatch,
    PlanPublished,
    PrefillHandedOff,
    RequestArrived,
    RequestFinished,
    RouterLoad,
)


class RouterConfig(BaseModel):
    router_id: str = Field("router-0", description="Identity in RouterLoad reports")
    region: str = Field("local", description="Region this router runs in (requests without a region header "
                        "originate here); node-agents default to the same region")
    policy: str = Field("jsq_tokens", description="Routing policy name (see opscale.routing.registry)")
    policy_params: dict[str, Any] = Field(default_factory=dict, description="Parameters of the routing policy")
    hold_order: str = Field("fifo", description="Order of held requests: fifo or tier_priority (interactive "
                            "first; latency-insensitive tiers may wait up to their deadline)")
    hold_order_params: dict[str, Any] = Field(default_factory=dict, description="Parameters of the hold order "
                                              "(tier_priority: deadline_slack_s)")
    max_outstanding_tokens_per_instance: int | None = Field(
        None, ge=1, description="Admission limit: while every ready instance of a model has this many "
        "outstanding tokens or more, its requests are held (in hold order) instead of dispatched; None: no limit")
    batch_admission_share: float | None = Field(
        None, gt=0, le=1, description="Tier-priority holding (SageServe's NIW deferral): a request of a tier "
        "with a deadline is dispatched only to an instance whose outstanding tokens are below this share of its "
        "KV capacity (of the admission limit where the capacity is unknown), in its region or, with spill_over, "
        "another; otherwise it is held and fed as capacity frees, until its latest start (hold order "
        "tier_priority), when it is admitted like interactive work. None: batch is admitted like interactive "
        "work. Disaggregated models' batch requests are not held this way")
    max_pending_per_model: int = Field(1000, ge=0, description="Requests held while no instance is ready")
    max_pending_total: int | None = Field(
        None, ge=0, description="Requests held over all models together; beyond it a request is refused "
        "(429); None: only the per-model bound applies")
    pending_retry_after_s: float = Field(5.0, gt=0, description="Retry-After of a refusal because the hold "
                                         "queue is full")
    pending_timeout_s: float = Field(120.0, gt=0, description="A held request is refused (503) after this")
    agent_timeout_s: float = Field(15.0, gt=0, description="Instances of an agent silent this long are dropped")
    spill_over: bool = Field(True, description="Serve from another region when the origin has no ready instance")
    load_report_interval_s: float = Field(1.0, gt=0, description="Period of RouterLoad reports")
    max_attempts: int = Field(3, ge=1, description="Dispatches tried per request before it fails (502)")
    models: list[str] = Field(default_factory=list, description="Models deployed here even while no instance "
                              "runs (scaled to zero): their requests are held, not refused")
    slow_start_s: float = Field(
        10.0, ge=0, description="Slow start: over this many seconds after an instance becomes ready, its "
        "load counts as if it also held its pool's mean outstanding tokens, decaying linearly to its own, so "
        "its share of new requests ramps up instead of it taking every request until it holds as many "
        "tokens as the others; 0: off")

    @model_validator(mode="after")
    def _batch_holding(self) -> RouterConfig:
        if self.batch_admission_share is not None and self.hold_order != "tier_priority":
            raise ValueError(f"batch_admission_share holds batch work by tier: it needs hold_order "
                             f"'tier_priority', not {self.hold_order!r}")
        return self


@dataclass(slots=True)
class _Agent:
    last_seen_s: float
    instance_ids: set[str] = field(default_factory=set)  # ready ones: the router's candidates
    reported: set[str] = field(default_factory=set)  # every instance of its newest heartbeat, in any state
    last: AgentHeartbeat | None = None  # its newest heartbeat: replayed when a plan restores an instance


@dataclass(slots=True)
class _Slot:
    """Where one candidate sits: its pool's load index and policy index, and its position in both."""

    loads: LoadIndex
    index: CandidateIndex | None
    position: int


class RouterCore:
    """`handle(event, now_s)` / `tick(now_s)` -> actions. See the module docstring."""

    name = "router"

    def __init__(self, config: RouterConfig | None = None, policy: RoutingPolicy | None = None,
                 tiers: Mapping[str, TierSpec] | None = None) -> None:
        self.config = config or RouterConfig()
        self.tiers = dict(tiers) if tiers is not None else dict(DEFAULT_TIERS)
        self.policy = policy or make_routing_policy(self.config.policy, self.config.policy_params, tiers=self.tiers)
        # a bad name or parameter fails here, not at the first held request; the order also tells when a
        # held batch request's deadline is near (its latest start)
        self._order = make_hold_queue(self.config.hold_order, self.config.pending_timeout_s,
                                      self.config.hold_order_params, tiers=self.tiers)
        # The policy's optional hooks, found once (opscale.routing.hooks). A region-choosing policy
        # (multi_region) picks the region; its inner policy picks the instance.
        policy = self.policy
        self._choose_region = policy.choose_region if isinstance(policy, RegionRoutingPolicy) else None
        chooser: RoutingPolicy = policy.inner if isinstance(policy, RegionRoutingPolicy) else policy
        self._chooser = chooser
        self._index_policy = chooser if isinstance(chooser, IndexedRoutingPolicy) else None
        self._choose_by_load = (chooser.choose_by_load if self._index_policy is None
                                and isinstance(chooser, LoadRoutingPolicy) else None)
        # kv_aware follows the instances' KV caches: it is told of KV events, dispatches and departures
        self._kv = chooser if isinstance(chooser, KvRoutingPolicy) else None
        # slo_aware marks requests likely to miss their TTFT
        self._note = policy.note if isinstance(policy, NotingRoutingPolicy) else None
        self._admission_limit = self.config.max_outstanding_tokens_per_instance
        # Tier-priority holding: the tiers whose requests are held for room until their latest start.
        self._deferred_tiers = ({name for name, t in self.tiers.items() if t.deadline_s is not None}
                                if self.config.batch_admission_share is not None else set())
        self._candidates: dict[str, Candidate] = {}
        # ready candidates per (model, region); rebuilt when a heartbeat changes membership
        self._ready: dict[tuple[str, str], list[Candidate]] = {}
        # The same candidates' outstanding tokens, list for list and in the same order, kept in step on
        # every dispatch and release (admission, spill-over and `choose_by_load` read them), and the
        # policy's own index of each pool when it keeps one.
        self._ready_loads: dict[tuple[str, str], LoadIndex] = {}
        self._policy_index: dict[tuple[str, str], CandidateIndex] = {}
        self._regions: dict[str, dict[str, LoadIndex]] = {}  # model -> region -> its pool's load index
        self._slot: dict[str, _Slot] = {}  # instance_id -> where it sits
        self._weights: dict[tuple[str, str], dict[str, float]] = {}  # (model, origin) -> {region: weight}
        self._agents: dict[str, _Agent] = {}
        self._known_models: set[str] = set(self.config.models)
        # request_id -> (instance_id, tokens charged, prompt tokens charged)
        self._routed: dict[str, tuple[str, int, int]] = {}
        # Disaggregated models: (model, region) -> (prefill candidates, decode candidates), and a request
        # paired there, until its prefill is handed off -> (decode instance_id, tokens charged to it).
        self._pd_ready: dict[tuple[str, str], tuple[list[Candidate], list[Candidate]]] = {}
        self._pd_models: set[str] = set()
        # request id -> (decode instance, prompt, output tokens) until it ends; its `_routed` entry names the
        # prefill instance until the hand-off, the decode instance after it
        self._pd: dict[str, tuple[str, int, int]] = {}
        self._pairing = self._chooser if isinstance(self._chooser, PdPairing) else PdPairing()
        # request_id -> instances whose dispatch of it failed: a retry goes elsewhere
        self._tried: dict[str, set[str]] = {}
        # The newest plan's epoch and instances; instances an earlier plan assigned and the newest does
        # not are being scaled in and take no new work, even while their heartbeat still says ready.
        self._plan_epoch = -1
        self._planned: set[str] = set()
        self._leaving: set[str] = set()
        # Assigned but withdrawn from discovery by a soft scale-in (the newest plan's `withdrawn`).
        self._hidden: set[str] = set()
        # Ready-ratio gate (opscale.routing.ready_gate): model -> tolerance, (model, region) -> the plan's
        # discoverable (prefill, decode) counts, and the disaggregated instances already admitted.
        self._gates: dict[str, float] = {}
        self._planned_split: dict[tuple[str, str], tuple[int, int]] = {}
        self._admitted: set[str] = set()
        self._held: dict[str, HoldQueue] = {}
        # Slow start: instance id -> when it became a candidate, while in its window (see the module docstring)
        self._ramping: dict[str, float] = {}
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

    def serves(self, model: str) -> bool:
        """True for a model this router knows (configured, planned or heartbeating): the check a request
        passes before it becomes state anywhere (held, recorded, windowed)."""
        return model in self._known_models

    def held(self) -> list[Request]:
        """Requests waiting for an instance, per model in dispatch order (fifo: oldest first)."""
        return [r for q in self._held.values() for r in q.requests()]

    def pending(self) -> dict[str, int]:
        return {m: len(q) for m, q in self._held.items() if len(q)}

    def in_flight(self) -> int:
        return len(self._routed)

    def follows_kv_events(self) -> bool:
        """The routing policy reads the engines' KV events (kv_aware): the live router subscribes to them."""
        return self._kv is not None

    def kv_index_stats(self) -> KvIndexStats | None:
        """What the policy's prefix index applied and refused, when it keeps one."""
        index = getattr(self._kv, "index", None)
        return index.stats if isinstance(index, PrefixIndex) else None

    def agents(self) -> list[str]:
        """The agents this router hears from (its view of the fleet)."""
        return sorted(self._agents)

    def ready_instances(self, model: str) -> list[str]:
        """The instances of `model` this router may dispatch to now, in any region."""
        return sorted(c.instance_id for (m, _), cs in self._ready.items() if m == model for c in cs)

    def plan_epoch(self) -> int:
        """The epoch of the newest plan this router follows (-1 before the first)."""
        return self._plan_epoch

    def routing_weights(self, model: str, origin: str) -> dict[str, float] | None:
        """The newest plan's share of (model, origin)'s demand per serving region, if it names one."""
        return self._weights.get((model, origin))

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
            if self._tried:
                self._tried.pop(event.outcome.request_id, None)
            if self._held and (self._admission_limit is not None or self._deferred_tiers):
                return self._dispatch_held(now_s)  # capacity freed under the admission limit or batch share
            return []
        match event:
            case DispatchFailed(request=request, instance_id=instance_id, attempt=attempt):
                self._release(request.request_id)
                # Suspect until its agent's next heartbeat says otherwise; never tried again by this request.
                if self._candidates.pop(instance_id, None) is not None:
                    self._rebuild_index()
                if attempt >= self.config.max_attempts:
                    self._tried.pop(request.request_id, None)
                    return [Reject(request, 502, f"request failed on {attempt} instances; last: {event.reason}")]
                self._tried.setdefault(request.request_id, set()).add(instance_id)
                actions = self._route(request, now_s)
                if actions and isinstance(actions[0], Reject):
                    self._tried.pop(request.request_id, None)
                return actions
            case AgentHeartbeat():
                self._observe_agent(event, now_s, now_s)
                return self._dispatch_held(now_s)
            case PlanPublished(plan=plan):
                self._observe_plan(plan, now_s)
                return self._dispatch_held(now_s) if self._held else []  # a restored instance takes them now
            case PrefillHandedOff(request_id=request_id):
                self._hand_off(request_id)
                return []
            case KvEventBatch(instance_id=instance_id):
                if self._kv is not None:  # other policies have no use for them
                    # Only a candidate's events count: one that left (or never came) would hold index
                    # entries that no decision reads and nothing removes.
                    self._kv.observe_kv(event, isinstance(instance_id, str) and instance_id in self._candidates)
                return []
            case _:
                return []

    def tick(self, now_s: float) -> list[Action]:
        actions: list[Action] = []
        for agent_id in [a for a, s in self._agents.items() if now_s - s.last_seen_s > self.config.agent_timeout_s]:
            self._forget_agent(agent_id)
        if self._ramping:
            self._ramp(now_s)
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
        # Held requests have first claim on capacity: they are dispatched whenever some frees (a release
        # under the admission limit, a heartbeat, a tick), so a newcomer that finds room takes none of theirs.
        dispatch = self._admit(request, now_s)
        if dispatch is not None:
            return [dispatch]
        queue = self._held.get(request.model)
        if queue is None:
            queue = self._held[request.model] = make_hold_queue(
                self.config.hold_order, self.config.pending_timeout_s, self.config.hold_order_params, tiers=self.tiers)
        if len(queue) >= self.config.max_pending_per_model:
            return [Reject(request, 429, f"no capacity for model {request.model!r} and its queue is full "
                           f"({self.config.max_pending_per_model} held)",
                           retry_after_s=self.config.pending_retry_after_s)]
        total_limit = self.config.max_pending_total
        if total_limit is not None and sum(len(q) for q in self._held.values()) >= total_limit:
            return [Reject(request, 429, f"no capacity for model {request.model!r} and the router's queue is "
                           f"full ({total_limit} held over all models)",
                           retry_after_s=self.config.pending_retry_after_s)]
        queue.push(request, now_s)
        return []

    def _admit(self, request: Request, now_s: float) -> Dispatch | None:
        """Dispatch `request` if its tier may take the room there is: a batch request under tier-priority
        holding only where an instance has batch room, until its latest start (see batch_admission_share)."""
        if (request.tier not in self._deferred_tiers or (self._pd_models and request.model in self._pd_models)
                or now_s >= self._order.latest_start(request)):
            return self._try_dispatch(request)
        share = self.config.batch_admission_share
        assert share is not None  # deferred tiers exist only with it
        tried = self._tried.get(request.request_id, ()) if self._tried else ()
        limit = self._admission_limit

        def roomy(cands: list[Candidate]) -> list[Candidate]:
            # an instance whose capacity is unknown (and no admission limit) holds nothing back
            # (a slow start's phantom load is no load: room is what the instance really has)
            return [c for c in cands if c.instance_id not in tried and (limit is None or _real_load(c) < limit)
                    and (not (c.kv_capacity_tokens or limit) or (c.kv_capacity_tokens or limit or 0) * share
                         > _real_load(c))]

        local = roomy(self._ready.get((request.model, request.region), []))
        if local:
            return self._dispatch_to(request, self._chooser.choose(request, local), self._reason_local)
        if self.config.spill_over:
            remote = roomy([c for (model, region), cs in self._ready.items()
                            if model == request.model and region != request.region for c in cs])
            if remote:
                return self._dispatch_to(request, self._chooser.choose(request, remote), self._reason_spill)
        return None

    def _open(self, loads: LoadIndex) -> bool:
        """Whether a pool may take a request: some instance is below the admission limit."""
        limit = self._admission_limit
        return limit is None or loads.least() < limit or (bool(self._ramping) and self._open_ramping(loads))

    def _open_ramping(self, loads: LoadIndex) -> bool:
        """A pool closed by the admission limit that has an instance in its slow start with room under its
        phantom load: its slow start ends, so that it takes the requests it has room for (which would
        otherwise be held while it idles). Runs only while some instance ramps and a pool is full."""
        limit = self._admission_limit
        assert limit is not None
        opened = False
        for instance_id in list(self._ramping):
            slot, cand = self._slot.get(instance_id), self._candidates.get(instance_id)
            if (slot is not None and cand is not None and slot.loads is loads
                    and _real_load(cand) < limit):
                del self._ramping[instance_id]
                self._set_phantom(cand, 0, 0)
                opened = True
        return opened

    def _try_dispatch(self, request: Request) -> Dispatch | None:
        if self._pd_models and request.model in self._pd_models:
            return self._try_dispatch_pair(request)
        if self._tried and request.request_id in self._tried:
            return self._try_dispatch_untried(request, self._tried[request.request_id])
        if self._choose_region is not None:
            return self._try_dispatch_by_region(request)
        key = (request.model, request.region)
        local = self._ready.get(key)
        if local and (self._admission_limit is None or self._open(self._ready_loads[key])):
            return self._dispatch(request, local, key, self._reason_local)
        if not self.config.spill_over:
            return None
        remote = [c for (model, region), cs in self._ready.items() if model == request.model
                  and region != request.region and self._open(self._ready_loads[(model, region)]) for c in cs]
        if remote:
            return self._dispatch_to(request, self._chooser.choose(request, remote), self._reason_spill)
        return None

    def _try_dispatch_pair(self, request: Request) -> Dispatch | None:
        """A disaggregated model's request: a (prefill, decode) pair of one region, among the instances
        below the admission limit that this request has not failed on; the origin region first."""
        tried = self._tried.get(request.request_id, ()) if self._tried else ()
        regions = [request.region]
        if self.config.spill_over:
            regions += sorted(r for (m, r) in self._pd_ready if m == request.model and r != request.region)
        for region in regions:
            pools = self._pd_ready.get((request.model, region))
            if pools is None:
                continue
            prefill, decode = self._open_untried(pools[0], tried), self._open_untried(pools[1], tried)
            if prefill and decode:
                p, d = self._pairing.choose_pair(request, prefill, decode)
                return self._dispatch_pair(request, p, d,
                                           self._reason_local if region == request.region else self._reason_spill)
        return None

    def _dispatch_pair(self, request: Request, prefill: Candidate, decode: Candidate, reason: str) -> Dispatch:
        prompt, output = request.prompt_tokens, request.output_tokens
        prefill.outstanding_tokens += prompt
        prefill.outstanding_prefill_tokens += prompt
        prefill.in_flight += 1
        decode.outstanding_tokens += output
        decode.in_flight += 1
        decode.kv_inflight_tokens += prompt + output
        self._pd[request.request_id] = (decode.instance_id, prompt, output)
        self._routed[request.request_id] = (prefill.instance_id, prompt, prompt)
        return Dispatch(request, prefill.instance_id, prefill.region, prefill.endpoint, reason,
                        decode.instance_id, decode.endpoint)

    def _hand_off(self, request_id: str) -> None:
        """The prefill is done: the request now counts against its decode instance only."""
        pd, routed = self._pd.get(request_id), self._routed.get(request_id)
        if pd is None or routed is None or routed[0] == pd[0]:
            return  # a duplicate, or a request no longer routed
        self._uncharge(*routed)  # its KV stays charged to the decode instance until it ends
        self._routed[request_id] = (pd[0], pd[2], 0)

    def _open_untried(self, cands: list[Candidate], tried: Collection[str]) -> list[Candidate]:
        """The candidates below the admission limit (by their real load, less any slow-start phantom) that
        the request has not failed on."""
        limit = self._admission_limit
        return [c for c in cands if c.instance_id not in tried
                and (limit is None or _real_load(c) < limit)]

    def _try_dispatch_untried(self, request: Request, tried: set[str]) -> Dispatch | None:
        """A retry: the policy chooses among the open instances this request has not failed on, its own
        region first. Rare, so it filters the pools rather than keeping an index without them."""
        untried = partial(self._open_untried, tried=tried)
        local = untried(self._ready.get((request.model, request.region), []))
        if local:
            return self._dispatch_to(request, self._chooser.choose(request, local), self._reason_local)
        if not self.config.spill_over:
            return None
        remote = untried([c for (model, region), cs in self._ready.items()
                          if model == request.model and region != request.region for c in cs])
        if remote:
            return self._dispatch_to(request, self._chooser.choose(request, remote), self._reason_spill)
        return None

    def _try_dispatch_by_region(self, request: Request) -> Dispatch | None:
        regions = self._regions.get(request.model)
        choose_region = self._choose_region
        if not regions or choose_region is None:
            return None
        if self._admission_limit is not None or not self.config.spill_over:
            regions = {r: loads for r, loads in regions.items()
                       if self._open(loads) and (self.config.spill_over or r == request.region)}
        region = choose_region(request, regions, self._weights.get((request.model, request.region)))
        if region is None:
            return None
        key = (request.model, region)
        return self._dispatch(request, self._ready[key], key,
                              self._reason_local if region == request.region else self._reason_spill)

    def _dispatch(self, request: Request, pool: list[Candidate], key: tuple[str, str], reason: str) -> Dispatch:
        """Dispatch `request` to the instance the policy chooses in one (model, region) pool."""
        index_policy = self._index_policy
        if index_policy is not None:
            chosen = pool[index_policy.choose_indexed(request, pool, self._policy_index[key])]
        elif self._choose_by_load is not None:
            chosen = pool[self._choose_by_load(request, self._ready_loads[key])]
        else:
            chosen = self._chooser.choose(request, pool)
        return self._dispatch_to(request, chosen, reason)

    def _dispatch_to(self, request: Request, chosen: Candidate, reason: str) -> Dispatch:
        prompt = request.prompt_tokens
        charge = prompt + request.output_tokens
        chosen.outstanding_tokens += charge
        chosen.outstanding_prefill_tokens += prompt
        chosen.in_flight += 1
        slot = self._slot.get(chosen.instance_id)  # _touch, inlined: this runs per request
        if slot is not None:
            slot.loads.set(slot.position, chosen.outstanding_tokens)
            if slot.index is not None:
                slot.index.update(slot.position)
        self._routed[request.request_id] = (chosen.instance_id, charge, prompt)
        if self._kv is not None:
            self._kv.routed(request, chosen)
        if self._note is not None:
            note = self._note(request, chosen)
            if note is not None:
                reason = f"{reason}; {note}"
        return Dispatch(request, chosen.instance_id, chosen.region, chosen.endpoint, reason)

    def _touch(self, cand: Candidate) -> None:
        """Bring the indexes of `cand`'s pool up to date with it."""
        slot = self._slot.get(cand.instance_id)
        if slot is not None:
            slot.loads.set(slot.position, cand.outstanding_tokens)
            if slot.index is not None:
                slot.index.update(slot.position)

    def _release(self, request_id: str) -> None:
        routed = self._routed.pop(request_id, None)
        if routed is None:
            return  # a duplicate completion (at-least-once delivery) changes nothing
        if self._pd:
            pd = self._pd.pop(request_id, None)
            if pd is not None:
                decode = self._candidates.get(pd[0])
                if decode is not None:
                    decode.kv_inflight_tokens = max(0, decode.kv_inflight_tokens - pd[1] - pd[2])
                if routed[0] != pd[0]:  # released before its hand-off (a failure): the decode side too
                    self._uncharge(pd[0], pd[2], 0)
        self._uncharge(*routed)

    def _uncharge(self, instance_id: str, charge: int, prompt: int) -> None:
        cand = self._candidates.get(instance_id)
        if cand is not None:
            cand.outstanding_tokens = max(0, cand.outstanding_tokens - charge)
            cand.outstanding_prefill_tokens = max(0, cand.outstanding_prefill_tokens - prompt)
            cand.in_flight = max(0, cand.in_flight - 1)
            self._touch(cand)

    def _dispatch_held(self, now_s: float) -> list[Action]:
        actions: list[Action] = []
        for queue in self._held.values():
            if len(queue):
                actions.extend(self._dispatch_held_model(queue, now_s))
        return actions

    def _dispatch_held_model(self, queue: HoldQueue, now_s: float) -> list[Action]:
        actions: list[Action] = []
        while len(queue):
            request = queue.peek(now_s)
            assert request is not None  # the queue is not empty
            dispatch = self._admit(request, now_s)
            if dispatch is None:
                break
            queue.pop(now_s)
            actions.append(dispatch)
        return actions

    def _expire_held(self, now_s: float) -> list[Action]:
        actions: list[Action] = []
        for model, queue in self._held.items():
            for gone in queue.expire(now_s):
                self._tried.pop(gone.request.request_id, None)
                actions.append(Reject(gone.request, 503, f"no instance of {model!r} could take it within "
                                      f"{gone.waited_limit_s:.0f} s", retry_after_s=10.0))
        return actions

    # -- instance view -------------------------------------------------------------------------

    def _observe_plan(self, plan: Plan, now_s: float) -> None:
        if plan.epoch <= self._plan_epoch:
            return  # a redelivered or reordered older plan changes nothing
        self._plan_epoch = plan.epoch
        for specs in plan.assignments.values():
            self._known_models.update(s.model for s in specs)
        # the newest plan's weights replace the previous ones whole: a pair it no longer names has none
        self._weights = {key: dict(w) for key, w in plan.routing_weights.items()}
        planned = {s.instance_id for specs in plan.assignments.values() for s in specs}
        # Leaving ids are kept while some agent still reports the instance; once it is gone for good
        # the id is forgotten, so the set stays as small as the fleet.
        reported = {i for agent in self._agents.values() for i in agent.reported}
        self._leaving = {i for i in (self._leaving | self._planned) - planned if i in reported}
        self._planned = planned
        restored = self._hidden - set(plan.withdrawn)
        self._hidden = set(plan.withdrawn)
        gates = dict(plan.ready_ratio_tolerance)
        split: dict[tuple[str, str], list[int]] = {}
        for agent_id, specs in plan.assignments.items():
            for spec in specs:
                if spec.role is not Role.UNIFIED and spec.instance_id not in self._hidden:
                    counts = split.setdefault((spec.model, plan.agent_regions.get(agent_id, "")), [0, 0])
                    counts[spec.role is Role.DECODE] += 1
        split_t = {key: (p, d) for key, (p, d) in split.items()}
        regate = gates != self._gates or (gates and split_t != self._planned_split)
        self._gates, self._planned_split = gates, split_t
        gone = [i for i in self._leaving | self._hidden if i in self._candidates]
        for instance_id in gone:
            self._drop_candidate(instance_id)
        # A restored instance serves again at once: its agent's newest heartbeat makes it a candidate.
        for agent in list(self._agents.values()):
            if restored & agent.reported and agent.last is not None:
                self._observe_agent(agent.last, agent.last_seen_s, now_s)
        if gone or regate:
            self._rebuild_index()

    def _observe_agent(self, hb: AgentHeartbeat, seen_s: float, now_s: float) -> None:
        """Take `hb` (received at `seen_s`) as its agent's newest view of its instances, at `now_s`."""
        agent = self._agents.setdefault(hb.agent_id, _Agent(seen_s))
        agent.last_seen_s = seen_s
        seen: set[str] = set()
        changed = False
        agent.reported = {st.instance_id for st in hb.instances}
        agent.last = hb
        leaving, hidden = self._leaving, self._hidden
        for st in hb.instances:
            self._known_models.add(st.model)
            ready = st.state == InstanceState.READY
            if not ready or (leaving and st.instance_id in leaving) or (hidden and st.instance_id in hidden):
                continue  # loading, draining, stopped, planned-away and withdrawn instances take no new requests
            seen.add(st.instance_id)
            kv = st.kv_used_frac
            kv = kv if 0.0 <= kv <= 1.0 else (1.0 if kv > 1.0 else 0.0)  # NaN and negatives: unknown, 0
            cand = self._candidates.get(st.instance_id)
            if cand is None:
                self._candidates[st.instance_id] = Candidate(st.instance_id, st.model, hb.region, st.endpoint,
                                                             hb.agent_id, kv_usage=kv, sku=hb.sku, tp=st.tp,
                                                             role=st.role, s0=hb.s0, s1=hb.s1, s2=hb.s2,
                                                             kv_capacity_tokens=st.kv_capacity_tokens)
                if self.config.slow_start_s > 0:
                    self._ramping[st.instance_id] = now_s
                changed = True
            else:
                cand.kv_capacity_tokens = st.kv_capacity_tokens
                if cand.kv_usage != kv:
                    cand.kv_usage = kv
                    if not changed:
                        self._touch(cand)  # a rebuild below would read it anyway
        for gone in agent.instance_ids - seen:
            self._drop_candidate(gone)
            changed = True
        agent.instance_ids = seen
        if changed:
            self._rebuild_index()
            if self._ramping:
                self._ramp(now_s)  # a newcomer gets its phantom load before it can take a request

    def _ramp(self, now_s: float) -> None:
        """Slow start: renew the phantom load of each instance in its window (its pool's mean real load
        over the other instances, times the share of the window left), and let go of those past it (see
        the module docstring). Runs on ticks and when instances join, never per request."""
        window = self.config.slow_start_s
        for instance_id, since_s in list(self._ramping.items()):
            cand = self._candidates.get(instance_id)
            if cand is None:
                del self._ramping[instance_id]
                continue
            left = 1.0 - (now_s - since_s) / window
            phantom = phantom_prefill = 0
            if left <= 0.0:
                del self._ramping[instance_id]
            else:
                key = (cand.model, cand.region)
                pool = (self._ready.get(key, []) if cand.role is Role.UNIFIED
                        else self._pd_ready.get(key, ([], []))[cand.role is Role.DECODE])
                others = [c for c in pool if c is not cand]
                if others:
                    n = len(others)
                    phantom = int(left * sum(_real_load(c) for c in others) / n)
                    phantom_prefill = int(left * sum(c.outstanding_prefill_tokens - c.slow_start_prefill_tokens
                                                     for c in others) / n)
                    phantom_prefill = min(phantom_prefill, phantom)
            self._set_phantom(cand, phantom, phantom_prefill)

    def _set_phantom(self, cand: Candidate, tokens: int, prefill_tokens: int) -> None:
        """Make `cand`'s slow-start phantom load `tokens` (of them `prefill_tokens` prompt tokens) on top
        of its real counts, and bring its pool's indexes up to date."""
        if tokens == cand.slow_start_tokens and prefill_tokens == cand.slow_start_prefill_tokens:
            return
        cand.outstanding_tokens = max(0, cand.outstanding_tokens - cand.slow_start_tokens) + tokens
        cand.outstanding_prefill_tokens = (max(0, cand.outstanding_prefill_tokens - cand.slow_start_prefill_tokens)
                                           + prefill_tokens)
        cand.slow_start_tokens, cand.slow_start_prefill_tokens = tokens, prefill_tokens
        self._touch(cand)

    def _gate(self, pd_pools: dict[tuple[str, str], tuple[list[Candidate], list[Candidate]]]
              ) -> dict[tuple[str, str], tuple[list[Candidate], list[Candidate]]]:
        """The disaggregated pools less what the Ready-ratio gate holds back (see the module docstring)."""
        gated = {}
        for key, (prefill, decode) in pd_pools.items():
            tolerance = self._gates.get(key[0])
            planned = self._planned_split.get(key)
            if tolerance is None or planned is None:
                gated[key] = (prefill, decode)
                continue
            held = paused([c.instance_id for c in prefill], [c.instance_id for c in decode], self._admitted,
                          planned, tolerance)
            gated[key] = ([c for c in prefill if c.instance_id not in held],
                          [c for c in decode if c.instance_id not in held])
        return gated

    def _forget_agent(self, agent_id: str) -> None:
        agent = self._agents.pop(agent_id)
        for instance_id in agent.instance_ids:
            self._drop_candidate(instance_id)
        self._rebuild_index()

    def _drop_candidate(self, instance_id: str) -> None:
        # Requests already routed there keep their accounting entry until they finish; the candidate
        # object only stops receiving new work. What its KV cache held no longer draws requests.
        self._candidates.pop(instance_id, None)
        self._ramping.pop(instance_id, None)
        if self._kv is not None:
            self._kv.forget_instance(instance_id)

    def _rebuild_index(self) -> None:
        pools: dict[tuple[str, str], list[Candidate]] = {}
        pd_pools: dict[tuple[str, str], tuple[list[Candidate], list[Candidate]]] = {}
        for cand in sorted(self._candidates.values(), key=lambda c: c.instance_id):
            if cand.role is Role.UNIFIED:
                pools.setdefault((cand.model, cand.region), []).append(cand)
            else:
                lists = pd_pools.setdefault((cand.model, cand.region), ([], []))
                lists[cand.role is Role.DECODE].append(cand)
        if self._gates:
            pd_pools = self._gate(pd_pools)
        if pd_pools or self._admitted:
            self._admitted = {c.instance_id for p, d in pd_pools.values() for c in (*p, *d)}
        self._pd_ready = pd_pools
        self._pd_models = {model for model, _ in pd_pools}
        self._ready = pools
        self._ready_loads = {key: LoadIndex([c.outstanding_tokens for c in cands]) for key, cands in pools.items()}
        index_policy = self._index_policy
        self._policy_index = ({key: index_policy.build_index(cands, self._ready_loads[key])
                               for key, cands in pools.items()} if index_policy is not None else {})
        self._regions = {}
        for (model, region), loads in self._ready_loads.items():
            self._regions.setdefault(model, {})[region] = loads
        self._slot = {c.instance_id: _Slot(self._ready_loads[key], self._policy_index.get(key), i)
                      for key, cands in pools.items() for i, c in enumerate(cands)}


def _real_load(cand: Candidate) -> int:
    """A candidate's outstanding tokens without its slow-start phantom: what admission and room read."""
    return cand.outstanding_tokens - cand.slow_start_tokens
