"""Events delivered to services. Each is an immutable value: a frozen dataclass, except the three made
once per request (RequestArrived, RequestFinished, DispatchFailed), which are slotted dataclasses not
declared frozen because a frozen one costs three times as much to build (see opscale.model.request);
nothing mutates them either. `EngineReport` is the engine's own output (opscale.engine.outputs); the
node-agent receives it as an event. The live runtime maps events to and from the protobuf messages of
proto/opscale/v1 field by field (see opscale.runtime.live.codec): a field added here needs its proto
field too, or the codec refuses to load."""

from __future__ import annotations

from dataclasses import dataclass, field

from opscale.engine.outputs import EngineReport
from opscale.model import InstanceSpec, InstanceStatus, Plan, RdmaPriority, Request, RequestOutcome, Role
from opscale.model.kv_events import KvBlockEvent, KvEventBatch, KvEventKind

# The router-facing KV events (KvEventBatch of KvBlockEvent) are model types, because the routing layer
# keeps the prefix index and may not import services; they are events of this module all the same, on
# the wire through the same codec.

__all__ = [
    "AgentHeartbeat", "ApplyCommand", "DispatchFailed", "DrainCommand", "EngineReport", "Event", "ForecastIssued",
    "KvBlockEvent", "KvEventBatch", "KvEventKind", "PlanPublished", "PoolUtilisation", "PrefillHandedOff",
    "RequestArrived", "RequestFinished", "RouterLoad", "WindowStats",
]


@dataclass(slots=True)
class RequestArrived:
    """A request reached the router (HTTP in the live runtime, the trace in the simulator)."""

    request: Request


@dataclass(slots=True)
class RequestFinished:
    """The engine finished (or failed) a request; the router releases its accounting."""

    outcome: RequestOutcome


@dataclass(slots=True)
class DispatchFailed:
    """An instance refused or lost a request before its first token (draining, stopped, unreachable).
    The router stops using that instance and routes the request again."""

    request: Request
    instance_id: str
    reason: str
    attempt: int = 1


@dataclass(slots=True)
class PrefillHandedOff:
    """A prefill instance finished a request's prefill and handed its KV to the decode instance it was
    paired with (opscale.engine.outputs.PrefillDone): the router stops counting the request against the
    prefill instance; the decode instance keeps it until it finishes."""

    request_id: str
    prefill_instance_id: str
    decode_instance_id: str
    at_s: float


@dataclass(frozen=True, slots=True)
class AgentHeartbeat:
    """A node-agent's periodic report: who it is, where, its free GPUs and every instance it runs."""

    agent_id: str
    region: str
    sku: str
    gpus_total: int
    address: str
    epoch: int
    at_s: float
    instances: tuple[InstanceStatus, ...] = ()
    terminating_at_s: float | None = None  # the host is being reclaimed then (spot preemption notice)
    warm_models: tuple[str, ...] = ()  # models whose weights the host holds in memory (a warm load here)
    # Where the host sits in the network (HeteroScale's tiers): its leaf switch, mini-pod and big-pod;
    # "" when not configured. A KV transfer between two hosts is priced by the nearest tier they share.
    s0: str = ""
    s1: str = ""
    s2: str = ""
    # The priority of the host's RDMA subgroup: placement spends high-priority hosts last, frees them first.
    rdma_priority: RdmaPriority = RdmaPriority.LOW
    fencing_token: int = 0  # the newest planner lease generation the agent has seen (ApplyCommand)


@dataclass(frozen=True, slots=True)
class RouterLoad:
    """The router's leading view of demand, every report interval: requests (and their prompt and
    output tokens) that arrived since the previous report, and requests it holds because no instance
    can take them yet. The aggregator's windows lag (they count finished requests); this does not, so
    the planner sees a surge, or work waiting for a model scaled to zero, at once."""

    router_id: str
    region: str
    at_s: float
    pending_by_model: dict[str, int]
    interval_s: float = 0.0
    arrivals_by_model: dict[str, int] = field(default_factory=dict)
    prompt_tokens_by_model: dict[str, int] = field(default_factory=dict)
    output_tokens_by_model: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WindowStats:
    """Aggregated request records of one (model, region, tier) over one window ending at `end_s`.

    Example: 30 requests in a 10 s window, 12 000 prompt tokens -> arrival_rps 3.0,
    prompt_tokens_per_s 1200.0.
    """

    model: str
    region: str
    tier: str
    window_s: float
    end_s: float
    requests: int
    completed: int
    arrival_rps: float
    prompt_tokens_per_s: float
    output_tokens_per_s: float
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    tbt_p50_s: float | None
    tbt_p99_s: float | None
    e2e_p50_s: float | None
    e2e_p99_s: float | None
    slo_attainment: float | None


@dataclass(frozen=True, slots=True)
class PoolUtilisation:
    """How hard one pool (model, region, role) worked over one window ending at `end_s`, from its
    instances' heartbeats (see opscale.services.aggregator): `gpu_util` is GPU utilisation as nvidia-smi
    has it (time busy) and `sm_activity` the compute used over the peak, both means over the pool's
    GPUs; the token rates are the pool's totals (`decode_tps`: tokens of decode steps, `prefill_tps`:
    prompt tokens prefilled, prefix-cache hits included, `prefill_missed_tps`: those computed);
    `instances` is the mean number of serving instances.

    Example: two 1-GPU instances busy 1.0 and 0.5 at SM activity 0.1 and 0.3, decoding 900 and 300
    tokens/s -> gpu_util 0.75, sm_activity 0.2, decode_tps 1200.0, instances 2.0.
    """

    model: str
    region: str
    role: Role
    window_s: float
    end_s: float
    instances: float
    gpu_util: float
    sm_activity: float
    decode_tps: float
    prefill_tps: float
    prefill_missed_tps: float


@dataclass(frozen=True, slots=True)
class ForecastIssued:
    """Expected arrival rate of one (model, region, tier) over `horizon_s` after `at_s`, with an
    interval [lo, hi]."""

    model: str
    region: str
    tier: str
    at_s: float
    horizon_s: float
    mean_rps: float
    lo_rps: float
    hi_rps: float
    method: str


@dataclass(frozen=True, slots=True)
class PlanPublished:
    plan: Plan


@dataclass(frozen=True, slots=True)
class ApplyCommand:
    """Desired state for one agent. Idempotent: keyed by (fencing_token, epoch, command_id); an older one is
    ignored."""

    agent_id: str
    epoch: int
    command_id: str
    instances: tuple[InstanceSpec, ...]
    prestage: tuple[str, ...] = ()  # models whose weights to stage into host memory (a scale-out expected here)
    # The sending planner's lease generation (0: unfenced). An agent refuses one older than the newest it
    # has seen, so a planner that lost its lease cannot undo its successor's plan; order: (token, epoch).
    fencing_token: int = 0


@dataclass(frozen=True, slots=True)
class DrainCommand:
    """Stop routing to an instance, let in-flight work finish (or hit the deadline), then stop it."""

    agent_id: str
    instance_id: str
    command_id: str
    deadline_s: float | None = None


Event = (
    RequestArrived | RequestFinished | DispatchFailed | PrefillHandedOff | AgentHeartbeat | KvEventBatch | RouterLoad
    | WindowStats
    | PoolUtilisation | ForecastIssued | PlanPublished | ApplyCommand | DrainCommand | EngineReport
)
