"""The simulation shell: every service core of opscale, hosted on one virtual clock.

It plays the part the live runtime plays with NATS, gRPC and HTTP: it delivers events to the cores,
performs their actions (publish on the in-process bus, dispatch a request to an instance, send a command
to an agent, start or stop a simulated engine), and drives each simulated engine from event to event.
The cores are the very objects the live services run; only the shell differs.

Request records (one per finished or refused request, for the aggregator) do not travel as one bus
event each: the world queues them and hands them to the aggregator in a batch just before the
aggregator next runs (a heartbeat, its tick) and whenever the loop stops. Each record is handled with
the time and in the order it would have had as a bus event (its delivery time and a sequence number
taken from the loop), so the aggregator's state and everything it publishes are exactly what per-record
delivery gives, at a fraction of the cost: the live router batches its records too. Every other
message uses the bus.

A disaggregated model's request comes as a pair (`Dispatch.decode_instance_id`): it runs on the prefill
engine; when that emits PrefillDone the world hands it to the decode engine (`submit_prefilled`) with its
KV landing after the transfer between the two hosts, priced by opscale.perf.transfer for the nearest
switch tier they share (their agents' S0/S1/S2), and tells the router (PrefillHandedOff). The first token
reaches the client from the decode engine, so the transfer counts towards TTFT. A decode instance that
no longer accepts work fails the request back to its router, which pairs it again (nothing is lost).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from opscale.engine import Finished, PrefillDone, RequestTooLargeError, SimEngine
from opscale.engine.kv_events import as_block_event
from opscale.model import InstanceSpec, OperatorReplicas, Request, RequestOutcome
from opscale.perf.transfer import Placement, Topology, TransferParams, handoff_s
from opscale.runtime.sim.bus import InProcessBus
from opscale.runtime.sim.loop import EventLoop
from opscale.services import subjects
from opscale.services.actions import (
    Action,
    Dispatch,
    DrainEngine,
    Log,
    Publish,
    Reject,
    SendCommand,
    SetOperatorReplicas,
    StartEngine,
    StopEngine,
    Store,
)
from opscale.services.aggregator import AggregatorCore
from opscale.services.core import ServiceCore
from opscale.services.events import (
    DispatchFailed,
    KvEventBatch,
    PrefillHandedOff,
    RequestArrived,
    RequestFinished,
)
from opscale.services.forecaster import ForecasterCore
from opscale.services.node_agent import NodeAgentCore
from opscale.services.planner import PlannerCore
from opscale.services.router import RouterCore

EngineFactory = Callable[[InstanceSpec], SimEngine]


class RunObserver:
    """Receives what a run produces; the experiment layer turns it into results. The default ignores all."""

    def arrival(self, request: Request) -> None: ...

    def outcome(self, outcome: RequestOutcome) -> None: ...

    def engine_started(self, spec: InstanceSpec, region: str, load_s: float, now_s: float, host: str = "") -> None:
        """An engine started on host `host` (its agent id) in `region`."""

    def engine_stopped(self, instance_id: str, engine: SimEngine, now_s: float) -> None: ...

    def operator_replicas(self, instance_id: str, serving: tuple[OperatorReplicas, ...],
                          provisioned: tuple[OperatorReplicas, ...], engine: SimEngine, now_s: float) -> None:
        """The operator replicas holding GPUs beside an engine are now `provisioned`, of which `serving`
        take part in its iterations (the rest are loading), until the next call or the engine stops."""

    def decision(self, service: str, message: str, fields: dict[str, Any] | None, now_s: float) -> None: ...

    def kv_transfer(self, request_id: str, topology: Topology, seconds: float, nbytes: float, now_s: float) -> None:
        ...

    def drop_cause(self, request_id: str, cause: str) -> None:
        """Why the request whose failed outcome comes next was dropped (a key of DROP_CAUSES)."""


# Why a request was dropped, by cause key: result.json counts dropped requests per cause.
DROP_CAUSES = {
    "longer_than_context": "prompt + output longer than the model's context (max_model_len)",
    "larger_than_kv_cache": "prompt + output larger than an instance's whole KV cache",
    "model_not_served": "no deployment serves its model (404)",
    "queue_full": "the router's hold queue was full (429)",
    "no_capacity_in_time": "no instance could take it within the router's pending timeout, or a held batch "
                           "request within its tier's deadline (503)",
    "dispatch_failed": "every dispatch attempt failed (502)",
    "unfinished": "still queued or running when the run ended (drain_s)",
}
_REJECT_CAUSES = {404: "model_not_served", 429: "queue_full", 503: "no_capacity_in_time", 502: "dispatch_failed"}


@dataclass(slots=True)
class _Hosted:
    """An engine the world drives. It has at most one wake that counts queued on the loop; a wake queued
    before it is not removed (a heap cannot) but does nothing when it comes up (an older generation)."""

    engine: SimEngine
    agent_id: str
    region: str
    placement: Placement  # the host's network position, which prices a KV transfer from or to it
    generation: int = 0  # of the engine's wake that counts; older queued wakes do nothing
    wake_s: float | None = None  # when that wake is due; None when none is queued
    kv_seq: int = 0  # KV event batches published for this engine


@dataclass(slots=True)
class WorldConfig:
    bus_latency_s: float = 0.002
    intra_region_latency_s: float = 0.0005
    # Round trip (ms) between each ordered pair of the fleet's regions: the region catalogue's
    # (opscale.cloud.RegionCatalog.rtt_table). A request dispatched across regions travels half of it.
    region_rtt_ms: dict[tuple[str, str], float] = field(default_factory=dict)
    router_tick_s: float = 0.5
    agent_tick_s: float = 2.0  # the heartbeat period: reports are only read then (readiness wakes exactly)
    planner_tick_s: float = 1.0
    aggregator_tick_s: float = 1.0
    forecaster_tick_s: float = 10.0


@dataclass(slots=True)
class SimWorld:
    loop: EventLoop
    routers: dict[str, RouterCore]
    aggregator: AggregatorCore
    forecaster: ForecasterCore
    planner: PlannerCore
    agents: dict[str, NodeAgentCore]
    engine_factory: EngineFactory
    observer: RunObserver = field(default_factory=RunObserver)
    config: WorldConfig = field(default_factory=WorldConfig)
    transfer: TransferParams = field(default_factory=TransferParams)
    store: dict[str, Any] = field(default_factory=dict)
    bus: InProcessBus = field(init=False)
    _engines: dict[str, _Hosted] = field(default_factory=dict, init=False)
    _by_agent: dict[str, dict[str, _Hosted]] = field(default_factory=dict, init=False)
    _inflight: dict[str, tuple[Request, str, int]] = field(default_factory=dict, init=False)
    _paired: dict[str, str] = field(default_factory=dict, init=False)  # request -> its decode instance, in prefill
    # request -> the instance that prefilled it, while it decodes elsewhere: its record names both
    _prefilled_on: dict[str, str] = field(default_factory=dict, init=False)
    # Request records on their way to the aggregator: (delivery time, sequence number, record).
    _records: deque[tuple[float, int, RequestFinished]] = field(default_factory=deque, init=False)
    requests_submitted: int = field(default=0, init=False)
    _agent_wakes: dict[str, float] = field(default_factory=dict, init=False)  # agent -> its queued exact wake

    def __post_init__(self) -> None:
        self.bus = InProcessBus(self.loop, self.config.bus_latency_s)
        for router in self.routers.values():
            self.bus.subscribe(subjects.HEARTBEATS_ALL, self._to(router))
            self.bus.subscribe(subjects.PLANS_ALL, self._to(router))
            self.bus.subscribe(subjects.KV_EVENTS_ALL, self._to(router))
        self.bus.subscribe(subjects.HEARTBEATS_ALL, self._to_aggregator)
        self.bus.subscribe(subjects.HEARTBEATS_ALL, self._to_planner)
        self.loop.on_stop(self._records_due)
        self.bus.subscribe(subjects.WINDOWS_ALL, self._to(self.forecaster))
        self.bus.subscribe(subjects.WINDOWS_ALL, self._to_planner)
        self.bus.subscribe(subjects.FORECASTS_ALL, self._to_planner)
        self.bus.subscribe(subjects.ROUTER_LOAD_ALL, self._to_planner)

    # -- driving -------------------------------------------------------------------------------

    def start(self, requests: Iterator[Request], until_s: float) -> None:
        """Schedule the cores' ticks and the request arrivals (streamed: one pending at a time)."""
        cfg = self.config
        for router in self.routers.values():
            self.loop.every(cfg.router_tick_s, self._ticker(router), until_s=until_s)
        for agent in self.agents.values():
            self.loop.every(cfg.agent_tick_s, self._agent_ticker(agent), until_s=until_s)
        self.loop.every(cfg.planner_tick_s, self._tick_planner, until_s=until_s)
        self.loop.every(cfg.aggregator_tick_s, self._tick_aggregator, until_s=until_s)
        self.loop.every(cfg.forecaster_tick_s, self._ticker(self.forecaster), until_s=until_s)
        self._schedule_next_arrival(requests, until_s)

    def _schedule_next_arrival(self, requests: Iterator[Request], until_s: float) -> None:
        request = next(requests, None)
        if request is None or request.arrival_s > until_s:
            return
        self.loop.at(request.arrival_s, self._arrive, request, requests, until_s)

    def _arrive(self, request: Request, requests: Iterator[Request], until_s: float) -> None:
        self.requests_submitted += 1
        self.observer.arrival(request)
        router = self.routers.get(request.region) or next(iter(self.routers.values()))
        actions = router.handle(RequestArrived(request), self.loop.now_s)
        if actions:
            self._apply(router.name, actions, router)
        # The next arrival (_schedule_next_arrival, written out: once per request).
        upcoming = next(requests, None)
        if upcoming is not None and upcoming.arrival_s <= until_s:
            self.loop.at(upcoming.arrival_s, self._arrive, upcoming, requests, until_s)

    def _to(self, core: ServiceCore) -> Callable[[str, Any], None]:
        def deliver(subject: str, event: Any) -> None:
            self._apply(core.name, core.handle(event, self.loop.now_s), core)
        return deliver

    # The planner is looked up at each delivery, not bound once: `replace_planner` swaps it mid-run.
    def _to_planner(self, subject: str, event: Any) -> None:
        planner = self.planner
        self._apply(planner.name, planner.handle(event, self.loop.now_s), planner)

    def _tick_planner(self, now_s: float) -> None:
        planner = self.planner
        self._apply(planner.name, planner.tick(now_s), planner)

    def reclaim_host(self, agent_id: str, notice_s: float) -> None:
        """A spot preemption: the host gets notice now and is gone `notice_s` later. Its agent drains
        every instance by then (the planner places replacements elsewhere at once); whatever is still
        running when the host goes is handed back to the routers and served elsewhere."""
        agent = self.agents.get(agent_id)
        if agent is None:
            raise ValueError(f"no host {agent_id!r} to reclaim; hosts: {sorted(self.agents)}")
        now = self.loop.now_s
        self._apply(agent.name, agent.reclaim(now + notice_s, now), agent)
        self.loop.at(now + notice_s, self._terminate_host, agent_id)

    def _terminate_host(self, agent_id: str) -> None:
        agent = self.agents.pop(agent_id, None)
        if agent is None:
            return
        now = self.loop.now_s
        for instance_id in list(self._by_agent.get(agent_id, {})):
            self._stop_engine(instance_id, now)
        self.observer.decision("world", f"host {agent_id} reclaimed", None, now)

    # -- hosts that come and go: VMs bought and released (opscale.runtime.sim.vms) -----------------

    def add_host(self, agent: NodeAgentCore, until_s: float) -> None:
        """A host joins (its VM has booted): its node-agent ticks from now on, and its first heartbeat
        tells the planner it exists; only then can the planner place instances on it."""
        agent_id = agent.config.agent_id
        if agent_id in self.agents:
            raise ValueError(f"host {agent_id!r} is already in the world")
        self.agents[agent_id] = agent
        self.loop.every(self.config.agent_tick_s, self._agent_ticker(agent), start_s=self.loop.now_s, until_s=until_s)

    def remove_host(self, agent_id: str) -> None:
        """The host is gone (its VM released or terminated): its engines stop, and what they still held
        goes back to the routers. A host already gone changes nothing."""
        self._terminate_host(agent_id)

    def engines_on(self, agent_id: str) -> int:
        """Engines running on the host (loading, serving or draining)."""
        return len(self._by_agent.get(agent_id, {}))

    def requests_on(self, agent_id: str) -> list[str]:
        """Ids of the requests in flight on the host's engines."""
        here = self._by_agent.get(agent_id, {})
        return [request.request_id for request, instance_id, _ in self._inflight.values() if instance_id in here]

    def replace_planner(self, planner: PlannerCore) -> None:
        """A planner restart: the old core stops receiving anything (what was on its way to it is lost);
        `planner` takes every later event and tick. The caller restores it from the store, as a
        restarted live planner restores itself from Redis."""
        self.planner = planner
        self.observer.decision("world", "planner restarted", None, self.loop.now_s)

    def _to_aggregator(self, subject: str, event: Any) -> None:
        loop = self.loop
        self._deliver_records(loop.now_s, loop.current_seq)
        self._apply(self.aggregator.name, self.aggregator.handle(event, loop.now_s), self.aggregator)

    def _tick_aggregator(self, now_s: float) -> None:
        self._deliver_records(now_s, self.loop.current_seq)
        self._apply(self.aggregator.name, self.aggregator.tick(now_s), self.aggregator)

    def _records_due(self, until_s: float) -> None:
        # The loop stopped at until_s: every record due by then has been delivered, as bus events would.
        self._deliver_records(until_s, sys.maxsize)

    def _deliver_records(self, now_s: float, seq: int) -> None:
        """Hand the aggregator every queued record that, as a bus event, would have run before the event
        (now_s, seq) that is about to reach it, each with its own delivery time. Handling a record
        produces no actions; any would be performed now."""
        records = self._records
        aggregator = self.aggregator
        while records:
            deliver_s, record_seq, record = records[0]
            if deliver_s > now_s or (deliver_s == now_s and record_seq > seq):
                return
            records.popleft()
            actions = aggregator.handle(record, deliver_s)
            if actions:
                self._apply(aggregator.name, actions, aggregator)

    def _ticker(self, core: ServiceCore) -> Callable[[float], None]:
        def tick(now_s: float) -> None:
            self._apply(core.name, core.tick(now_s), core)
        return tick

    def _agent_ticker(self, agent: NodeAgentCore) -> Callable[[float], None]:
        def tick(now_s: float) -> None:
            if self.agents.get(agent.config.agent_id) is not agent:
                return  # its host was reclaimed
            # Each engine is current to its last event (wakes advance it); a report is state as of the last
            # iteration boundary, so no advance is needed here.
            for hosted in self._by_agent.get(agent.config.agent_id, {}).values():
                agent.handle(hosted.engine.report(now_s), now_s)
                self._publish_kv_events(hosted, now_s)
            self._apply(agent.name, agent.tick(now_s), agent)
            ready_s = agent.next_ready_s()
            if ready_s is not None and ready_s < now_s + self.config.agent_tick_s:
                # wake exactly when an instance finishes loading, not at the next whole tick
                self.loop.at(ready_s, lambda: self._apply(agent.name, agent.tick(self.loop.now_s), agent))
        return tick

    def _publish_kv_events(self, hosted: _Hosted, now_s: float) -> None:
        """The engine's KV events since the last tick, one batch on the bus, as a live node-agent
        forwards them (none unless its EngineConfig.kv_events is on)."""
        events = hosted.engine.take_kv_events()
        if events:
            hosted.kv_seq += 1
            engine = hosted.engine
            batch = KvEventBatch(engine.instance_id, engine.model.name, now_s, hosted.kv_seq,
                                 tuple(as_block_event(e) for e in events))
            self.bus.publish(subjects.kv_events(hosted.region, hosted.agent_id), batch)

    # -- actions -------------------------------------------------------------------------------

    def _apply(self, service: str, actions: list[Action], source: ServiceCore) -> None:
        now = self.loop.now_s
        for action in actions:
            if type(action) is Dispatch:  # one per request: before the pattern matching of the rest
                self._dispatch(action, source)
                continue
            match action:
                case Publish(subject=subject, event=event):
                    self.bus.publish(subject, event)
                case Dispatch():
                    self._dispatch(action, source)
                case Reject(request=request, status=status):
                    self._inflight.pop(request.request_id, None)  # a retried request may be refused at last
                    self._paired.pop(request.request_id, None)
                    self.observer.drop_cause(request.request_id, _REJECT_CAUSES.get(status, f"http_{status}"))
                    self._record(RequestOutcome(request.request_id, request.model, request.tier, request.region,
                                                "", "", request.arrival_s, None, None, request.prompt_tokens,
                                                0, "rejected" if status < 500 else "failed"))
                case SendCommand(agent_id=agent_id, command=command):
                    agent = self.agents.get(agent_id)
                    if agent is not None:
                        self.loop.after(self.config.intra_region_latency_s, self._deliver_command, agent, command)
                case StartEngine(spec=spec, load_s=load_s):
                    if not isinstance(source, NodeAgentCore):
                        raise TypeError(f"{service} asked to start an engine; only a node-agent hosts engines")
                    engine = self.engine_factory(spec)
                    engine.emit_first_tokens = False  # first-token times come with Finished; nothing streams
                    host = source.config
                    started = _Hosted(engine, host.agent_id, host.region,
                                      Placement(host.region, host.s0, host.agent_id, host.s1, host.s2))
                    self._engines[spec.instance_id] = started
                    self._by_agent.setdefault(started.agent_id, {})[spec.instance_id] = started
                    self.observer.engine_started(spec, host.region, load_s, now, host.agent_id)
                case DrainEngine(instance_id=instance_id):
                    draining = self._engines.get(instance_id)
                    if draining is not None:
                        draining.engine.drain()
                case StopEngine(instance_id=instance_id):
                    self._stop_engine(instance_id, now)
                case SetOperatorReplicas(instance_id=instance_id, serving=serving, provisioned=provisioned):
                    hosted = self._engines.get(instance_id)
                    if hosted is not None:
                        self._advance(hosted, now)  # what ran until now ran without the change
                        hosted.engine.set_operator_replicas(serving)
                        self._rewake(hosted)
                        self.observer.operator_replicas(instance_id, serving, provisioned, hosted.engine, now)
                    if isinstance(source, NodeAgentCore):
                        self._wake_agent(source)
                case Store(key=key, value=value):
                    self.store[key] = value
                case Log(service=svc, message=message, fields=fields):
                    self.observer.decision(svc, message, fields, now)

    def _wake_agent(self, agent: NodeAgentCore) -> None:
        """Tick `agent` exactly when its next operator replica (or instance) finishes loading: an
        operator replica loads in well under the heartbeat period. One wake queued per agent at a time."""
        ready_s = agent.next_ready_s()
        if ready_s is None:
            return
        now, agent_id = self.loop.now_s, agent.config.agent_id
        ready_s = max(ready_s, now)
        queued = self._agent_wakes.get(agent_id)
        if queued is not None and now <= queued <= ready_s:
            return  # the queued wake comes first and queues the next
        self._agent_wakes[agent_id] = ready_s
        self.loop.at(ready_s, self._agent_wake, agent, ready_s)

    def _agent_wake(self, agent: NodeAgentCore, at_s: float) -> None:
        agent_id = agent.config.agent_id
        if self._agent_wakes.get(agent_id) == at_s:
            del self._agent_wakes[agent_id]
        if self.agents.get(agent_id) is not agent:
            return  # its host was reclaimed
        self._apply(agent.name, agent.tick(self.loop.now_s), agent)
        self._wake_agent(agent)

    def _deliver_command(self, agent: NodeAgentCore, command: Any) -> None:
        self._apply(agent.name, agent.handle(command, self.loop.now_s), agent)

    def _dispatch(self, action: Dispatch, router: ServiceCore) -> None:
        hosted = self._engines.get(action.instance_id)
        latency = (self.config.intra_region_latency_s if hosted is None or hosted.region == action.request.region
                   else self._inter_region_s(action.request.region, hosted.region))
        self.loop.after(latency, self._submit, action, router)

    def _inter_region_s(self, origin: str, serving: str) -> float:
        """One way from the region a request entered to another region's instance: half the catalogue's
        round trip. A request from a region without a router entered through the first router."""
        if origin not in self.routers:
            origin = next(iter(self.routers))
            if origin == serving:
                return self.config.intra_region_latency_s
        rtt_ms = self.config.region_rtt_ms.get((origin, serving))
        if rtt_ms is None:
            raise ValueError(f"no round trip between regions {origin!r} and {serving!r} in the world's "
                             f"region_rtt_ms (the region catalogue's, for the fleet's regions)")
        return rtt_ms / 2000.0

    def _submit(self, action: Dispatch, router: ServiceCore) -> None:
        request, now, instance_id = action.request, self.loop.now_s, action.instance_id
        hosted = self._engines.get(instance_id)
        previous = self._inflight.get(request.request_id)
        attempt = 1 if previous is None else previous[2] + 1
        agent = self.agents.get(hosted.agent_id) if hosted else None
        self._inflight[request.request_id] = (request, instance_id, attempt)
        if action.decode_instance_id:
            self._paired[request.request_id] = action.decode_instance_id
        if hosted is None or agent is None or not agent.is_accepting(instance_id):
            failed = DispatchFailed(request, instance_id, "instance is not accepting requests", attempt)
            self._apply(router.name, router.handle(failed, now), router)
            return
        try:
            # The engine first runs every iteration that ends by now; what they produced comes out of
            # the advance below, before anything else can observe it.
            hosted.engine.submit(request, now)
        except RequestTooLargeError as exc:
            # a request no instance of this model can ever hold: refused (a 400 in the live API), not retried
            self._advance(hosted, now)  # it was refused before running anything: collect that first
            del self._inflight[request.request_id]
            refused = RequestOutcome(request.request_id, request.model, request.tier, request.region, hosted.region,
                                     instance_id, request.arrival_s, None, None, request.prompt_tokens, 0,
                                     "rejected")
            record = RequestFinished(refused)
            too_long = request.prompt_tokens + request.output_tokens > hosted.engine.max_model_len
            self.observer.drop_cause(request.request_id, "longer_than_context" if too_long else "larger_than_kv_cache")
            self._record(refused, record)
            self.observer.decision("engine", f"{request.request_id} refused: {exc}", None, now)
            self._apply(router.name, router.handle(record, now), router)
            return
        engine = hosted.engine
        for out in engine.advance(now):  # _advance, written out: once per request
            if type(out) is Finished:
                self._finish(out, hosted)
            elif type(out) is PrefillDone:
                self._hand_off(out, hosted)
        # The engine's next wake. When the newcomer joined a queue, the one already queued is still right.
        next_s = engine.next_event_s()
        if next_s != hosted.wake_s:
            hosted.generation += 1
            hosted.wake_s = next_s
            if next_s is not None:
                self.loop.at(next_s, self._wake, hosted, hosted.generation)

    def _stop_engine(self, instance_id: str, now_s: float) -> None:
        """The engine runs up to now and stops (a StopEngine, or its host gone); what it still held goes
        back to the routers."""
        stopped = self._engines.pop(instance_id, None)
        if stopped is None:
            return
        self._by_agent[stopped.agent_id].pop(instance_id, None)
        self._advance(stopped, now_s)
        stopped.generation += 1  # its queued wake must not run the engine any further
        self.observer.engine_stopped(instance_id, stopped.engine, now_s)
        self._fail_orphans(instance_id)

    def _fail_orphans(self, instance_id: str) -> None:
        """Requests still on a stopped engine (a drain deadline passed, or its host was reclaimed) go
        back to their router: no longer in flight here, whether the router re-dispatches or holds them."""
        for request, iid, attempt in list(self._inflight.values()):
            if iid != instance_id:
                continue
            del self._inflight[request.request_id]
            self._paired.pop(request.request_id, None)
            self._prefilled_on.pop(request.request_id, None)
            router = self.routers.get(request.region) or next(iter(self.routers.values()))
            failed = DispatchFailed(request, instance_id, "instance stopped with the request in flight", attempt)
            self._apply(router.name, router.handle(failed, self.loop.now_s), router)

    # -- prefill/decode hand-off -----------------------------------------------------------------

    def _hand_off(self, out: PrefillDone, prefill: _Hosted) -> None:
        """A prefill is done: the request moves to its paired decode engine, its KV landing after the
        transfer between the two hosts (see the module docstring)."""
        entry = self._inflight.get(out.request_id)
        if entry is None:
            return
        request, prefill_id, attempt = entry
        decode_id = self._paired.pop(out.request_id, "")
        now = self.loop.now_s
        router = self.routers.get(request.region) or next(iter(self.routers.values()))
        decode = self._engines.get(decode_id)
        agent = self.agents.get(decode.agent_id) if decode is not None else None
        if decode is None or agent is None or not agent.is_accepting(decode_id):
            del self._inflight[out.request_id]
            failed = DispatchFailed(request, decode_id or prefill_id, "decode instance is not accepting requests",
                                    attempt)
            self._apply(router.name, router.handle(failed, now), router)
            return
        topology, transfer_s = handoff_s(self.transfer, prefill.placement, decode.placement, out.kv_bytes,
                                         source_sku=prefill.engine.sku.name, source_tp=prefill.engine.tp,
                                         dest_tp=decode.engine.tp)
        self._inflight[out.request_id] = (request, decode_id, attempt)
        try:
            # the KV streams out from the end of the prefill (PrefillDone.at_s), however late the world
            # hands the request over
            decode.engine.submit_prefilled(request, now, max(now, out.at_s + transfer_s))
        except RequestTooLargeError as exc:
            # the decode instance can never hold it: refused, not retried (as on a unified instance)
            del self._inflight[out.request_id]
            refused = RequestOutcome(request.request_id, request.model, request.tier, request.region, decode.region,
                                     decode_id, request.arrival_s, None, None, request.prompt_tokens, 0, "rejected")
            record = RequestFinished(refused)
            too_long = request.prompt_tokens + request.output_tokens > decode.engine.max_model_len
            self.observer.drop_cause(request.request_id, "longer_than_context" if too_long else "larger_than_kv_cache")
            self._record(refused, record)
            self.observer.decision("engine", f"{request.request_id} refused: {exc}", None, now)
            self._apply(router.name, router.handle(record, now), router)
            return
        self._prefilled_on[out.request_id] = prefill_id
        self.observer.kv_transfer(request.request_id, topology, transfer_s, out.kv_bytes, now)
        self._apply(router.name, router.handle(PrefillHandedOff(request.request_id, prefill_id, decode_id, now), now),
                    router)
        self._advance(decode, now)
        self._rewake(decode)

    def _rewake(self, hosted: _Hosted) -> None:
        """Queue the engine's next wake, when it changed (a submit may bring it forward)."""
        next_s = hosted.engine.next_event_s()
        if next_s != hosted.wake_s:
            hosted.generation += 1
            hosted.wake_s = next_s
            if next_s is not None:
                self.loop.at(next_s, self._wake, hosted, hosted.generation)

    # -- engines -------------------------------------------------------------------------------

    def _advance(self, hosted: _Hosted, now_s: float) -> None:
        for out in hosted.engine.advance(now_s):
            if type(out) is Finished:
                self._finish(out, hosted)
            elif type(out) is PrefillDone:
                self._hand_off(out, hosted)

    def _wake(self, hosted: _Hosted, generation: int) -> None:
        # _advance written out, and the engine's next wake queued: this runs a few times per request.
        if generation != hosted.generation:
            return  # superseded by a later submit
        engine = hosted.engine
        for out in engine.advance(self.loop.now_s):
            if type(out) is Finished:
                self._finish(out, hosted)
            elif type(out) is PrefillDone:
                self._hand_off(out, hosted)
        hosted.generation = generation = generation + 1
        hosted.wake_s = next_s = engine.next_event_s()
        if next_s is not None:
            self.loop.at(next_s, self._wake, hosted, generation)

    def _finish(self, out: Finished, hosted: _Hosted) -> None:
        entry = self._inflight.pop(out.request_id, None)
        if entry is None:
            return
        request, instance_id, _ = entry
        prefill_id = self._prefilled_on.pop(out.request_id, "") if self._prefilled_on else ""
        outcome = RequestOutcome(request.request_id, request.model, request.tier, request.region, hosted.region,
                                 instance_id, request.arrival_s, out.first_token_s, out.at_s, request.prompt_tokens,
                                 out.output_tokens, "ok", prefill_id)
        record = RequestFinished(outcome)  # immutable: the aggregator's record and the router's event alike
        # _record, written out: once per request.
        self.observer.outcome(outcome)
        loop = self.loop
        now_s = loop.now_s
        deliver_s = now_s + self.config.bus_latency_s
        self._records.append((deliver_s if deliver_s > now_s else now_s, loop.take_seq(), record))
        router = self.routers.get(request.region) or next(iter(self.routers.values()))
        actions = router.handle(record, now_s)
        if actions:
            self._apply(router.name, actions, router)

    def _record(self, outcome: RequestOutcome, record: RequestFinished | None = None) -> None:
        """Report `outcome` to the observer and queue its record for the aggregator (see the module
        docstring), due when a bus event published now would be delivered."""
        self.observer.outcome(outcome)
        loop = self.loop
        now_s = loop.now_s
        deliver_s = now_s + self.config.bus_latency_s
        self._records.append((deliver_s if deliver_s > now_s else now_s, loop.take_seq(),
                              record if record is not None else RequestFinished(outcome)))

    # -- views ---------------------------------------------------------------------------------

    def engines(self) -> dict[str, SimEngine]:
        return {iid: h.engine for iid, h in self._engines.items()}

    def has_ready_instance(self, model: str, region: str) -> bool:
        """Whether an instance of `model` serves in `region` now (a peer that can send its weights)."""
        for instance_id, hosted in self._engines.items():
            if hosted.region == region and hosted.engine.model.name == model:
                agent = self.agents.get(hosted.agent_id)
                if agent is not None and agent.is_accepting(instance_id):
                    return True
        return False

    def in_flight(self) -> int:
        return len(self._inflight)

    def unfinished(self, now_s: float) -> list[RequestOutcome]:
        """Outcomes for every accepted request not finished by `now_s`: held at a router or in an engine."""
        held = [r for router in self.routers.values() for r in router.held()]
        running = [request for request, _, _ in self._inflight.values()]
        return [RequestOutcome(r.request_id, r.model, r.tier, r.region, "", "", r.arrival_s, None, None,
                               r.prompt_tokens, 0, "unfinished") for r in held + running]
