"""The operator planner (PAPERS.md §1.3): replicas and batch size per operator stage so that the prefill
path meets the TTFT budget and the decode path the TBT budget, with the fewest GPUs.

Model. Prefill and decode are planned as separate pools. A phase's forward pass is cut into stages,
each a set of operator families (`opscale.perf.operators.Operator`) run together on whole GPUs:
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

Because the path latency is a sum of per-stage terms, each stage's best batch for a given replica
count is independent of the others: f_s(R) = min over b of [wait + S(b) + transfer(b)]. The search is
then over replica counts only.

Greedy (`plan`): start each stage at its fewest stable replicas, then add capacity where the latency
gained per GPU is largest (looking ahead to the replica counts where a smaller, faster batch becomes
stable, since f_s is not convex), until the budget is met; then remove replicas the budget does not
need. Oracle (`oracle`): every replica vector of every partition up to the greedy answer's GPUs.
Baseline (`model_level`): the one-stage partition, the same queueing model.

Approximations, the same for both levels: a request waits once per stage per forward pass (stages
pipeline the layers, as MegaScale-Infer's ping-pong does), not once per layer visit; summing per-stage
wait quantiles bounds the path's quantile from above; each stage pays its own per-iteration overhead
(its own scheduler), where the engine's synchronous split model pays one; the decode attention
replicas share one queue although a sequence's KV pins it to one of them; their KV floor comes from
Little's law with every token at the TBT budget; the prefill-to-decode KV hand-off is in neither
budget. SM shares (spatial partitions of a GPU) are not modelled, so GPUs are whole.

Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from opscale.model import LatencyObjective, ModelSpec, Sku
from opscale.perf.operators import Operator
from opscale.planning.operators.config import OperatorPlannerConfig, Workload
from opscale.planning.operators.costs import StageCosts
from opscale.planning.operators.dag import OperatorDag, Phase, build_dag
from opscale.planning.operators.plan import OperatorPlan, PhasePlan, StagePlan
from opscale.planning.operators.queueing import wait_quantile_s

_FAMILIES = tuple(Operator)
_ALL = frozenset(_FAMILIES)
_INF = math.inf


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


@dataclass(frozen=True, slots=True)
class _StageShape:
    """What a stage costs for one workload shape, independent of the arrival rate."""

    ops: frozenset[Operator]
    tp: int
    options: tuple[_Option, ...]  # sorted by batch
    kv_bytes_per_seq: float  # decode attention: the KV each running sequence holds; 0 otherwise
    kv_room_bytes: float

    @property
    def floor_s(self) -> float:
        return min(o.service_s + o.transfer_s for o in self.options)


class _Curve:
    """f(R) of one stage at one arrival rate: the best latency over its batch sizes, memoised."""

    __slots__ = ("shape", "lam", "quantile", "r_min", "_memo", "_erlang_b")

    def __init__(self, shape: _StageShape, lam: float, quantile: float | None, r_floor: int) -> None:
        self.shape, self.lam, self.quantile = shape, lam, quantile
        self._memo: dict[int, tuple[float, int]] = {}
        self._erlang_b: list[list[float]] = [[1.0] for _ in shape.options]
        stable = min(math.floor(lam / o.mu) + 1 for o in shape.options)
        self.r_min = max(stable, r_floor)

    def thresholds(self, above: int) -> list[int]:
        """Replica counts above `above` at which another batch size becomes stable."""
        return sorted({r for o in self.shape.options if (r := math.floor(self.lam / o.mu) + 1) > above})

    def __call__(self, replicas: int) -> float:
        return self.best(replicas)[0]

    def best(self, replicas: int) -> tuple[float, int]:
        """(latency, option index) at `replicas`; (inf, -1) when no batch size is stable."""
        hit = self._memo.get(replicas)
        if hit is not None:
            return hit
        best = (_INF, -1)
        if replicas >= self.r_min:
            for i, o in enumerate(self.shape.options):
                wait = self._wait(i, o, replicas)
                total = wait + o.service_s + o.transfer_s
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


class OperatorPlanner:
    """Plans `model` on `sku` against `objective` (TTFT budget for prefill, TBT for decode).

    Raises ValueError at planning time naming the objective field an SLO cannot meet on this SKU at
    any load, or `max_replicas` when the load needs more replicas than allowed.
    """

    def __init__(self, model: ModelSpec, sku: Sku, objective: LatencyObjective,
                 config: OperatorPlannerConfig | None = None) -> None:
        for label in ("ttft_slo_s", "tbt_slo_s"):
            value = getattr(objective, label)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{label} must be a finite positive number of seconds, got {value!r}")
        self.model, self.sku, self.objective = model, sku, objective
        self.config = config if config is not None else OperatorPlannerConfig()
        self.costs = StageCosts(model, sku, gpu_memory_utilization=self.config.gpu_memory_utilization)
        self.dags: dict[Phase, OperatorDag] = {p: build_dag(model, p) for p in Phase}
        self.link = self.config.transfer.link(self.config.topology, sku.name)
        self._shapes: dict[tuple[Phase, frozenset[Operator], int, int], _StageShape | None] = {}

    def __repr__(self) -> str:
        return f"OperatorPlanner({self.model.name!r}, {self.sku.name!r})"

    # --- the three searches -----------------------------------------------------------------------------

    def plan(self, workload: Workload) -> OperatorPlan:
        """The greedy operator-level plan."""
        return self._plan(workload, _PARTITIONS, "operator", "greedy")

    def model_level(self, workload: Workload) -> OperatorPlan:
        """The baseline: whole-model replicas on the same queueing model."""
        return self._plan(workload, ((_ALL,),), "model", "greedy")

    def oracle(self, workload: Workload) -> OperatorPlan:
        """The fewest-GPU plan over every partition and replica vector (exponential: small cases only)."""
        return self._plan(workload, _PARTITIONS, "operator", "oracle")

    # --- search -----------------------------------------------------------------------------------------

    def _plan(self, workload: Workload, parts: Sequence[tuple[frozenset[Operator], ...]],
              level: str, search: str) -> OperatorPlan:
        phases = {p: self._phase(workload, p, parts, search) for p in Phase}
        return OperatorPlan(self.model.name, self.sku.name, workload, level, search,  # type: ignore[arg-type]
                            phases[Phase.PREFILL], phases[Phase.DECODE])

    def _phase(self, workload: Workload, phase: Phase, parts: Sequence[tuple[frozenset[Operator], ...]],
               search: str) -> PhasePlan:
        budget, field = ((self.objective.ttft_slo_s, "ttft_slo_s") if phase is Phase.PREFILL
                         else (self.objective.tbt_slo_s, "tbt_slo_s"))
        lam = workload.arrival_rps * (1 if phase is Phase.PREFILL else workload.output_tokens)
        curves: dict[frozenset[Operator], _Curve | None] = {}
        candidates: list[tuple[tuple[frozenset[Operator], ...], list[_Curve]]] = []
        fastest = _INF
        for part in parts:
            for ops in part:
                if ops not in curves:
                    curves[ops] = self._curve(workload, phase, ops, lam, budget)
            stage_curves = [curves[ops] for ops in part]
            if all(c is not None for c in stage_curves):
                candidates.append((part, stage_curves))  # type: ignore[arg-type]
                fastest = min(fastest, sum(c.shape.floor_s for c in stage_curves))  # type: ignore[union-attr]
        best: tuple[int, float, tuple[frozenset[Operator], ...], list[int]] | None = None
        for part, cs in candidates:
            found = _greedy(cs, budget, self.config.max_replicas)
            if found is not None:
                best = _better(best, part, cs, found)
        if search == "oracle" and best is not None:
            bound = best[0]
            for part, cs in candidates:
                found = _exhaustive(cs, budget, bound, self.config.max_replicas)
                if found is not None:
                    best = _better(best, part, cs, found)
        if best is None:
            if fastest > budget:
                raise ValueError(
                    f"{field}={budget:g} s cannot be met by {self.model.name} on {self.sku.name}: the fastest "
                    f"{phase.value} path takes {fastest:.4g} s at its fastest batch with no queueing")
            raise ValueError(
                f"{phase.value} of {workload.arrival_rps:g} requests/s on {self.sku.name} needs more than "
                f"max_replicas={self.config.max_replicas} replicas of a stage (or more memory per replica) "
                f"to meet {field}={budget:g} s")
        _, _, part, replicas = best
        return PhasePlan(phase, budget, tuple(self._stage_plan(curves[ops], r)  # type: ignore[arg-type]
                                              for ops, r in zip(part, replicas, strict=True)))

    def _stage_plan(self, curve: _Curve, replicas: int) -> StagePlan:
        _, i = curve.best(replicas)
        o = curve.shape.options[i]
        wait, p_wait, util = curve.queue(i, replicas)
        return StagePlan(curve.shape.ops, curve.shape.tp, replicas, o.batch, o.service_s, o.transfer_s,
                         wait, p_wait, util)

    def _curve(self, workload: Workload, phase: Phase, ops: frozenset[Operator], lam: float,
               budget: float) -> _Curve | None:
        shape = self._shape(workload, phase, ops)
        if shape is None:
            return None
        r_floor = 1
        if shape.kv_bytes_per_seq:
            # Little's law: sequences in flight = arrivals x decode time, at most output x TBT budget each.
            in_flight = workload.arrival_rps * workload.output_tokens * budget
            r_floor = max(1, math.ceil(in_flight * shape.kv_bytes_per_seq / shape.kv_room_bytes))
        return _Curve(shape, lam, self.config.wait_quantile, r_floor)

    def _shape(self, workload: Workload, phase: Phase, ops: frozenset[Operator]) -> _StageShape | None:
        key = (phase, ops, workload.prompt_tokens, workload.output_tokens)
        if key in self._shapes:
            return self._shapes[key]
        shape = self._shapes[key] = self._build_shape(workload, phase, ops)
        return shape

    def _build_shape(self, workload: Workload, phase: Phase, ops: frozenset[Operator]) -> _StageShape | None:
        tp = self.costs.tp_for(ops)
        if tp is None:
            return None
        cap = min((self.config.max_batch.get(op, _INF) for op in ops), default=_INF)
        room = self.costs.kv_room_bytes(ops, tp)
        kv = self.model.kv_bytes_per_token
        prompt, output = workload.prompt_tokens, workload.output_tokens
        crossing = self.dags[phase].crossings(ops)
        tokens_per_customer = prompt if phase is Phase.PREFILL else 1
        has_attention = Operator.ATTENTION in ops
        options = []
        for b in self.config.batch_sizes:
            if b > cap:
                break
            if has_attention:
                held = b * prompt if phase is Phase.PREFILL else b * (prompt + output)
                if held * kv > room:
                    break
            if phase is Phase.PREFILL:
                service = self.costs.prefill_s(ops, tp, b, prompt)
            else:
                service = self.costs.decode_s(ops, tp, b, prompt + output / 2)
            transfer = 0.0
            if crossing.edges:
                nbytes = b * tokens_per_customer * crossing.bytes_per_token
                transfer = crossing.edges * self.link.latency_s + nbytes / (self.link.gbps * 1e9)
            options.append(_Option(b, service, transfer, b / service))
        if not options:
            return None
        seq_kv = (prompt + output) * kv if has_attention and phase is Phase.DECODE else 0.0
        return _StageShape(ops, tp, tuple(options), seq_kv, room)


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


def _better(best: tuple[int, float, tuple[frozenset[Operator], ...], list[int]] | None,
            part: tuple[frozenset[Operator], ...], curves: Sequence[_Curve],
            replicas: list[int]) -> tuple[int, float, tuple[frozenset[Operator], ...], list[int]]:
    """The better of `best` and (part, replicas): fewer GPUs, then lower latency."""
    gpus = sum(c.shape.tp * r for c, r in zip(curves, replicas, strict=True))
    latency = sum(c(r) for c, r in zip(curves, replicas, strict=True))
    if best is None or (gpus, latency) < best[:2]:
        return (gpus, latency, part, replicas)
    return best


def _greedy(curves: Sequence[_Curve], budget: float, max_replicas: int) -> list[int] | None:
    """Replicas per stage meeting `budget`, grown by latency gained per GPU, then pruned; None if the
    budget cannot be met within `max_replicas` per stage."""
    replicas = [c.r_min for c in curves]
    if any(r > max_replicas for r in replicas):
        return None
    lat = [c(r) for c, r in zip(curves, replicas, strict=True)]
    total = sum(lat)
    while total > budget:
        best_move = _best_move(curves, replicas, lat, max_replicas, far=False)
        if best_move is None:
            # f is flat one replica on (the best batch's quantile wait is already 0) but a faster
            # batch may win further out: look geometrically before giving up.
            best_move = _best_move(curves, replicas, lat, max_replicas, far=True)
        if best_move is None:
            return None
        s, target = best_move
        replicas[s] = target
        new = curves[s](target)
        total += new - lat[s]
        lat[s] = new
    # Prune: give back replicas the budget does not need, the widest stages first.
    for s in sorted(range(len(curves)), key=lambda i: -curves[i].shape.tp):
        c = curves[s]
        while replicas[s] > c.r_min:
            smaller = c(replicas[s] - 1)
            if total - lat[s] + smaller > budget:
                break
            total += smaller - lat[s]
            lat[s] = smaller
            replicas[s] -= 1
    return replicas


def _best_move(curves: Sequence[_Curve], replicas: list[int], lat: list[float], max_replicas: int,
               far: bool) -> tuple[int, int] | None:
    """(stage, new replica count) with the largest latency gain per added GPU; None if nothing gains.
    Candidates: one more replica, the counts where another batch size becomes stable, and with `far`
    every power-of-two step up to `max_replicas`."""
    best_score, best_move = 0.0, None
    for s, c in enumerate(curves):
        r = replicas[s]
        targets = [r + 1, *c.thresholds(r + 1)]
        if far:
            step = 2
            while r + step <= max_replicas:
                targets.append(r + step)
                step *= 2
        for target in targets:
            if target > max_replicas:
                continue
            gain = lat[s] - c(target)
            if gain > 0:
                score = gain / (c.shape.tp * (target - r))
                if score > best_score:
                    best_score, best_move = score, (s, target)
    return best_move


def _exhaustive(curves: Sequence[_Curve], budget: float, max_gpus: int, max_replicas: int) -> list[int] | None:
    """The fewest-GPU replica vector (ties: the lowest latency) meeting `budget` with at most `max_gpus`:
    every vector is visited, less those that already spend more GPUs than the bound."""
    n = len(curves)
    tps = [c.shape.tp for c in curves]
    # GPUs the stages after s need at least, to bound each stage's range.
    rest_min = [sum(tps[j] * curves[j].r_min for j in range(s + 1, n)) for s in range(n)]
    best: tuple[int, float, list[int]] | None = None
    vector = [0] * n

    def visit(s: int, gpus: int, latency: float) -> None:
        nonlocal best
        if s == n:
            if latency <= budget and (best is None or (gpus, latency) < best[:2]):
                best = (gpus, latency, list(vector))
            return
        c = curves[s]
        top = min(max_replicas, (max_gpus - gpus - rest_min[s]) // tps[s])
        for r in range(c.r_min, top + 1):
            vector[s] = r
            visit(s + 1, gpus + tps[s] * r, latency + c(r))

    visit(0, 0, 0.0)
    return None if best is None else best[2]
