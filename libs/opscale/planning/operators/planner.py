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

Kept state. A controller plans every second, and under the interpreter's default garbage collector
the objects a plan allocates and keeps set off collections (a full one walks the whole heap and lands
in the plan time's tail). So the planner keeps, per workload shape, each stage's prices, its f(R)
curves (re-aimed at each plan's arrival rate, their Erlang-B recursions stepped forward) and its
frontiers (parallel lists of numbers), and a plan allocates little beyond its answer. What it keeps
never changes a plan (a fresh planner plans the same); one search runs at a time.

Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

import bisect
import math
import threading
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
    busy_s: float  # kernel seconds of the iteration (what draws dynamic power)


@dataclass(frozen=True, slots=True)
class _StageShape:
    """What a stage costs at one SM share for one workload shape, independent of the arrival rate: built
    once per shape and kept, so that a plan prices no stage again (the per-plan work is queueing only)."""

    ops: frozenset[Operator]
    tp: int
    share: float
    options: tuple[_Option, ...]  # sorted by batch
    gpu_bytes: float  # usable memory of one GPU
    holds_kv: bool  # decode attention: the KV of every sequence in flight lives on its replicas
    floor_s: float  # the fastest batch's service + transfer: no replica count does better
    min_fixed_bytes: float  # the smallest batch's fixed bytes
    # The options' fields the inner loop reads, as flat tuples (one index, no attribute look-ups).
    mus: tuple[float, ...]
    floors: tuple[float, ...]  # service + transfer
    fixed: tuple[float, ...]
    held: tuple[float, ...]


class _Curve:
    """f(R) of one stage at one share and arrival rate: the best latency over its batch sizes, memoised.

    One `_Curve` per stage shape lives as long as the planner and is `reset` to each plan's arrival rate,
    so a plan allocates no curve, no memo and no Erlang table (a latency-bound controller plans every
    second: allocation churn is what sets off the collector's full passes). The Erlang-B recursion is
    kept per batch size as its last (R, B(R)), stepped forward as the frontier asks for R + 1."""

    __slots__ = ("shape", "quantile", "lam", "kv_total", "r_min", "floor_s", "epoch",
                 "_loads", "_b_r", "_b", "_lat", "_idx")

    def __init__(self, shape: _StageShape, quantile: float | None) -> None:
        self.shape = shape
        self.quantile = quantile
        self.floor_s = shape.floor_s
        n = len(shape.options)
        self._loads = [0.0] * n  # lam / mu per batch size
        self._b_r = [0] * n  # per batch size: R of the last Erlang-B value computed
        self._b = [1.0] * n  # and B(R)
        self._lat: dict[int, float] = {}  # replicas -> best latency (inf: none stable)
        self._idx: dict[int, int] = {}  # replicas -> the option achieving it (-1: none)
        self.lam = self.kv_total = 0.0
        self.r_min = 1
        self.epoch = -1

    def reset(self, lam: float, kv_total: float, epoch: int) -> None:
        """Re-aim the curve at arrival rate `lam` (customers/s) with `kv_total` bytes of KV in flight."""
        self.lam, self.kv_total, self.epoch = lam, kv_total, epoch
        loads, b_r, b, mus = self._loads, self._b_r, self._b, self.shape.mus
        for i in range(len(mus)):
            loads[i] = lam / mus[i]
            b_r[i] = 0
            b[i] = 1.0
        self._lat.clear()
        self._idx.clear()
        self.r_min = max(math.floor(min(loads)) + 1, self.r_floor())

    def r_floor(self) -> int:
        """Fewest replicas whose memory holds the KV in flight (Little's law; see `OperatorPlanner._curve`)."""
        if self.kv_total <= 0:
            return 1
        room = self.shape.gpu_bytes - self.shape.min_fixed_bytes
        return max(1, math.ceil(self.kv_total / (room * self.shape.tp)))

    def latency(self, replicas: int) -> float:
        """The best latency at `replicas` (inf when no batch size is stable)."""
        lat = self._lat.get(replicas)
        return self._evaluate(replicas) if lat is None else lat

    def option(self, replicas: int) -> int:
        """The index of the batch size `latency` picks at `replicas` (-1 when none is stable)."""
        i = self._idx.get(replicas)
        if i is None:
            self._evaluate(replicas)
            i = self._idx[replicas]
        return i

    def cost(self, replicas: int) -> float:
        """GPU cost at `replicas`, running the batch `latency` picks (inf when none is stable)."""
        i = self.option(replicas)
        return _INF if i < 0 else self.option_cost(i, replicas)

    def replica_bytes(self, i: int, replicas: int) -> float:
        """Per GPU of each of `replicas` replicas running option `i`: its fixed bytes and the larger of its
        batch's KV and its share of the KV in flight."""
        return self.shape.fixed[i] + max(self.shape.held[i], self.kv_total / (replicas * self.shape.tp))

    def option_cost(self, i: int, replicas: int) -> float:
        """GPU-equivalents of `replicas` replicas running option `i` (see the module docstring)."""
        shape = self.shape
        if shape.share >= 1.0:
            return float(shape.tp * replicas)
        return replicas * max(shape.share, self.replica_bytes(i, replicas) / shape.gpu_bytes)

    def queue(self, i: int, replicas: int) -> tuple[float, float, float]:
        """(wait, p_wait, utilisation) of option `i` at `replicas`."""
        load = self._loads[i]
        if load >= replicas:
            return _INF, 1.0, load / replicas
        c = self._erlang_c(i, load, replicas)
        return self._wait(c, replicas * self.shape.mus[i] - self.lam), c, load / replicas

    def _wait(self, c: float, drain: float) -> float:
        return c / drain if self.quantile is None else wait_quantile_s(c, drain, self.quantile)

    def _evaluate(self, replicas: int) -> float:
        best, best_i = _INF, -1
        if replicas >= self.r_min:
            shape = self.shape
            kv_each = self.kv_total / (replicas * shape.tp)
            loads, floors, fixed, mus, room = self._loads, shape.floors, shape.fixed, shape.mus, shape.gpu_bytes
            for i in range(len(loads)):
                load = loads[i]
                if load >= replicas or fixed[i] + kv_each > room:
                    continue  # unstable, or this batch's workspace leaves no room for the KV in flight
                floor = floors[i]
                if floor >= best:
                    continue  # cannot win whatever its wait
                total = self._wait(self._erlang_c(i, load, replicas), replicas * mus[i] - self.lam) + floor
                if total < best:
                    best, best_i = total, i
        self._lat[replicas] = best
        self._idx[replicas] = best_i
        return best

    def _erlang_c(self, i: int, load: float, replicas: int) -> float:
        # The Erlang-B recursion of `queueing.erlang_b`, resumed from the last R asked of this batch size
        # (the frontier asks R, R + 1, ...), so that R + 1 costs one step; restarted if asked a lower R.
        k, b = self._b_r[i], self._b[i]
        if k > replicas:
            k, b = 0, 1.0
        while k < replicas:
            k += 1
            b = load * b / (k + load * b)
        self._b_r[i], self._b[i] = k, b
        return replicas * b / (replicas - load * (1.0 - b))


class _Frontier:
    """The (cost, latency) Pareto frontier of one stage over its shares and replica counts, generated
    lazily in cost order: each share's next replica count waits with its cost, the cheapest (ties: the
    first share) is taken next; a point is kept only if it is faster than every cheaper one (f is
    non-increasing in R, so a share stops once it reaches its floor). The points are parallel lists of
    plain numbers (`costs`, `lats`, the share's curve and the replicas), so that growing the frontier
    allocates no objects. Kept per stage and `reset` for each search."""

    __slots__ = ("curves", "floor_s", "costs", "lats", "curve_of", "replicas_of",
                 "_next_cost", "_next_r", "_max_replicas")

    def __init__(self, curves: Sequence[_Curve], max_replicas: int) -> None:
        self.curves = tuple(curves)
        self.floor_s = min(c.floor_s for c in self.curves)  # no point of any share is faster
        self.costs: list[float] = []
        self.lats: list[float] = []
        self.curve_of: list[int] = []  # index of the share's curve in `curves`
        self.replicas_of: list[int] = []
        self._next_cost = [0.0] * len(self.curves)
        self._next_r = [0] * len(self.curves)  # 0: the share has no further point
        self._max_replicas = max_replicas

    def reset(self) -> None:
        """Forget every point; start each share at its fewest stable replicas (curves already aimed)."""
        for points in (self.costs, self.lats, self.curve_of, self.replicas_of):
            points.clear()
        for k, c in enumerate(self.curves):
            r = c.r_min if c.r_min <= self._max_replicas else 0
            self._next_r[k] = r
            self._next_cost[k] = c.cost(r) if r else _INF

    @property
    def exhausted(self) -> bool:
        return not any(self._next_r)

    def _head(self) -> int:
        """The share whose next point is cheapest (ties: the lowest index); -1 when none is left."""
        head, head_cost = -1, _INF
        next_r, next_cost = self._next_r, self._next_cost
        for k in range(len(next_r)):
            if next_r[k] and (head < 0 or next_cost[k] < head_cost):
                head, head_cost = k, next_cost[k]
        return head

    def extend_to(self, cost: float) -> None:
        """Generate every frontier point of cost <= `cost`."""
        next_r, next_cost, costs, lats = self._next_r, self._next_cost, self.costs, self.lats
        while True:
            k = self._head()
            if k < 0 or next_cost[k] > cost:
                return
            c_cost, r, curve = next_cost[k], next_r[k], self.curves[k]
            lat = curve.latency(r)
            if r < self._max_replicas and lat > curve.floor_s:
                next_cost[k], next_r[k] = curve.cost(r + 1), r + 1
            else:
                next_r[k] = 0
            if c_cost == _INF or (lats and lat >= lats[-1]):
                continue
            # Points no cheaper than this faster one are dominated (a batch change can lower the cost).
            while costs and costs[-1] >= c_cost:
                costs.pop()
                lats.pop()
                self.curve_of.pop()
                self.replicas_of.pop()
            costs.append(c_cost)
            lats.append(lat)
            self.curve_of.append(k)
            self.replicas_of.append(r)

    def first(self) -> bool:
        """Generate the cheapest point; False when the stage has none."""
        while not self.costs:
            k = self._head()
            if k < 0:
                return False
            self.extend_to(self._next_cost[k])
        return True

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
        # Kept across plans, per workload shape (phase, families, share, prompt and output tokens): the
        # stage prices (`_StageShape`, in its curve), the curves re-aimed at each plan's rate and the frontiers, and
        # the per-family kernel seconds the energy model asks for.
        self._curves: dict[tuple[Phase, frozenset[Operator], float, int, int], _Curve | None] = {}
        self._fronts: dict[tuple[Phase, frozenset[Operator], tuple[float, ...], int, int], _Frontier | None] = {}
        self._busy: dict[tuple[Phase, Operator, int, int, float, int, int], float] = {}
        self._epoch = 0  # one per search: a curve last aimed in an older epoch is re-aimed on use
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OperatorPlanner({self.model.name!r}, {self.sku.name!r})"

    # --- the three searches -----------------------------------------------------------------------------

    def plan(self, workload: Workload) -> OperatorPlan:
        """The greedy operator-level plan, on the configured SM shares."""
        return self._search(workload, _PARTITIONS, self.config.sharing.shares, "operator", "greedy")

    def model_level(self, workload: Workload) -> OperatorPlan:
        """The baseline: whole-model replicas on whole GPUs, on the same queueing model."""
        return self._search(workload, ((_ALL,),), _WHOLE, "model", "greedy")

    def plan_partition(self, workload: Workload, prefill: Sequence[frozenset[Operator]],
                       decode: Sequence[frozenset[Operator]],
                       shares: Mapping[tuple[Phase, frozenset[Operator]], float] | None = None) -> OperatorPlan:
        """The greedy operator-level plan keeping a running deployment's stages (`prefill`'s and
        `decode`'s partitions of the operator families): the runtime re-plans replicas and batches,
        never the split, since resharding costs far more than replicating (PAPERS.md §1.6). `shares`
        pins the SM share of the stages it names (their running replicas'); the others take any
        configured share."""
        parts = [(_partition(label, partition),) for label, partition in (("prefill", prefill), ("decode", decode))]
        pinned = None if shares is None else {key: (share,) for key, share in shares.items()}
        return self._search(workload, parts[0], self.config.sharing.shares, "operator", "greedy",
                            decode_parts=parts[1], stage_shares=pinned)

    def plan_phase(self, workload: Workload, phase: Phase, partition: Sequence[frozenset[Operator]],
                   shares: Mapping[tuple[Phase, frozenset[Operator]], float] | None = None) -> PhasePlan:
        """One phase of `plan_partition`: its stages as `plan_partition` plans them for `workload` (the
        same search, the same pinned `shares`), without planning the other phase, packing or energy; for
        a policy that plans the phases at different rates (`OperatorPolicyConfig.decode_headroom`)."""
        part = _partition(phase.value, partition)
        pinned = None if shares is None else {key: (share,) for key, share in shares.items()}
        with self._lock:
            self._epoch += 1
            return self._phase(workload, phase, (part,), self.config.sharing.shares, "greedy", pinned)

    def oracle(self, workload: Workload) -> OperatorPlan:
        """The least-cost plan over every partition, share and replica vector (exponential: small cases)."""
        return self._search(workload, _PARTITIONS, self.config.sharing.shares, "operator", "oracle")

    # --- search -----------------------------------------------------------------------------------------

    def _search(self, workload: Workload, parts: Sequence[tuple[frozenset[Operator], ...]],
                shares: Sequence[float], level: str, search: str,
                decode_parts: Sequence[tuple[frozenset[Operator], ...]] | None = None,
                stage_shares: Mapping[tuple[Phase, frozenset[Operator]], Sequence[float]] | None = None,
                ) -> OperatorPlan:
        """One search: a new epoch re-aims the kept curves at this workload's rate on first use. The
        curves and frontiers are the planner's, so one search runs at a time."""
        with self._lock:
            self._epoch += 1
            return self._plan(workload, parts, shares, level, search, decode_parts, stage_shares)

    def _plan(self, workload: Workload, parts: Sequence[tuple[frozenset[Operator], ...]],
              shares: Sequence[float], level: str, search: str,
              decode_parts: Sequence[tuple[frozenset[Operator], ...]] | None = None,
              stage_shares: Mapping[tuple[Phase, frozenset[Operator]], Sequence[float]] | None = None) -> OperatorPlan:
        """`parts` are the partitions searched for both phases, or prefill's alone when `decode_parts`
        are given; `stage_shares` replaces `shares` for the stages it names."""
        prefill = self._phase(workload, Phase.PREFILL, parts, shares, search, stage_shares)
        decode = self._phase(workload, Phase.DECODE, parts if decode_parts is None else decode_parts, shares,
                             search, stage_shares)
        packing = self.placer.place((prefill, decode), workload)
        energy = plan_energy(self.sku, workload, (prefill, decode), packing, self._family_busy(workload))
        plan = OperatorPlan(self.model.name, self.sku.name, workload, level, search,  # type: ignore[arg-type]
                            prefill, decode, packing, energy)
        if (stage_shares is None and tuple(shares) != _WHOLE and any(s.share < 1 for p in (prefill, decode) for s in p.stages)
                and packing.gpus > math.ceil(plan.gpu_cost - 1e-9)):
            # The search minimises GPU cost before packing; fragments can make a shared plan pack onto
            # more GPUs than the whole-GPU plan does. Never return the worse of the two. (When packing
            # lost nothing, the whole-GPU plan, whose cost is no lower, cannot pack onto fewer.)
            whole = self._plan(workload, parts, _WHOLE, level, search, decode_parts)
            if (whole.gpus, whole.gpu_cost) < (plan.gpus, plan.gpu_cost):
                return whole
        return plan

    def _family_busy(self, workload: Workload) -> FamilyBusy:
        def busy(phase: Phase, stage: StagePlan, op: Operator) -> float:
            key = (phase, op, stage.tp, stage.batch, stage.share, workload.prompt_tokens, workload.output_tokens)
            found = self._busy.get(key)
            if found is None:
                found = self._busy[key] = self.costs.busy_s(frozenset({op}), phase, stage.tp, stage.batch,
                                                            workload.mean_seq(phase), stage.share)
            return found
        return busy

    def _phase(self, workload: Workload, phase: Phase, parts: Sequence[tuple[frozenset[Operator], ...]],
               shares: Sequence[float], search: str,
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
                    fronts[ops] = self._frontier(workload, phase, ops, lam, own)
            stage_fronts = [fronts[ops] for ops in part]
            if all(f is not None for f in stage_fronts):
                candidates.append((part, stage_fronts))  # type: ignore[arg-type]
                fastest = min(fastest, sum(f.floor_s for f in stage_fronts))  # type: ignore[union-attr]
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
        stages = tuple(self._stage_plan(f, i) for f, i in zip(fs, idx, strict=True))
        return PhasePlan(phase, budget, stages)

    def _stage_plan(self, front: _Frontier, j: int) -> StagePlan:
        """The stage at its frontier's point `j`."""
        curve, r = front.curves[front.curve_of[j]], front.replicas_of[j]
        shape, i = curve.shape, curve.option(r)
        o = shape.options[i]
        wait, p_wait, util = curve.queue(i, r)
        return StagePlan(shape.ops, shape.tp, r, o.batch, o.service_s, o.transfer_s, wait, p_wait, util,
                         share=shape.share, replica_bytes=curve.replica_bytes(i, r), gpu_cost=curve.option_cost(i, r),
                         arrival_rate=curve.lam, busy_s=o.busy_s)

    def _frontier(self, workload: Workload, phase: Phase, ops: frozenset[Operator], lam: float,
                  shares: Sequence[float]) -> _Frontier | None:
        """The stage's frontier at arrival rate `lam`, over `shares`; None when no share has a stable point."""
        prompt, output = workload.prompt_tokens, workload.output_tokens
        key = (phase, ops, tuple(shares), prompt, output)
        if key not in self._fronts:
            curves = [c for c in (self._curve(workload, phase, ops, share) for share in shares) if c is not None]
            self._fronts[key] = _Frontier(curves, self.config.max_replicas) if curves else None
        front = self._fronts[key]
        if front is None:
            return None
        for curve in front.curves:
            if curve.epoch != self._epoch:
                # The KV in flight scales with the arrival rate: Little's law, every token at the TBT budget.
                kv_total = 0.0
                if curve.shape.holds_kv:
                    in_flight = workload.arrival_rps * output * self.objective.tbt_slo_s
                    kv_total = in_flight * ((prompt + output) * self.model.kv_bytes_per_token)
                curve.reset(lam, kv_total, self._epoch)
        front.reset()
        return front if front.first() else None

    def _curve(self, workload: Workload, phase: Phase, ops: frozenset[Operator], share: float) -> _Curve | None:
        key = (phase, ops, share, workload.prompt_tokens, workload.output_tokens)
        if key not in self._curves:
            shape = self._build_shape(workload, phase, ops, share)
            self._curves[key] = None if shape is None else _Curve(shape, self.config.wait_quantile)
        return self._curves[key]

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
        tokens_per_customer = workload.tokens_per_customer(phase)
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
            service, busy = self.costs.phase_cost(ops, phase, tp, b, workload.mean_seq(phase), share)
            transfer = 0.0
            if crossing.edges:
                nbytes = b * tokens_per_customer * crossing.bytes_per_token
                transfer = crossing.edges * self.link.latency_s + nbytes / (self.link.gbps * 1e9)
            options.append(_Option(b, service, transfer, b / service, weights + transient, held, busy))
        if not options:
            return None
        floors = tuple(o.service_s + o.transfer_s for o in options)
        return _StageShape(ops, tp, share, tuple(options), gpu_bytes, holds_kv=has_attention and phase is Phase.DECODE,
                           floor_s=min(floors), min_fixed_bytes=min(o.fixed_bytes for o in options),
                           mus=tuple(o.mu for o in options), floors=floors,
                           fixed=tuple(o.fixed_bytes for o in options), held=tuple(o.held_bytes for o in options))


def _partition(label: str, partition: Sequence[frozenset[Operator]]) -> tuple[frozenset[Operator], ...]:
    """`partition` as operator sets; a ValueError unless it holds every operator family exactly once."""
    part = tuple(frozenset(Operator(op) for op in block) for block in partition)
    if sorted(op for block in part for op in block) != sorted(_FAMILIES):
        raise ValueError(f"{label} partition must hold every operator family exactly once, got "
                         f"{[sorted(op.value for op in b) for b in part]}")
    return part


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
    cost = sum(f.costs[i] for f, i in zip(fronts, idx, strict=True))
    latency = sum(f.lats[i] for f, i in zip(fronts, idx, strict=True))
    if best is None or (cost, latency) < best[:2]:
        return (cost, latency, part, fronts, idx)
    return best


def _greedy(fronts: Sequence[_Frontier], budget: float) -> list[int] | None:
    """A frontier point per stage meeting `budget`, grown by latency gained per GPU added, then pruned;
    None if the budget cannot be met.

    A stage's best move depends on its own frontier and point alone, so each stage's best move within
    the first window is kept until that stage moves (the other stages are not rescored); a wider window
    grows the frontiers (and may drop dominated points), so after one every stage is rescored."""
    n = len(fronts)
    if not all([f.first() for f in fronts]):
        return None
    idx = [0] * n
    lat = [f.lats[0] for f in fronts]
    cost = [f.costs[0] for f in fronts]
    total = sum(lat)
    kept_score = [0.0] * n
    kept_move = [-2] * n  # -2: not scored at the first window since the stage last moved
    while total > budget:
        move_s = move_j = -1
        window = 1.0
        while True:
            best_score = 0.0
            for s in range(n):
                if window == 1.0 and kept_move[s] != -2:
                    score, j = kept_score[s], kept_move[s]
                else:
                    score, j = _stage_move(fronts[s], idx[s], lat[s], cost[s], window)
                    if window == 1.0:
                        kept_score[s], kept_move[s] = score, j
                if score > best_score:
                    best_score, move_s, move_j = score, s, j
            if move_s >= 0 or all(f.exhausted for f in fronts):
                break
            window *= 2
            kept_move = [-2] * n
        if move_s < 0:
            return None
        f = fronts[move_s]
        p_lat = f.lats[move_j]
        total += p_lat - lat[move_s]
        idx[move_s], lat[move_s], cost[move_s] = move_j, p_lat, f.costs[move_j]
        kept_move[move_s] = -2
    # Prune: step back along the frontiers while the budget holds, the costliest stages first.
    for s in sorted(range(n), key=lambda k: -cost[k]):
        f = fronts[s]
        while idx[s] > 0:
            p_lat = f.lats[idx[s] - 1]
            if total - lat[s] + p_lat > budget:
                break
            total += p_lat - lat[s]
            idx[s], lat[s], cost[s] = idx[s] - 1, p_lat, f.costs[idx[s] - 1]
    return idx


def _stage_move(front: _Frontier, at: int, lat: float, cost: float, window: float) -> tuple[float, int]:
    """(score, frontier index) of the largest latency gain per GPU added among the stage's points within
    `window` GPUs of its current `cost` (the first of equals); (0, -1) if none gains. A point that gains
    at no added cost (equal costs: a share whose memory, not its SMs, sets the cost) scores infinite."""
    end = front.upto(cost + window)
    lats, costs = front.lats, front.costs
    best_score, best_j = 0.0, -1
    for j in range(at + 1, end):
        added = costs[j] - cost
        score = (lat - lats[j]) / added if added > 0 else (_INF if lats[j] < lat else 0.0)
        if score > best_score:
            best_score, best_j = score, j
    return best_score, best_j


def _exhaustive(fronts: Sequence[_Frontier], budget: float, max_cost: float) -> list[int] | None:
    """The least-cost frontier vector (ties: the lowest latency) meeting `budget` at cost <= `max_cost`:
    every vector is visited, less those already over the bound; the last stage takes its cheapest
    point that fits the remaining budget (its frontier's latency falls as its cost grows)."""
    n = len(fronts)
    first_cost = [f.costs[0] for f in fronts]
    rest_min = [sum(first_cost[j] for j in range(s + 1, n)) for s in range(n)]
    tops = [f.upto(max_cost - sum(first_cost) + first_cost[s] + 1e-9) for s, f in enumerate(fronts)]
    best_lat = [fronts[s].lats[tops[s] - 1] for s in range(n)]
    rest_lat = [sum(best_lat[j] for j in range(s + 1, n)) for s in range(n)]
    best: tuple[float, float, list[int]] | None = None
    vector = [0] * n

    def visit(s: int, spent: float, latency: float) -> None:
        nonlocal best
        lats, costs = fronts[s].lats, fronts[s].costs
        if s == n - 1:
            # The cheapest point of the last stage that fits what is left of the budget.
            lo, hi = 0, tops[s]
            while lo < hi:
                mid = (lo + hi) // 2
                if latency + lats[mid] <= budget:
                    hi = mid
                else:
                    lo = mid + 1
            if lo < tops[s]:
                key = (spent + costs[lo], latency + lats[lo])
                if key[0] <= max_cost + 1e-9 and (best is None or key < best[:2]):
                    vector[s] = lo
                    best = (key[0], key[1], list(vector))
            return
        for j in range(tops[s]):
            if spent + costs[j] + rest_min[s] > max_cost + 1e-9:
                break
            if latency + lats[j] + rest_lat[s] > budget:
                continue
            vector[s] = j
            visit(s + 1, spent + costs[j], latency + lats[j])

    visit(0, 0.0, 0.0)
    return None if best is None else best[2]
