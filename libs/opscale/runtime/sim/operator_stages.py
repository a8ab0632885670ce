"""The simulated world of one operator-scaled pool: stage queues served by operator replicas, driven by
an `operator_level` or `model_level` policy (`opscale.planning.operators.policy`) on a fast loop.

Why a world of its own: `SimWorld` runs engines that node-agents start, base instances with operator
replicas attached, each engine pricing its iterations as stage queues pipelined over micro-batches
(`opscale.perf.operator_replicas`). This world executes the policy's `StageTargets` directly, as
discrete queues with every stage replica its own server (the planner's floor included), with the same accounting a `SimWorld` run reports (requests, completed, dropped, TTFT/TBT,
SLO attainment, GPU-hours, energy), so the two levels are compared on one clock and one cost model.

What runs. A request is a customer of the prefill stages in path order (each stage a set of operator
families with its replicas), then, one token step at a time, of the decode stages: the first token
leaves the last prefill stage; each further token is one pass of the decode path, as the planner's
M/M/R model has it (customers: prompts in prefill, token steps of a running sequence in decode).
Each stage has one FIFO queue that its idle ready replicas pull from, up to the stage's batch cap:
a pull by whichever replica frees first is the limit of the capacity-weighted shortest operator
queue (OpScale's router) when the queues' state is known exactly, as it is here. A batch of k
customers takes `StageCosts.prefill_s` / `decode_s` at k, the batch's mean prompt or context
length, the replica's tp and SM share (the prices the planner used, from one owner); the customers
then move on after the stage's transfer (the plan's, at its batch cap: an upper bound).

Scaling. Every `interval_s` the policy sees the pool's arrival rate and token rates over the last
`window_s` and returns targets: per stage, replicas at an SM share and a batch cap. Missing replicas
are added and become ready `load_s` later (an operator replica attaching to the running base engine
loads its operators' weights; a replica of every operator is a whole replica); surplus ones go,
those still loading first, then idle ones, and busy ones finish their batch first (drain: no
customer is ever dropped). A replica at a share the stage no longer targets keeps serving until the
new ones are ready (make before break). The run starts with the targets of `initial_rps` ready.

Accounting. GPU-seconds: each replica's GPU-equivalents (the plan's per-replica cost: tp at a whole
share, else its SM or memory fraction) from the moment it is added, loading included, until it is
removed. Energy: idle power over the same GPU-equivalents and time, plus the SKU's dynamic power
times tp x share over the replica's busy time. Every request is counted once on arrival and once
when it finishes; `StageRunResult.double_counted` and `in_flight` make conservation checkable.
Packing replicas onto whole GPUs is not simulated (GPU-equivalents are what is charged).
"""

from __future__ import annotations

import heapq
import itertools
import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from opscale.model import Observation, PoolKey, PoolObservation, Request
from opscale.planning.operators.costs import StageCosts
from opscale.planning.operators.dag import Phase
from opscale.planning.operators.policy import OperatorScalingPolicy, StageTarget, StageTargets

_LENGTH_BUCKET = 64  # tokens: service times are memoised per batch size and length bucket


@dataclass(slots=True)
class _Customer:
    request: Request
    first_token_s: float | None = None
    last_token_s: float = 0.0
    tokens: int = 0
    tbt_sum_s: float = 0.0

    @property
    def context(self) -> int:
        return self.request.prompt_tokens + self.tokens


@dataclass(slots=True)
class _Replica:
    replica_id: int
    share: float
    tp: int
    gpu_cost: float
    added_s: float
    ready_s: float
    busy: bool = False
    draining: bool = False
    removed_s: float | None = None
    busy_s: float = 0.0

    def alive(self) -> bool:
        return self.removed_s is None and not self.draining

    def idle_ready(self, now_s: float) -> bool:
        return self.alive() and not self.busy and self.ready_s <= now_s


@dataclass(slots=True)
class _Stage:
    target: StageTarget
    queue: deque[_Customer] = field(default_factory=deque)
    replicas: list[_Replica] = field(default_factory=list)

    @property
    def key(self) -> tuple[Phase, frozenset]:
        return self.target.phase, self.target.operators


@dataclass(frozen=True, slots=True)
class ScaleEvent:
    """A replica added at `added_s`, serving from `ready_s`."""

    stage: str
    added_s: float
    ready_s: float


@dataclass(frozen=True, slots=True)
class StageRunResult:
    level: str
    requests: int
    completed: int
    dropped: int
    in_flight: int
    double_counted: int
    ttft_s: dict[str, float]  # request id -> TTFT
    mean_tbt_s: dict[str, float]  # request id -> mean time between its tokens
    arrival_s: dict[str, float]
    gpu_hours: float
    energy_kwh: float
    scale_ups: tuple[ScaleEvent, ...]
    ttft_slo_s: float
    tbt_slo_s: float
    gpu_cost_timeline: tuple[tuple[float, float], ...]  # (tick time, GPU-equivalents held)

    def slo_attainment(self, since_s: float = -math.inf, until_s: float = math.inf) -> float:
        """Fraction of the requests arriving in [since_s, until_s) that finished within both objectives
        (TTFT, and mean TBT); unfinished ones count as misses."""
        ids = [r for r, a in self.arrival_s.items() if since_s <= a < until_s]
        if not ids:
            return 1.0
        ok = sum(1 for r in ids if r in self.ttft_s and self.ttft_s[r] <= self.ttft_slo_s
                 and self.mean_tbt_s.get(r, 0.0) <= self.tbt_slo_s)
        return ok / len(ids)

    def ttft_quantile(self, q: float, since_s: float = -math.inf, until_s: float = math.inf) -> float:
        values = sorted(v for r, v in self.ttft_s.items() if since_s <= self.arrival_s[r] < until_s)
        if not values:
            return math.nan
        return values[min(len(values) - 1, math.ceil(q * len(values)) - 1)]

    def recovered_s(self, since_s: float, until_s: float) -> float:
        """Seconds from `since_s` to the arrival of the last request in [since_s, until_s) that missed the
        TTFT objective (0 when none did): after it, every request was served in time."""
        misses = [a for r, a in self.arrival_s.items()
                  if since_s <= a < until_s and self.ttft_s.get(r, math.inf) > self.ttft_slo_s]
        return max(misses) - since_s if misses else 0.0

    def first_ready_s(self, since_s: float, until_s: float) -> float | None:
        """Seconds from `since_s` until the first replica added in [since_s, until_s) served; None if none
        was added."""
        readies = [e.ready_s for e in self.scale_ups if since_s <= e.added_s < until_s]
        return min(readies) - since_s if readies else None

    def capacity_ready_s(self, since_s: float, until_s: float) -> float | None:
        """Seconds from `since_s` until the last replica added in [since_s, until_s) was ready; None if
        none was added."""
        readies = [e.ready_s for e in self.scale_ups if since_s <= e.added_s < until_s]
        return max(readies) - since_s if readies else None


@dataclass
class StageWorld:
    """One pool (model, region) of `policy`, serving `requests` until `until_s` (see the module docstring)."""

    policy: OperatorScalingPolicy
    model: str
    region: str = "sim"
    interval_s: float = 1.0
    window_s: float = 2.0
    initial_rps: float = 1.0

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.window_s <= 0:
            raise ValueError(f"interval_s and window_s must be positive, got {self.interval_s!r}, {self.window_s!r}")
        self._key = PoolKey(self.model, self.region)
        planner = self.policy.planner(self.model)
        self._costs: StageCosts = planner.costs
        self._sku = planner.sku
        self._service_memo: dict[tuple, float] = {}
        self._heap: list[tuple[float, int, str, object]] = []
        self._seq = itertools.count()
        self._stages: dict[Phase, list[_Stage]] = {Phase.PREFILL: [], Phase.DECODE: []}
        self._retired: list[_Replica] = []
        self._ids = itertools.count()
        self._scale_ups: list[ScaleEvent] = []
        self._recent: deque[Request] = deque()
        self._arrivals: dict[str, float] = {}
        self._ttft: dict[str, float] = {}
        self._tbt: dict[str, float] = {}
        self._finished: set[str] = set()
        self._double = 0
        self._timeline: list[tuple[float, float]] = []
        self._state = self.policy.initial_state()

    # --- the run ----------------------------------------------------------------------------------

    def run(self, requests: Iterable[Request], until_s: float) -> StageRunResult:
        for request in requests:
            if request.model != self.model:
                raise ValueError(f"request {request.request_id} is for {request.model!r}, this pool serves {self.model!r}")
            self._push(request.arrival_s, "arrive", request)
        self._control(0.0, initial=True)
        self._push(self.interval_s, "tick", None)
        now = 0.0
        while self._heap and self._heap[0][0] <= until_s:
            now, _, kind, payload = heapq.heappop(self._heap)
            if kind == "arrive":
                self._arrive(payload, now)  # type: ignore[arg-type]
            elif kind == "free":
                self._free(payload, now)  # type: ignore[arg-type]
            elif kind == "move":
                stage, customers = payload  # type: ignore[misc]
                for c in customers:
                    self._advance(stage, c, now)
            elif kind == "ready":
                self._start(payload, now)  # type: ignore[arg-type]
            elif kind == "tick":
                self._control(now)
                self._push(now + self.interval_s, "tick", None)
        return self._result(until_s)

    def _push(self, t: float, kind: str, payload: object) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, payload))

    # --- requests through the stages --------------------------------------------------------------

    def _arrive(self, request: Request, now: float) -> None:
        self._arrivals[request.request_id] = request.arrival_s
        self._recent.append(request)
        self._enqueue(self._stages[Phase.PREFILL][0], _Customer(request), now)

    def _enqueue(self, stage: _Stage, customer: _Customer, now: float) -> None:
        stage.queue.append(customer)
        self._start(stage, now)

    def _start(self, stage: _Stage, now: float) -> None:
        """Idle ready replicas (the largest share first: the fastest) each take up to a batch."""
        if not stage.queue:
            return
        for replica in sorted((r for r in stage.replicas if r.idle_ready(now)), key=lambda r: -r.share):
            if not stage.queue:
                break
            batch = [stage.queue.popleft() for _ in range(min(stage.target.batch, len(stage.queue)))]
            service = self._service_s(stage, replica, batch)
            replica.busy = True
            replica.busy_s += service
            self._push(now + service, "free", (stage, replica))
            self._push(now + service + stage.target.transfer_s, "move", (stage, batch))

    def _service_s(self, stage: _Stage, replica: _Replica, batch: list[_Customer]) -> float:
        phase, ops = stage.key
        k = len(batch)
        if phase is Phase.PREFILL:
            length = statistics.fmean(c.request.prompt_tokens for c in batch)
        else:
            length = statistics.fmean(c.context for c in batch)
        bucket = max(1, math.ceil(length / _LENGTH_BUCKET)) * _LENGTH_BUCKET
        memo = (phase, ops, replica.tp, replica.share, k, bucket)
        if memo not in self._service_memo:
            if phase is Phase.PREFILL:
                self._service_memo[memo] = self._costs.prefill_s(ops, replica.tp, k, bucket, replica.share)
            else:
                self._service_memo[memo] = self._costs.decode_s(ops, replica.tp, k, bucket, replica.share)
        return self._service_memo[memo]

    def _free(self, payload: tuple[_Stage, _Replica], now: float) -> None:
        stage, replica = payload
        replica.busy = False
        if replica.draining:
            self._remove(stage, replica, now)
        self._start(stage, now)

    def _advance(self, stage: _Stage, customer: _Customer, now: float) -> None:
        """`customer` leaves `stage`: on to the next stage of its phase, or the phase is done."""
        phase = stage.target.phase
        path = self._stages[phase]
        i = path.index(stage)
        if i + 1 < len(path):
            self._enqueue(path[i + 1], customer, now)
            return
        request = customer.request
        if phase is Phase.PREFILL:
            customer.first_token_s = now
            self._ttft[request.request_id] = now - request.arrival_s
        else:
            customer.tbt_sum_s += now - customer.last_token_s
        customer.last_token_s = now
        customer.tokens += 1
        if customer.tokens >= request.output_tokens:
            self._finish(customer)
        else:
            self._enqueue(self._stages[Phase.DECODE][0], customer, now)

    def _finish(self, customer: _Customer) -> None:
        rid = customer.request.request_id
        if rid in self._finished:
            self._double += 1
            return
        self._finished.add(rid)
        steps = customer.tokens - 1
        self._tbt[rid] = customer.tbt_sum_s / steps if steps > 0 else 0.0

    # --- the fast loop ------------------------------------------------------------------------------

    def _control(self, now: float, initial: bool = False) -> None:
        while self._recent and self._recent[0].arrival_s < now - self.window_s:
            self._recent.popleft()
        if initial:
            rps = self.initial_rps
            deployment = self.policy.deployment(self.model)
            prompt_tps, output_tps = rps * deployment.typical_prompt_tokens, rps * deployment.typical_output_tokens
        else:
            span = min(self.window_s, now) or self.window_s
            rps = len(self._recent) / span
            prompt_tps = sum(r.prompt_tokens for r in self._recent) / span
            output_tps = sum(r.output_tokens for r in self._recent) / span
        # Queued: requests waiting for their first token (in a prefill stage's queue), as an engine reports.
        queued = sum(len(s.queue) for s in self._stages[Phase.PREFILL])
        pool = PoolObservation(self._key, arrival_rps=rps, prompt_tokens_per_s=prompt_tps,
                               output_tokens_per_s=output_tps, queued=queued)
        effects = self.policy.decide(Observation(now_s=now, pools={self._key: pool}), self._state, now)
        self._state = effects.state
        targets: StageTargets | None = self._state.targets.get(self._key)
        if targets is not None:
            self._reconcile(targets, now, initial)
        self._timeline.append((now, self._held_gpu_cost()))

    def _reconcile(self, targets: StageTargets, now: float, initial: bool) -> None:
        for phase in (Phase.PREFILL, Phase.DECODE):
            wanted = targets.phase(phase)
            path = self._stages[phase]
            if not path:
                path.extend(_Stage(t) for t in wanted)
            if [s.key for s in path] != [(t.phase, t.operators) for t in wanted]:
                raise ValueError(f"{self.policy.name}: the stages of {self.model} changed mid-run; a running pool "
                                 f"replicates its stages, it does not reshard them")
            for stage, target in zip(path, wanted, strict=True):
                stage.target = target
                self._size(stage, now, initial)
                self._start(stage, now)

    def _size(self, stage: _Stage, now: float, initial: bool) -> None:
        t = stage.target
        same = [r for r in stage.replicas if r.alive() and r.share == t.share]
        for _ in range(t.replicas - len(same)):
            ready = now if initial else now + t.load_s
            replica = _Replica(next(self._ids), t.share, t.tp, t.gpu_cost, now, ready)
            stage.replicas.append(replica)
            if not initial:
                self._scale_ups.append(ScaleEvent(t.name, now, ready))
                self._push(ready, "ready", stage)
        # Surplus: loading ones first (they serve nothing yet), then idle, then busy (drained).
        surplus = len(same) - t.replicas
        for replica in sorted(same, key=lambda r: (r.ready_s <= now, r.busy, -r.added_s))[:max(0, surplus)]:
            self._retire(stage, replica, now)
        ready_same = sum(1 for r in stage.replicas if r.alive() and r.share == t.share and r.ready_s <= now)
        if ready_same >= t.replicas:  # make before break: other shares go once the new ones serve
            for replica in [r for r in stage.replicas if r.alive() and r.share != t.share]:
                self._retire(stage, replica, now)

    def _retire(self, stage: _Stage, replica: _Replica, now: float) -> None:
        if replica.busy:
            replica.draining = True
        else:
            self._remove(stage, replica, now)

    def _remove(self, stage: _Stage, replica: _Replica, now: float) -> None:
        replica.removed_s = now
        stage.replicas.remove(replica)
        self._retired.append(replica)

    def _held_gpu_cost(self) -> float:
        return sum(r.gpu_cost for path in self._stages.values() for s in path for r in s.replicas)

    # --- accounting -----------------------------------------------------------------------------------

    def _result(self, until_s: float) -> StageRunResult:
        live = [r for path in self._stages.values() for s in path for r in s.replicas]
        gpu_s = idle_j = dynamic_j = 0.0
        for r in [*self._retired, *live]:
            life = (r.removed_s if r.removed_s is not None else until_s) - r.added_s
            gpu_s += r.gpu_cost * life
            idle_j += self._sku.idle_power_w * r.gpu_cost * life
            dynamic_j += (self._sku.max_power_w - self._sku.idle_power_w) * r.tp * r.share * r.busy_s
        completed = len(self._finished)
        return StageRunResult(
            level=self.policy.level, requests=len(self._arrivals), completed=completed, dropped=0,
            in_flight=len(self._arrivals) - completed, double_counted=self._double,
            ttft_s=dict(self._ttft), mean_tbt_s=dict(self._tbt), arrival_s=dict(self._arrivals),
            gpu_hours=gpu_s / 3600, energy_kwh=(idle_j + dynamic_j) / 3.6e6, scale_ups=tuple(self._scale_ups),
            ttft_slo_s=self.policy.objective.ttft_slo_s, tbt_slo_s=self.policy.objective.tbt_slo_s,
            gpu_cost_timeline=tuple(self._timeline))
