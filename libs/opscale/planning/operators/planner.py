"""The operator planner (PAPERS.md §1.3): replicas and batch size per operator stage so that the prefill
path meets the TTFT budget and the decode path the TBT budget, with the fewest GPUs.

Model. Prefill and decode are planned as separate queues. A phase's forward pass is cut into stages,
each a set of operator families (`opscale.perf.operators.Operator`) run together on whole GPUs or on an
SM share of one (`opscale.perf.sm_share`: MPS-style spatial partitions, priced by
`opscale.perf.operator_profiles`):
co-locating small families (the LM head with the projections, say) is choosing a coarser partition,
priced exactly by the perf model, instead of splitting a GPU it cannot price. Every partition of the
families is searched (15 for four families); the one-block partition is the model-level baseline, so
the operator planner never needs more GPUs than it. Stage s with R replicas and batch b is an M/M/R
queue: customers (prompts for prefill, one token step of a running sequence for decode) arrive at
lam, a replica serves b of them per iteration of S(b) seconds (`StageCosts`), mu = b / S(b). The
phase latency is the sum over stages of wait (the Erlang-C quantile or mean, `queueing`) + S(b) +
the transfers of the stage's outgoing DAG edges (`OperatorDag.crossings`, priced by the
`opscale.perf.transfer` path of the configured topology, one per edge and layer). b is a cap: a
replica may run less when the queue is short, so S(b) bounds the service time from above.

Because the path latency is a sum of per-stage terms, each stage's best batch for a given share and
replica count is independent of the others: f_s(share, R) = min over b of [wait + S(b) + transfer(b)].
A replica's GPU cost is tp at a whole share, else max(share, its memory / a GPU's usable memory) (the
dominant resource: SMs or memory); a stage's cost is the sum over its replicas. Over shares and replica
counts each stage has a Pareto frontier of (cost, latency) points, generated lazily in cost order
(`_Frontier`); the search is over one frontier point per stage.

Greedy (`plan`): start each stage at its cheapest stable point, then move the stage whose next
frontier points (within a look-ahead window of GPU cost, doubled when nothing in it gains, since f_s is
not convex) gain the most latency per GPU added, until the budget is met; then step back where the
budget allows. Oracle (`oracle`): every frontier vector of every partition up to the greedy answer's
cost (exact for the cost; the last stage takes its cheapest point that fits the remaining budget).
Baseline (`model_level`): the one-stage partition on whole GPUs, the same queueing model.
Finally the replicas of both phases are placed on whole GPUs of hosts (`placement`: contention-aware
best fit with a locality tie-break; partitions of prefill and decode stages may share a GPU) and the
plan's power and energy are computed (`energy`). The cost the
search minimises ignores packing fragments, so a plan with partitions is compared with the same search
on whole GPUs and the one on fewer packed GPUs is returned.

Approximations, the same for both levels: a request waits once per stage per forward pass (stages
pipeline the layers, as MegaScale-Infer's ping-pong does), not once per layer visit; summing per-stage
wait quantiles bounds the path's quantile from above; each stage pays its own per-iteration overhead
(its own scheduler), where the engine's synchronous split model pays one; the decode attention
replicas share one queue although a sequence's KV pins it to one of them; their KV floor comes from
Little's law with every token at the TBT budget; the prefill-to-decode KV hand-off is in neither
budget. A partition below a whole GPU is charged the flat co-location allowance wherever it lands;
placement then checks each path against its budget with the slowdowns its neighbours actually cause and
the transfers of where its replicas sit (`OperatorPlan.packing.phases`).

Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from opscale.model import LatencyObjective, ModelSpec, Sku
from opscale.perf.operators import Operator
from opscale.perf.profiles import ProfileSet
from opscale.planning.operators.config import OperatorPlannerConfig, Workload
from opscale.planning.operators.costs import StageCosts
from opscale.planning.operators.dag import OperatorDag, Phase, build_dag
from opscale.planning.operators.energy import FamilyBusy, plan_energy
from opscale.planning.operators.placement import Placer
from opscale.planning.operators.plan import OperatorPlan, PhasePlan, StagePlan
from opscale.planning.operators.queueing import wait_quantile_s

_FAMILIES = tuple(Operator)
_ALL = frozenset(_FAMILIES)
_INF = math.inf
_WHOLE = (1.0,)


def partitions(items: Sequence[Operator]) -> list[tuple[frozenset[Operator], ...]]:
    """Every set partition of `items` (Bell(4) = 15 for the four families)."""
    if not items:
        return [()]
    first, rest = items[0], items[1:]
    out: list[tuple[frozenset[Operator], ...]] = []
    for part in partitions(rest):
        out.append((frozenset({first}), *part))
        for i, block in enumerate(part):
            out.append((*part[:i], block | {first}, *part[i + 1:]))
    return out


_PARTITIONS = tuple(partitions(_FAMILIES))


@dataclass(frozen=True, slots=True)
class _Option:
    """One batch size of a stage: its service and transfer seconds, and mu = batch / service."""

    batch: int
    service_s: float
    transfer_s: float
    mu: float
    fixed_bytes: float  # per GPU of a replica: weights + this batch's activations and attention workspace
    held_bytes: float  # per GPU: this batch's KV (attention stages)


@dataclass(frozen=True, slots=True)
class _StageShape:
    """What a stage costs at one SM share for one workload shape, independent of the arrival rate."""

    ops: frozenset[Operator]
    tp: int
    share: float
    options: tuple[_Option, ...]  # sorted by batch
    gpu_bytes: float  # usable memory of one GPU
    holds_kv: bool  # decode attention: the KV of every sequence in flight lives on its replicas
    floor_s: float  # the fastest batch's service + transfer: no replica count does better
    min_fixed_bytes: float  # the smallest batch's fixed bytes
    kv_total_bytes: float = 0.0  # that KV (all GPUs of all replicas), set per arrival rate

    def replica_bytes(self, option: _Option, replicas: int) -> float:
        """Per GPU of each of `replicas` replicas running `option`: its fixed bytes and the larger of its
        batch's KV and its share of the KV in flight."""
        return option.fixed_bytes + max(option.held_bytes, self.kv_total_bytes / (replicas * self.tp))

    def cost(self, option: _Option, replicas: int) -> float:
        """GPU-equivalents of `replicas` replicas running `option` (see the module docstring)."""
        if self.share >= 1.0:
            return float(self.tp * replicas)
        return replicas * max(self.share, self.replica_bytes(option, replicas) / self.gpu_bytes)

    def r_floor(self) -> int:
        """Fewest replicas whose memory holds the KV in flight (Little's law; see `_shape`)."""
        if self.kv_total_bytes <= 0:
            return 1
        room = self.gpu_bytes - self.min_fixed_bytes
        return max(1, math.ceil(self.kv_total_bytes / (room * self.tp)))


class _Curve:
    """f(R) of one stage at one share and arrival rate: the best latency over its batch sizes, memoised."""

    __slots__ = ("shape", "lam", "quantile", "r_min", "floor_s", "_memo", "_erlang_b", "_loads")

    def __init__(self, shape: _StageShape, lam: float, quantile: float | None) -> None:
        self.shape, self.lam, self.quantile = shape, lam, quantile
        self._memo: dict[int, tuple[float, int]] = {}
        self._erlang_b: list[list[float]] = [[1.0] for _ in shape.options]
        self._loads = [lam / o.mu for o in shape.options]
        self.r_min = max(min(math.floor(a) + 1 for a in self._loads), shape.r_floor())
        self.floor_s = shape.floor_s

    def __call__(self, replicas: int) -> float:
        return self.best(replicas)[0]

    def cost(self, replicas: int) -> float:
        """GPU cost at `replicas`, running the batch `best` picks (inf when none is stable)."""
        _, i = self.best(replicas)
        return _INF if i < 0 else self.shape.cost(self.shape.options[i], replicas)

    def best(self, replicas: int) -> tuple[float, int]:
        """(latency, option index) at `replicas`; (inf, -1) when no batch size is stable."""
        hit = self._memo.get(replicas)
        if hit is not None:
            return hit
        best = (_INF, -1)
        if replicas >= self.r_min:
            shape = self.shape
            kv_each = shape.kv_total_bytes / (replicas * shape.tp)
            for i, o in enumerate(shape.options):
                if self._loads[i] >= replicas or o.fixed_bytes + kv_each > shape.gpu_bytes:
                    continue  # unstable, or this batch's workspace leaves no room for the KV in flight
                floor = o.service_s + o.transfer_s
                if floor >= best[0]:
                    continue  # cannot win whatever its wait
                total = self._wait(i, o, replicas) + floor
                if total < best[0]:
                    best = (total, i)
        self._memo[replicas] = best
        return best

    def queue(self, i: int, replicas: int) -> tuple[float, float, float]:
        """(wait, p_wait, utilisation) of option `i` at `replicas`."""
        o = self.shape.options[i]
        load = self.lam / o.mu
        if load >= replicas:
            return _INF, 1.0, load / replicas
        return self._wait(i, o, replicas), self._erlang_c(i, load, replicas), load / replicas

    def _wait(self, i: int, o: _Option, replicas: int) -> float:
        load = self.lam / o.mu
        if load >= replicas:
            return _INF
        c = self._erlang_c(i, load, replicas)
        drain = replicas * o.mu - self.lam
        return c / drain if self.quantile is None else wait_quantile_s(c, drain, self.quantile)

    def _erlang_c(self, i: int, load: float, replicas: int) -> float:
        # The Erlang-B recursion, kept per batch size so that R + 1 costs one step.
        b = self._erlang_b[i]
        while len(b) <= replicas:
            k = len(b)
            b.append(load * b[-1] / (k + load * b[-1]))
        br = b[replicas]
        return replicas * br / (replicas - load * (1.0 - br))


@dataclass(frozen=True, slots=True)
class _Point:
    cost: float
    latency: float
    curve: int  # index of the share's curve in the frontier
    replicas: int


class _Frontier:
    """The (cost, latency) Pareto frontier of one stage over its shares and replica counts, generated
    lazily in cost order: a heap holds each share's next replica count; a point is kept only if it is
    faster than every cheaper one (f is non-increasing in R, so a share stops once it reaches its floor)."""

    __slots__ = ("curves", "points", "costs", "_heap", "_max_replicas")

    def __init__(self, curves: Sequence[_Curve], max_replicas: int) -> None:
        self.curves = tuple(curves)
        self.points: list[_Point] = []
        self.costs: list[float] = []
        self._max_replicas = max_replicas
        self._heap = [(c.cost(c.r_min), k, c.r_min) for k, c in enumerate(self.curves)
                      if c.r_min <= max_replicas]
        heapq.heapify(self._heap)

    @property
    def exhausted(self) -> bool:
        return not self._heap

    def extend_to(self, cost: float) -> None:
        """Generate every frontier point of cost <= `cost`."""
        heap = self._heap
        while heap and heap[0][0] <= cost:
            c_cost, k, r = heapq.heappop(heap)
            curve = self.curves[k]
            lat = curve(r)
            if r < self._max_replicas and lat > curve.floor_s:
                heapq.heappush(heap, (curve.cost(r + 1), k, r + 1))
            if c_cost == _INF or (self.points and lat >= self.points[-1].latency):
                continue
            # Points no cheaper than this faster one are dominated (a batch change can lower the cost).
            while self.points and self.costs[-1] >= c_cost:
                self.points.pop()
                self.costs.pop()
            self.points.append(_Point(c_cost, lat, k, r))
            self.costs.append(c_cost)

    def first(self) -> _Point | None:
        while not self.points and self._heap:
            self.extend_to(self._heap[0][0])
        return self.points[0] if self.points else None

    def upto(self, cost: float) -> int:
        """Number of frontier points of cost <= `cost` (after generating them)."""
        self.extend_to(cost)
        return bisect.bisect_right(self.costs, cost)


_Best = tuple[float, float, tuple[frozenset[Operator], ...], list[_Frontier], list[int]]


class OperatorPlanner:
    """Plans `model` on `sku` against `objective` (TTFT budget for prefill, TBT for decode).

    Raises ValueError at planning time naming the objective field an SLO cannot meet on this SKU at
    any load, or `max_replicas` when the load needs more replicas than allowed. `profiles`: measured
    vidur profiles to price the families they cover (default: the calibrated roofline alone).
    """

    def __init__(self, model: ModelSpec, sku: Sku, objective: LatencyObjective,
                 config: OperatorPlannerConfig | None = None, *, profiles: ProfileSet | None = None) -> None:
        for label in ("ttft_slo_s", "tbt_slo_s"):
            value = getattr(objective, label)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{label} must be a finite positive number of seconds, got {value!r}")
        self.model, self.sku, self.objective = model, sku, objective
        self.config = config if config is not None else OperatorPlannerConfig()
        self.costs = StageCosts(model, sku, gpu_memory_utilization=self.config.gpu_memory_utilization,
                                sharing=self.config.sharing, profiles=profiles)
        self.dags: dict[Phase, OperatorDag] = {p: build_dag(model, p) for p in Phase}
        self.link = self.config.transfer.link(self.config.topology, sku.name)
        self.placer = Placer(self.costs, self.dags, self.config, sku)
        self._shapes: dict[tuple[Phase, frozenset[Operator], float, int, int], _StageShape | None] = {}

    def __repr__(self) -> str:
        return f"OperatorPlanner({self.model.name!r}, {self.sku.name!r})"

    # --- the three searches -----------------------------------------------------------------------------

    def plan(self, workload: Workload) -> OperatorPlan:
        """The greedy operator-level plan, on the configured SM shares."""
        return self._plan(workload, _PARTITIONS, self.config.sharing.shares, "operator", "greedy")

    def model_level(self, workload: Workload) -> OperatorPlan:
        """The baseline: whole-model replicas on whole GPUs, on the same queueing model."""
        return self._plan(workload, ((_ALL,),), _WHOLE, "model", "greedy")

    def plan_partition(self, workload: Workload, prefill: Sequence[frozenset[Operator]],
                       decode: Sequence[frozenset[Operator]],
                       shares: Mapping[tuple[Phase, frozenset[Operator]], float] | None = None) -> OperatorPlan:
        """The greedy operator-level plan keeping a running deployment's stages (`prefill`'s and
        `decode`'s partitions of the operator families): the runtime re-plans replicas and batches,
        never the split, since resharding costs far more than replicating (PAPERS.md §1.6). `shares`
        pins the SM share of the stages it names (their running replicas'); the others take any
        configured share."""
        parts = []
        for label, partition in (("prefill", prefill), ("decode", decode)):
            part = tuple(frozenset(Operator(op) for op in block) for block in partition)
            if sorted(op for block in part for op in block) != sorted(_FAMILIES):
                raise ValueError(f"{label} partition must hold every operator family exactly once, got "
                                 f"{[sorted(op.value for op in b) for b in part]}")
            parts.append((part,))
        pinned = None if shares is None else {key: (share,) for key, share in shares.items()}
        return self._plan(workload, parts[0], self.config.sharing.shares, "operator", "greedy",
                          decode_parts=parts[1], stage_shares=pinned)

    def oracle(self, workload: Workload) -> OperatorPlan:
        """The least-cost plan over every partition, share and replica vector (exponential: small cases)."""
        return self._plan(workload, _PARTITIONS, self.config.sharing.shares, "operator", "oracle")

    # --- search -----------------------------------------------------------------------------------------

    def _plan(self, workload: Workload, parts: Sequence[tuple[frozenset[Operator], ...]],
              shares: Sequence[float], level: str, search: str,
              curves: dict[tuple[Phase, frozenset[Operator], float], _Curve] | None = None,
              decode_parts: Sequence[tuple[frozenset[Operator], ...]] | None = None,
              stage_shares: Mapping[tuple[Phase, frozenset[Operator]], Sequence[float]] | None = None) -> OperatorPlan:
        """`parts` are the partitions searched for both phases, or prefill's alone when `decode_parts`
        are given; `stage_shares` replaces `shares` for the stages it names."""
        curves = {} if curves is None else curves  # f(R) memos of this workload, shared by both searches
        prefill = self._phase(workload, Phase.PREFILL, parts, shares, search, curves, stage_shares)
        decode = self._phase(workload, Phase.DECODE, parts if decode_parts is None else decode_parts, shares,
                             search, curves, stage_shares)
        packing = self.placer.place((prefill, decode), workload)
        energy = plan_energy(self.sku, workload, (prefill, decode), packing, self._family_busy(workload))
        plan = OperatorPlan(self.model.name, self.sku.name, workload, level, search,  # type: ignore[arg-type]
                            prefill, decode, packing, energy)
        if (stage_shares is None and tuple(shares) != _WHOLE and any(s.share < 1 for p in (prefill, decode) for s in p.stages)
                and packing.gpus > math.ceil(plan.gpu_cost - 1e-9)):
            # The search minimises GPU cost before packing; fragments can make a shared plan pack onto
            # more GPUs than the whole-GPU plan does. Never return the worse of the two. (When packing
            # lost nothing, the whole-GPU plan, whose cost is no lower, cannot pack onto fewer.)
            whole = self._plan(workload, parts, _WHOLE, level, search, curves, decode_parts)
            if (whole.gpus, whole.gpu_cost) < (plan.gpus, plan.gpu_cost):
                return whole
        return plan

    def _family_busy(self, workload: Workload) -> FamilyBusy:
        def busy(phase: Phase, stage: StagePlan, op: Operator) -> float:
            return self.costs.busy_s(frozenset({op}), phase, stage.tp, stage.batch, _mean_seq(workload, phase),
                                     stage.share)
        return busy

    def _phase(self, workload: Workload, phase: Phase, parts: Sequence[tuple[frozenset[Operator], ...]],
               shares: Sequence[float], search: str,
               curves: dict[tuple[Phase, frozenset[Operator], float], _Curve],
               stage_shares: Mapping[tuple[Phase, frozenset[Operator]], Sequence[float]] | None = None) -> PhasePlan:
        budget, field = ((self.objective.ttft_slo_s, "ttft_slo_s") if phase is Phase.PREFILL
                         else (self.objective.tbt_slo_s, "tbt_slo_s"))
        lam = workload.arrival_rps * (1 if phase is Phase.PREFILL else workload.output_tokens)
        fronts: dict[frozenset[Operator], _Frontier | None] = {}
        candidates: list[tuple[tuple[frozenset[Operator], ...], list[_Frontier]]] = []
        fastest = _INF
        for part in parts:
            for ops in part:
                if ops not in fronts:
                    own = shares if stage_shares is None else stage_shares.get((phase, ops), shares)
                    fronts[ops] = self._frontier(workload, phase, ops, lam, own, curves)
            stage_fronts = [fronts[ops] for ops in part]
            if all(f is not None for f in stage_fronts):
                candidates.append((part, stage_fronts))  # type: ignore[arg-type]
                fastest = min(fastest, sum(min(c.floor_s for c in f.curves)  # type: ignore[union-attr]
                                           for f in stage_fronts))
        best: _Best | None = None
        for part, fs in candidates:
            found = _greedy(fs, budget)
            if found is not None:
                best = _better(best, part, fs, found)
        if search == "oracle" and best is not None:
            for part, fs in candidates:
                found = _exhaustive(fs, budget, best[0])
                if found is not None:
                    best = _better(best, part, fs, found)
        if best is None:
            if fastest > budget:
                raise ValueError(
                    f"{field}={budget:g} s cannot be met by {self.model.name} on {self.sku.name}: the fastest "
                    f"{phase.value} path takes {fastest:.4g} s at its fastest batch with no queueing")
            raise ValueError(
                f"{phase.value} of {workload.arrival_rps:g} requests/s on {self.sku.name} needs more than "
                f"max_replicas={self.config.max_replicas} replicas of a stage (or more memory per replica) "
                f"to meet {field}={budget:g} s")
        _, _, part, fs, idx = best
        seq = _mean_seq(workload, phase)
        stages = tuple(self._stage_plan(f, f.points[i], phase, seq) for f, i in zip(fs, idx, strict=True))
        return PhasePlan(phase, budget, stages)

    def _stage_plan(self, front: _Frontier, point: _Point, phase: Phase, seq: float) -> StagePlan:
        curve = front.curves[point.curve]
        shape, r = curve.shape, point.replicas
        _, i = curve.best(r)
        o = shape.options[i]
        wait, p_wait, util = curve.queue(i, r)
        busy = self.costs.busy_s(shape.ops, phase, shape.tp, o.batch, seq, shape.share)
        return StagePlan(shape.ops, shape.tp, r, o.batch, o.service_s, o.transfer_s, wait, p_wait, util,
                         share=shape.share, replica_bytes=shape.replica_bytes(o, r), gpu_cost=shape.cost(o, r),
                         arrival_rate=curve.lam, busy_s=busy)

    def _frontier(self, workload: Workload, phase: Phase, ops: frozenset[Operator], lam: float,
                  shares: Sequence[float],
                  memo: dict[tuple[Phase, frozenset[Operator], float], _Curve]) -> _Frontier | None:
        curves = []
        for share in shares:
            curve = memo.get((phase, ops, share))
            if curve is None:
                shape = self._shape(workload, phase, ops, share)
                if shape is None:
                    continue
                curve = memo[(phase, ops, share)] = _Curve(shape, lam, self.config.wait_quantile)
            curves.append(curve)
        if not curves:
            return None
        front = _Frontier(curves, self.config.max_replicas)
        return front if front.first() is not None else None

    def _shape(self, workload: Workload, phase: Phase, ops: frozenset[Operator], share: float) -> _StageShape | None:
        key = (phase, ops, share, workload.prompt_tokens, workload.output_tokens)
        if key not in self._shapes:
            self._shapes[key] = self._build_shape(workload, phase, ops, share)
        shape = self._shapes[key]
        if shape is not None and shape.holds_kv:
            # The KV in flight scales with the arrival rate: Little's law, every token at the TBT budget.
            in_flight = workload.arrival_rps * workload.output_tokens * self.objective.tbt_slo_s
            per_seq = (workload.prompt_tokens + workload.output_tokens) * self.model.kv_bytes_per_token
            shape = dataclasses.replace(shape, kv_total_bytes=in_flight * per_seq)
        return shape

    def _build_shape(self, workload: Workload, phase: Phase, ops: frozenset[Operator],
                     share: float) -> _StageShape | None:
        tp = self.costs.tp_for(ops)
        if tp is None or (share < 1.0 and tp > 1):
            return None  # spatial partitions are priced for single-GPU replicas only
        cap = min((self.config.max_batch.get(op, _INF) for op in ops), default=_INF)
        gpu_bytes = self.costs.memory_bytes(1)
        weights = self.costs.weight_bytes(ops) / tp
        kv = self.model.kv_bytes_per_token / tp
        prompt, output = workload.prompt_tokens, workload.output_tokens
        crossing = self.dags[phase].crossings(ops)
        tokens_per_customer = prompt if phase is Phase.PREFILL else 1
        has_attention = Operator.ATTENTION in ops
        seq = prompt if phase is Phase.PREFILL else prompt + output
        options = []
        for b in self.config.batch_sizes:
            if b > cap:
                break
            held = b * seq * kv if has_attention else 0.0
            transient = self.costs.transient_bytes(ops, phase, tp, b, seq, self.config.attention_kernel)
            if weights + held + transient > gpu_bytes:
                break
            if phase is Phase.PREFILL:
                service = self.costs.prefill_s(ops, tp, b, prompt, share)
            else:
                service = self.costs.decode_s(ops, tp, b, prompt + output / 2, share)
            transfer = 0.0
            if crossing.edges:
                nbytes = b * tokens_per_customer * crossing.bytes_per_token
                transfer = crossing.edges * self.link.latency_s + nbytes / (self.link.gbps * 1e9)
            options.append(_Option(b, service, transfer, b / service, weights + transient, held))
        if not options:
            return None
        return _StageShape(ops, tp, share, tuple(options), gpu_bytes, holds_kv=has_attention and phase is Phase.DECODE,
                           floor_s=min(o.service_s + o.transfer_s for o in options),
                           min_fixed_bytes=min(o.fixed_bytes for o in options))


def _mean_seq(workload: Workload, phase: Phase) -> float:
    """The tokens a customer attends over: the prompt in prefill, the mean context in decode."""
    return workload.mean_seq(phase)


def cheapest_plan(model: ModelSpec, skus: Sequence[Sku], objective: LatencyObjective, workload: Workload,
                  config: OperatorPlannerConfig | None = None) -> OperatorPlan:
    """The operator-level plan of least on-demand cost per hour over `skus` (one SKU per plan).

    Raises ValueError naming the objective field when no SKU can meet it at any load, listing each
    SKU's reason."""
    if not skus:
        raise ValueError("skus: none given; the planner needs at least one GPU type")
    best: OperatorPlan | None = None
    best_cost = _INF
    reasons: list[str] = []
    for sku in skus:
        try:
            plan = OperatorPlanner(model, sku, objective, config).plan(workload)
        except ValueError as exc:
            reasons.append(str(exc))
            continue
        cost = plan.gpus * sku.price_usd_per_h
        if cost < best_cost:
            best, best_cost = plan, cost
    if best is None:
        fields = sorted({f for r in reasons for f in ("ttft_slo_s", "tbt_slo_s") if r.startswith(f)})
        what = " and ".join(fields) if fields else "the workload"
        raise ValueError(f"{what} cannot be met by {model.name} on any of {[s.name for s in skus]}: "
                         + "; ".join(reasons))
    return best


def _better(best: _Best | None, part: tuple[frozenset[Operator], ...], fronts: list[_Frontier],
            idx: list[int]) -> _Best:
    """The better of `best` and (part, points): lower GPU cost, then lower latency."""
    points = [f.points[i] for f, i in zip(fronts, idx, strict=True)]
    cost = sum(p.cost for p in points)
    latency = sum(p.latency for p in points)
    if best is None or (cost, latency) < best[:2]:
        return (cost, latency, part, fronts, idx)
    return best


def _greedy(fronts: Sequence[_Frontier], budget: float) -> list[int] | None:
    """A frontier point per stage meeting `budget`, grown by latency gained per GPU added, then pruned;
    None if the budget cannot be met."""
    idx = [0] * len(fronts)
    points = [f.first() for f in fronts]
    if any(p is None for p in points):
        return None
    lat = [p.latency for p in points]  # type: ignore[union-attr]
    cost = [p.cost for p in points]  # type: ignore[union-attr]
    total = sum(lat)
    while total > budget:
        move = None
        window = 1.0
        while move is None:
            move = _best_move(fronts, idx, lat, cost, window)
            if move is not None or all(f.exhausted for f in fronts):
                break
            window *= 2
        if move is None:
            return None
        s, j = move
        p = fronts[s].points[j]
        total += p.latency - lat[s]
        idx[s], lat[s], cost[s] = j, p.latency, p.cost
    # Prune: step back along the frontiers while the budget holds, the costliest stages first.
    for s in sorted(range(len(fronts)), key=lambda k: -cost[k]):
        f = fronts[s]
        while idx[s] > 0:
            p = f.points[idx[s] - 1]
            if total - lat[s] + p.latency > budget:
                break
            total += p.latency - lat[s]
            idx[s], lat[s], cost[s] = idx[s] - 1, p.latency, p.cost
    return idx


def _best_move(fronts: Sequence[_Frontier], idx: list[int], lat: list[float], cost: list[float],
               window: float) -> tuple[int, int] | None:
    """(stage, frontier index) with the largest latency gain per GPU added among the points within
    `window` GPUs of each stage's current cost; None if none gains."""
    best_score, best_move = 0.0, None
    for s, f in enumerate(fronts):
        end = f.upto(cost[s] + window)
        for j in range(idx[s] + 1, end):
            p = f.points[j]
            score = (lat[s] - p.latency) / (p.cost - cost[s])
            if score > best_score:
                best_score, best_move = score, (s, j)
    return best_move


def _exhaustive(fronts: Sequence[_Frontier], budget: float, max_cost: float) -> list[int] | None:
    """The least-cost frontier vector (ties: the lowest latency) meeting `budget` at cost <= `max_cost`:
    every vector is visited, less those already over the bound; the last stage takes its cheapest
    point that fits the remaining budget (its frontier's latency falls as its cost grows)."""
    n = len(fronts)
    first_cost = [f.points[0].cost for f in fronts]
    rest_min = [sum(first_cost[j] for j in range(s + 1, n)) for s in range(n)]
    tops = [f.upto(max_cost - sum(first_cost) + first_cost[s] + 1e-9) for s, f in enumerate(fronts)]
    best_lat = [fronts[s].points[tops[s] - 1].latency for s in range(n)]
    rest_lat = [sum(best_lat[j] for j in range(s + 1, n)) for s in range(n)]
    best: tuple[float, float, list[int]] | None = None
    vector = [0] * n

    def visit(s: int, spent: float, latency: float) -> None:
        nonlocal best
        f = fronts[s]
        if s == n - 1:
            # The cheapest point of the last stage that fits what is left of the budget.
            lo, hi = 0, tops[s]
            while lo < hi:
                mid = (lo + hi) // 2
                if latency + f.points[mid].latency <= budget:
                    hi = mid
                else:
                    lo = mid + 1
            if lo < tops[s]:
                p = f.points[lo]
                key = (spent + p.cost, latency + p.latency)
                if key[0] <= max_cost + 1e-9 and (best is None or key < best[:2]):
                    vector[s] = lo
                    best = (key[0], key[1], list(vector))
            return
        for j in range(tops[s]):
            p = f.points[j]
            if spent + p.cost + rest_min[s] > max_cost + 1e-9:
                break
            if latency + p.latency + rest_lat[s] > budget:
                continue
            vector[s] = j
            visit(s + 1, spent + p.cost, latency + p.latency)

    visit(0, 0.0, 0.0)
    return None if best is None else best[2]
