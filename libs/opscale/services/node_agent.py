"""The node-agent's state machine: converge this host's instances towards the newest desired state.

Lifecycle of an instance: loading (for its load time) -> ready -> draining (no new requests; in-flight
ones finish) -> stopped. `Apply(desired, epoch)` is idempotent and ordered by (fencing token, epoch): an
older one is ignored, a repeat of the applied one changes nothing. The fencing token is the planner
lease's generation: a command from a planner that has since lost the lease is refused, and a new
holder's plan replaces its predecessor's whatever their epochs. An instance left out of the desired state is
drained, never killed with work on it (a drain deadline, when given, bounds the wait). Engines are
started and stopped by the shell (StartEngine / DrainEngine / StopEngine); their load comes back as
EngineReport events and leaves in heartbeats.

Operator replicas (`InstanceSpec.operator_replicas`, OpScale's runtime shape): a change to them alone is
applied in place, the base engine keeps running. An added replica becomes effective its attach time
after it is added (`operator_load_time_s`, the per-operator scale-up latency; not before its base
instance is ready); a removed one stops at once (loading ones go first). Each change is reported as
SetOperatorReplicas (what serves, what holds GPUs). The base instances' GPUs plus the replicas'
GPU-equivalents must fit the host's GPUs, or the whole Apply is refused, saying so. A backend that
cannot split operators (`operator_load_time_s` None: the `openai` backend, as vLLM and SGLang do not)
ignores them and logs once per instance that it falls back to model-level scaling.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from pydantic import BaseModel, Field

from opscale.engine.outputs import EngineReport
from opscale.model import InstanceSpec, InstanceState, InstanceStatus, OperatorReplicas, RdmaPriority
from opscale.perf.operator_replicas import operator_families
from opscale.services import subjects
from opscale.services.actions import (
    Action,
    DrainEngine,
    Log,
    Publish,
    SetOperatorReplicas,
    StartEngine,
    StopEngine,
)
from opscale.services.events import AgentHeartbeat, ApplyCommand, DrainCommand, Event


class NodeAgentConfig(BaseModel):
    agent_id: str = Field(..., description="Unique name of this host's agent")
    region: str = Field(..., description="Region of this host")
    sku: str = Field(..., description="GPU SKU of this host")
    gpus: int = Field(8, ge=1, description="GPUs on this host")
    address: str = Field("", description="host:port of this agent's control server")
    endpoint_base: str = Field("", description="Base URL of the engines' OpenAI-compatible server")
    heartbeat_interval_s: float = Field(2.0, gt=0, description="Period of heartbeats")
    s0: str = Field("", description="Leaf switch of this host (HeteroScale's S0); '' when not configured")
    s1: str = Field("", description="Mini-pod switch above the leaf (S1)")
    s2: str = Field("", description="Big-pod switch above the mini-pod (S2)")
    rdma_priority: RdmaPriority = Field(RdmaPriority.LOW, description="Priority of this host's RDMA subgroup: "
                                        "placement uses high-priority hosts last (opscale.planning.placement)")
    max_epoch_jump: int = Field(2 ** 32, ge=1, description="An Apply whose epoch, or fencing token, is more "
                                "than this past the applied one is refused: a planner makes one epoch per plan "
                                "and one token per lease, so such a jump is a forged or faulty command (e.g. "
                                "epoch 2**64-1), which would otherwise leave no room for any later plan")


@dataclass(frozen=True, slots=True)
class ApplyResult:
    accepted: bool
    applied_epoch: int
    reason: str


@dataclass(slots=True)
class _Instance:
    spec: InstanceSpec
    state: InstanceState
    since_s: float
    ready_at_s: float
    drain_deadline_s: float | None = None
    report: EngineReport | None = None
    # Its operator replicas, one entry per replica: (its stage at replicas=1, ready at)
    operators: list[tuple[OperatorReplicas, float]] = field(default_factory=list)
    operators_reported_s: float = float("-inf")  # when SetOperatorReplicas last described them
    operators_sent: tuple[tuple[OperatorReplicas, ...], tuple[OperatorReplicas, ...]] = ((), ())
    # Desired again while it drains (a plan that dropped it, then one that wants it back): started anew
    # once its drain ends, since a draining engine takes no new work and cannot be turned back.
    rejoin: InstanceSpec | None = None


class NodeAgentCore:
    """`handle(event, now_s)` / `tick(now_s)` -> actions; `apply` also returns the result the gRPC
    reply carries. See the module docstring."""

    name = "node_agent"

    def __init__(self, config: NodeAgentConfig, load_time_s: Callable[[InstanceSpec], float],
                 warm_models: Callable[[], tuple[str, ...]] = tuple,
                 stage_weights: Callable[[str], bool] | None = None,
                 operator_load_time_s: Callable[[InstanceSpec, OperatorReplicas], float] | None = None) -> None:
        self.config = config
        self.load_time_s = load_time_s
        # Seconds for one replica of a stage to join an instance; None: the backend cannot split operators.
        self.operator_load_time_s = operator_load_time_s
        self._fallback_logged: set[str] = set()
        self.warm_models = warm_models  # what the host's memory holds now, for the heartbeat
        # Starts staging a model's weights into host memory (True: started now; False: already under
        # way). None: the backend cannot stage, and a plan's pre-staging is logged and skipped.
        self.stage_weights = stage_weights
        self.applied_epoch = 0
        self.fencing_token = 0  # the newest planner lease generation seen (ApplyCommand.fencing_token)
        self._instances: dict[str, _Instance] = {}
        self._drains_seen: deque[str] = deque(maxlen=4096)
        self._next_heartbeat_s: float | None = None
        self.terminating_at_s: float | None = None  # set by a reclaim notice (spot preemption)

    # -- commands ------------------------------------------------------------------------------

    def apply(self, cmd: ApplyCommand, now_s: float) -> tuple[ApplyResult, list[Action]]:
        if cmd.agent_id != self.config.agent_id:
            return ApplyResult(False, self.applied_epoch, f"command for agent {cmd.agent_id!r}, this is "
                               f"{self.config.agent_id!r}"), []
        if cmd.fencing_token < self.fencing_token:
            # sent by a planner that has since lost the lease: its successor's plan stands
            return ApplyResult(False, self.applied_epoch, f"fencing token {cmd.fencing_token} is older than "
                               f"{self.fencing_token}: the planner that sent it no longer holds the lease"), []
        if cmd.fencing_token - self.fencing_token > self.config.max_epoch_jump:
            # a forged or broken token far ahead would fence off every real planner for good
            return ApplyResult(False, self.applied_epoch, f"fencing token {cmd.fencing_token} is more than "
                               f"max_epoch_jump ({self.config.max_epoch_jump}) past {self.fencing_token}; "
                               f"refused"), []
        newer_holder = cmd.fencing_token > self.fencing_token
        if not newer_holder and cmd.epoch < self.applied_epoch:
            return ApplyResult(False, self.applied_epoch, f"epoch {cmd.epoch} is older than applied epoch "
                               f"{self.applied_epoch}; ignored"), []
        if not newer_holder and cmd.epoch == self.applied_epoch:
            return ApplyResult(True, self.applied_epoch, "already applied; nothing changed"), []
        if cmd.epoch - self.applied_epoch > self.config.max_epoch_jump:
            return ApplyResult(False, self.applied_epoch, f"epoch {cmd.epoch} is more than max_epoch_jump "
                               f"({self.config.max_epoch_jump}) past applied epoch {self.applied_epoch}; "
                               f"refused"), []
        refused = self._refusal(cmd.instances)
        if refused:
            return ApplyResult(False, self.applied_epoch, refused), []
        # A new lease holder's plan replaces whatever its predecessor sent, whatever the epochs: no epoch
        # number is ever applied from two planners.
        self.applied_epoch, self.fencing_token = cmd.epoch, cmd.fencing_token
        actions: list[Action] = []
        desired = {s.instance_id: s for s in cmd.instances}
        for instance_id, spec in desired.items():
            inst = self._instances.get(instance_id)
            if inst is not None and inst.state == InstanceState.STOPPED:
                inst = None  # stopped but not yet forgotten: wanted again, so it starts afresh
            if inst is not None and inst.state == InstanceState.DRAINING:
                inst.rejoin = spec if self.terminating_at_s is None else None
                continue
            if inst is None and self.terminating_at_s is None:
                load_s = self.load_time_s(spec)
                inst = self._instances[instance_id] = _Instance(spec, InstanceState.LOADING, now_s, now_s + load_s)
                actions.append(StartEngine(spec, load_s))
            if inst is not None and inst.state in (InstanceState.LOADING, InstanceState.READY):
                actions.extend(self._set_operators(inst, spec, now_s))
        for instance_id, inst in self._instances.items():
            if instance_id in desired:
                continue
            inst.rejoin = None
            actions.extend(self._begin_drain(inst, now_s, None))
        actions.extend(self._prestage(cmd.prestage))
        actions.append(Log(self.name, f"{self.config.agent_id} applied epoch {cmd.epoch}",
                           {"instances": sorted(desired)}))
        return ApplyResult(True, cmd.epoch, "applied"), actions

    def _refusal(self, specs: Iterable[InstanceSpec]) -> str:
        """Why the desired instances cannot run here ('' when they can): more GPUs than the host has, or
        an operator replica of an operator that does not exist."""
        specs = tuple(specs)
        base = sum(s.gpus for s in specs)
        replicas = 0.0
        if self.operator_load_time_s is not None:
            replicas = sum(r.gpu_equivalents for s in specs for r in s.operator_replicas)
            for spec in specs:
                for r in spec.operator_replicas:
                    try:
                        operator_families(r)
                    except ValueError as exc:
                        return f"instance {spec.instance_id}: {exc}"
        if base + replicas > self.config.gpus + 1e-9:
            extra = f" and operator replicas {replicas:g} GPU-equivalents more ({base + replicas:g})" if replicas else ""
            return f"desired instances need {base} GPUs{extra}; this host has {self.config.gpus}"
        return ""

    def _set_operators(self, inst: _Instance, spec: InstanceSpec, now_s: float) -> list[Action]:
        """Bring an instance's operator replicas to `spec`'s, in place (see the module docstring)."""
        inst.spec = spec  # the same instance id is the same base instance: only its replicas may differ
        if self.operator_load_time_s is None:
            if spec.operator_replicas and spec.instance_id not in self._fallback_logged:
                self._fallback_logged.add(spec.instance_id)
                return [Log(self.name, f"{spec.instance_id}: the engine backend cannot split operators (vLLM and "
                            "SGLang do not): its operator replicas are ignored, model-level scaling of base "
                            "instances only", {"instance": spec.instance_id,
                                               "operator_replicas": [r.name for r in spec.operator_replicas]})]
            return []
        kept: list[tuple[OperatorReplicas, float]] = []
        for stage in spec.operator_replicas:
            unit = replace(stage, replicas=1)
            have = sorted((u for u in inst.operators if u[0] == unit), key=lambda u: u[1])  # ready ones first
            kept.extend(have[:stage.replicas])
            if len(have) < stage.replicas:
                ready_s = max(inst.ready_at_s, now_s + self.operator_load_time_s(spec, unit))
                kept.extend([(unit, ready_s)] * (stage.replicas - len(have)))
        inst.operators = kept
        return self._report_operators(inst, now_s)

    def _report_operators(self, inst: _Instance, now_s: float) -> list[Action]:
        inst.operators_reported_s = now_s
        sent = (_count(u for u, ready_s in inst.operators if ready_s <= now_s), _count(u for u, _ in inst.operators))
        if sent == inst.operators_sent:
            return []
        inst.operators_sent = sent
        return [SetOperatorReplicas(inst.spec.instance_id, *sent)]

    def _prestage(self, models: tuple[str, ...]) -> list[Action]:
        if self.terminating_at_s is not None:
            return []
        warm = self.warm_models()
        wanted = [m for m in models if m not in warm]
        if not wanted:
            return []
        if self.stage_weights is None:
            return [Log(self.name, f"{self.config.agent_id}: cannot pre-stage {wanted}: the engine backend "
                    "does not stage weights; a scale-out here loads them then", {"models": wanted})]
        started = [m for m in wanted if self.stage_weights(m)]
        return [Log(self.name, f"{self.config.agent_id} staging weights of {started} into host memory",
                    {"models": started})] if started else []

    def drain(self, cmd: DrainCommand, now_s: float) -> tuple[bool, str, list[Action]]:
        if cmd.command_id in self._drains_seen:
            return True, "already draining", []
        inst = self._instances.get(cmd.instance_id)
        if inst is None or inst.state == InstanceState.STOPPED:
            return False, f"no running instance {cmd.instance_id!r} on {self.config.agent_id}", []
        self._drains_seen.append(cmd.command_id)
        return True, "draining", self._begin_drain(inst, now_s, cmd.deadline_s)

    def reclaim(self, terminate_at_s: float, now_s: float) -> list[Action]:
        """The host will be taken away at `terminate_at_s` (a spot preemption notice): start nothing more,
        drain every instance by then, and say so in heartbeats (the planner places elsewhere, routers
        send nothing new). Repeated notices keep the earliest time."""
        if self.terminating_at_s is not None and self.terminating_at_s <= terminate_at_s:
            return []
        self.terminating_at_s = terminate_at_s
        actions: list[Action] = [Log(self.name, f"{self.config.agent_id}: reclaim notice, host goes at "
                                                f"{terminate_at_s:.1f}s; draining every instance")]
        for inst in self._instances.values():
            actions.extend(self._begin_drain(inst, now_s, terminate_at_s))
        actions.append(Publish(subjects.heartbeat(self.config.region, self.config.agent_id), self.heartbeat(now_s)))
        return actions

    def _begin_drain(self, inst: _Instance, now_s: float, deadline_s: float | None) -> list[Action]:
        if inst.state == InstanceState.LOADING:
            inst.state, inst.since_s = InstanceState.STOPPED, now_s  # serves nobody yet: stop at once
            return [StopEngine(inst.spec.instance_id)]
        if inst.state == InstanceState.READY:
            inst.state, inst.since_s, inst.drain_deadline_s = InstanceState.DRAINING, now_s, deadline_s
            return [DrainEngine(inst.spec.instance_id)]
        if inst.state == InstanceState.DRAINING and deadline_s is not None:
            inst.drain_deadline_s = min(deadline_s, inst.drain_deadline_s or deadline_s)
        return []

    # -- events and ticks ----------------------------------------------------------------------

    def handle(self, event: Event, now_s: float) -> list[Action]:
        match event:
            case ApplyCommand():
                return self.apply(event, now_s)[1]
            case DrainCommand():
                return self.drain(event, now_s)[2]
            case EngineReport():
                inst = self._instances.get(event.instance_id)
                if inst is not None:
                    inst.report = event
        return []

    def tick(self, now_s: float) -> list[Action]:
        actions: list[Action] = []
        for instance_id, inst in list(self._instances.items()):
            if inst.state == InstanceState.LOADING and now_s >= inst.ready_at_s:
                inst.state, inst.since_s = InstanceState.READY, now_s
            if inst.operators and inst.state in (InstanceState.LOADING, InstanceState.READY, InstanceState.DRAINING):
                actions.extend(self._report_operators(inst, now_s))
            # Not an elif: a draining instance with operator replicas must still stop once idle.
            if inst.state == InstanceState.DRAINING:
                idle = inst.report is not None and inst.report.idle
                overdue = inst.drain_deadline_s is not None and now_s >= inst.drain_deadline_s
                if idle or overdue:
                    inst.state, inst.since_s = InstanceState.STOPPED, now_s
                    actions.append(StopEngine(instance_id))
                    if overdue and not idle:
                        actions.append(Log(self.name, f"{instance_id}: drain deadline reached with work in flight"))
                    if inst.rejoin is not None and self.terminating_at_s is None:
                        load_s = self.load_time_s(inst.rejoin)
                        self._instances[instance_id] = _Instance(inst.rejoin, InstanceState.LOADING, now_s,
                                                                 now_s + load_s)
                        actions.append(StartEngine(inst.rejoin, load_s))
            elif inst.state == InstanceState.STOPPED and now_s - inst.since_s > 3 * self.config.heartbeat_interval_s:
                del self._instances[instance_id]  # reported as stopped in a few heartbeats; now forgotten
        if self._next_heartbeat_s is None or now_s >= self._next_heartbeat_s:
            self._next_heartbeat_s = now_s + self.config.heartbeat_interval_s
            actions.append(Publish(subjects.heartbeat(self.config.region, self.config.agent_id), self.heartbeat(now_s)))
        return actions

    # -- views ---------------------------------------------------------------------------------

    def is_accepting(self, instance_id: str) -> bool:
        inst = self._instances.get(instance_id)
        return inst is not None and inst.state == InstanceState.READY

    def draining(self) -> list[str]:
        """The instances still draining, by id. Once `reclaim` has run this is every instance left that
        serves: it drained the ready ones, stopped the loading ones, and nothing starts after it."""
        return sorted(i for i, inst in self._instances.items() if inst.state == InstanceState.DRAINING)

    def next_ready_s(self) -> float | None:
        """When the next loading instance becomes ready (so a shell can wake exactly then)."""
        times = [i.ready_at_s for i in self._instances.values() if i.state == InstanceState.LOADING]
        times += [ready_s for i in self._instances.values() if i.state != InstanceState.STOPPED
                  for _, ready_s in i.operators if ready_s > i.operators_reported_s]
        return min(times) if times else None

    def operator_replicas(self, instance_id: str) -> tuple[tuple[OperatorReplicas, ...], tuple[OperatorReplicas, ...]]:
        """(serving, provisioned) operator replicas of an instance, as last reported."""
        inst = self._instances.get(instance_id)
        return inst.operators_sent if inst is not None else ((), ())

    def heartbeat(self, now_s: float) -> AgentHeartbeat:
        statuses = []
        for instance_id, inst in sorted(self._instances.items()):
            r = inst.report
            statuses.append(InstanceStatus(
                instance_id=instance_id, model=inst.spec.model, sku=inst.spec.sku, tp=inst.spec.tp,
                role=inst.spec.role, state=inst.state,
                endpoint=f"{self.config.endpoint_base}/instances/{instance_id}" if self.config.endpoint_base else instance_id,
                queued=r.queued if r else 0, running=r.running if r else 0,
                outstanding_tokens=r.outstanding_tokens if r else 0, kv_used_frac=r.kv_used_frac if r else 0.0,
                tokens_per_s=r.tokens_per_s if r else 0.0, busy_frac=r.busy_frac if r else 0.0,
                power_w=r.power_w if r else 0.0, sm_activity=r.sm_activity if r else 0.0,
                decode_tps=r.decode_tps if r else 0.0, prefill_tps=r.prefill_tps if r else 0.0,
                prefill_missed_tps=r.prefill_missed_tps if r else 0.0,
                kv_capacity_tokens=r.kv_capacity_tokens if r else 0,
            ))
        return AgentHeartbeat(self.config.agent_id, self.config.region, self.config.sku, self.config.gpus,
                              self.config.address, self.applied_epoch, now_s, tuple(statuses),
                              self.terminating_at_s, self.warm_models(), self.config.s0, self.config.s1,
                              self.config.s2, self.config.rdma_priority, self.fencing_token)


def _count(units: Iterable[OperatorReplicas]) -> tuple[OperatorReplicas, ...]:
    """Single replicas of stages gathered into one entry per stage shape, by name."""
    counts: dict[OperatorReplicas, int] = {}
    for unit in units:
        counts[unit] = counts.get(unit, 0) + 1
    return tuple(sorted((replace(u, replicas=n) for u, n in counts.items()), key=lambda r: (r.name, r.tp, r.share)))
