"""Iteration latency of a base engine with elastic operator replicas attached (OpScale's runtime shape,
PAPERS.md §1.6): decoupled stage queues, pipelined across micro-batches.

A base instance runs every operator on its `tp` GPUs. Operator replicas of a stage (a set of operator
families; stages whose sets overlap are merged) join it on other GPUs of the host. The engine's
iteration (its running decode batch plus any prefill chunk) is cut into N micro-batches ("cohorts")
that pass the stages in path order, as the operator planner's M/M/R model has its customers pass them:
each stage's servers are the base (one server, time-shared by every stage: it is one set of GPUs) and
the stage's replicas, each on its tp and SM share, taking only cohorts whose decode sequences are
within its batch cap (a prefill cohort is cut by tokens, see below), and each serving a *different*
cohort at the same time: a replica of a weight-bound decode operator reads its weights for its own
cohort while the base serves another. Whether that pays depends on the per-iteration overhead each
stage iteration pays (the engine keeps one cohort, the base alone, when it does not).
Every stage is priced by `opscale.perf.stage_costs.StageCosts`, the planner's one owner of stage
prices, per cohort (its own per-iteration overhead included); a cohort crossing to a replica's GPUs
pays the activation hand-offs of the stage's crossings over the host's NVLink
(`TransferParams.link(SAME_HOST)`).

The iteration's time for N cohorts is the pipeline's makespan, L + P (N - 1) / N, where L is one
cohort's pass (each stage on its fastest server, hand-offs included) and P the shortest period in
which the stages' servers get through all N cohorts: replica r of a stage serves floor(P / v_r)
whole cohorts, the base the rest of every stage, which must fit in P (a capacity-weighted split:
what a router sending each cohort to the capacity-weighted shortest stage queue achieves). The engine
picks the N (1 to 32) with the shortest iteration: with no useful replica that is one cohort, the
base's own iteration. Prefill chunks and decode steps are priced the same way; a mixed iteration is
the prefill's pipelined time (bucketed to 64 tokens, so that a busy engine prices few distinct
iterations) plus what its decode tokens add to a one-token decode step. The decode step is fitted as
the line LatencyModel asks for (fixed + per context token) through contexts of 512 and 2048 tokens per
sequence.

The base engine's busy time is the work its GPUs do; the replicas' GPUs are accounted by whoever
holds them. With no replicas the engine keeps its own latency model, which also prices the base's
share of every iteration with replicas (so the base runs as fast as a model-level engine).
Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from opscale.model import ModelSpec, OperatorReplicas, Sku
from opscale.perf.latency import IterationCost, IterationTime, LatencyModel, check_token_counts
from opscale.perf.loading import LoadTimeParams, attach_load_time_s
from opscale.perf.operators import ALL_OPERATORS, Operator, operator_weight_bytes, pass_crossings
from opscale.perf.stage_costs import StageCosts
from opscale.perf.transfer import Link, Topology, TransferParams, activation_bytes

COHORTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)  # micro-batch counts an iteration may be cut into
_PREFILL_BUCKET = 64  # tokens: prefill prices are memoised per bucket
_FIT_CTX = (512, 2048)  # context tokens per sequence the decode line is fitted through
_BISECT = 40


def operator_families(replicas: OperatorReplicas) -> frozenset[Operator]:
    """The replicas' operators as `Operator`s; ValueError naming the unknown one and the known ones."""
    try:
        return frozenset(Operator(op) for op in replicas.operators)
    except ValueError:
        known = ", ".join(op.value for op in Operator)
        raise ValueError(f"operator replicas {replicas.name!r}: unknown operator in {list(replicas.operators)}; "
                         f"known: {known}") from None


@dataclass(frozen=True, slots=True)
class StageServers:
    """Attached replicas of one shape: `count` replicas, each on `share` of `tp` GPUs, batch cap `batch`."""

    tp: int
    share: float
    batch: int
    count: int


@dataclass(frozen=True, slots=True)
class ReplicatedStage:
    """One stage of the engine's path: its operators and its attached replicas (the base serves it too)."""

    operators: frozenset[Operator]
    servers: tuple[StageServers, ...]

    @property
    def name(self) -> str:
        return "+".join(sorted(op.value for op in self.operators))


def replicated_stages(replicas: Iterable[OperatorReplicas]) -> tuple[ReplicatedStage, ...]:
    """The stages of a base engine with `replicas` attached: one per replicated operator set (overlapping
    sets merged, their replicas pooled), then the operators no replica covers (the base alone)."""
    merged: list[tuple[frozenset[Operator], list[OperatorReplicas]]] = []
    for r in replicas:
        ops, held = operator_families(r), [r]
        for other in [m for m in merged if m[0] & ops]:
            merged.remove(other)
            ops, held = ops | other[0], held + other[1]
        merged.append((ops, held))
    stages = [ReplicatedStage(ops, tuple(StageServers(r.tp, r.share, r.batch, r.replicas) for r in held))
              for ops, held in sorted(merged, key=lambda m: sorted(m[0]))]
    rest = ALL_OPERATORS - frozenset().union(*(s.operators for s in stages))
    if rest:
        stages.append(ReplicatedStage(rest, ()))
    return tuple(stages)


def _crossings(stage: frozenset[Operator], layers: int) -> int:
    """Activation hand-offs into and out of `stage` per forward pass when it runs on other GPUs."""
    return sum(pass_crossings({op: int(op in stage) for op in Operator}, layers).values())


class PipelinedStagesLatencyModel(IterationTime):
    """A base engine on `tp` GPUs with replicated stages attached (see the module docstring); a LatencyModel."""

    def __init__(self, own: LatencyModel, costs: StageCosts, tp: int, stages: tuple[ReplicatedStage, ...],
                 link: Link) -> None:
        if not stages:
            raise ValueError("a replicated engine needs at least one stage")
        self.own, self.costs, self.tp, self.stages, self.link = own, costs, tp, stages, link
        self.model = costs.model
        self._crossings = tuple(_crossings(s.operators, self.model.layers) for s in stages)
        self._decode: dict[int, tuple[float, float, float, float]] = {}
        self._prefill: dict[tuple[int, int], IterationCost] = {}

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.name}: +{sum(g.count for g in s.servers)}" for s in self.stages)
        return f"PipelinedStagesLatencyModel({self.model.name!r}, tp={self.tp}, {parts})"

    # --- one iteration -----------------------------------------------------------------------------------

    def round_cost(self, prefill_tokens: float, decode_batch: float, decode_ctx: float, pairs: float,
                   logits: float) -> IterationCost:
        """The iteration over this work at the best cohort count (module docstring)."""
        best: IterationCost | None = None
        for n in COHORTS:
            if n > 1 and decode_batch / n < 1 and prefill_tokens / n < _PREFILL_BUCKET:
                break  # a cohort holds at least a sequence or a bucket of prompt tokens
            cost = self._cohorts_cost(n, prefill_tokens, decode_batch, decode_ctx, pairs, logits)
            if best is None or cost.time_s < best.time_s:
                best = cost
        assert best is not None
        return best

    def _cohorts_cost(self, n: int, prefill_tokens: float, decode_batch: float, decode_ctx: float, pairs: float,
                      logits: float) -> IterationCost:
        costs, tp = self.costs, self.tp
        unit = (prefill_tokens / n, decode_batch / n, pairs / n, logits / n, decode_ctx / n)
        tokens = unit[0] + unit[1]
        moved_s = self.link.transfer_s(activation_bytes(self.model, max(1, math.ceil(tokens))))
        base: list[float] = []
        replicas: list[list[tuple[float, int]]] = []
        # The base runs a cohort's stages as one engine iteration of its own latency model (one overhead,
        # the calibration model-level engines run on): its stage times are that pass split in proportion
        # to the stages' prices.
        whole = self.own.iteration_cost(round(unit[0]), 0, round(unit[1]), round(unit[4]),
                                        prefill_attn_pairs=round(unit[2]) if unit[0] else None)
        whole_s, whole_busy = whole.time_s, whole.busy_s
        own_base = [costs.iteration_cost(stage.operators, tp, 1.0, *unit)[0] for stage in self.stages]
        scale = whole_s / sum(own_base) if sum(own_base) > 0 else 0.0
        pass_s = 0.0
        base_time, base_busy = whole_s, whole_busy
        for stage, crossings, own_s in zip(self.stages, self._crossings, own_base, strict=True):
            u_s = own_s * scale
            base.append(u_s)
            own = [(costs.iteration_cost(stage.operators, g.tp, g.share, *unit)[0], g.count)
                   for g in stage.servers if unit[1] <= g.batch]
            replicas.append(own)
            pass_s += min([u_s] + [v + crossings * moved_s for v, _ in own])

        def base_work(period_s: float) -> float:
            work = 0.0
            for u_s, own in zip(base, replicas, strict=True):
                left = n - sum(c * math.floor(period_s / v) for v, c in own if v > 0)
                if left > 0:
                    work += left * u_s
            return work

        hi = n * base_time
        lo = 0.0
        if any(replicas):
            for _ in range(_BISECT):
                mid = (lo + hi) / 2
                if base_work(mid) <= mid:
                    hi = mid
                else:
                    lo = mid
        period_s = hi
        time_s = max(period_s, pass_s + period_s * (n - 1) / n)
        busy_s = min(time_s, base_work(period_s) * (base_busy / base_time if base_time > 0 else 0.0))
        return IterationCost(time_s=time_s, busy_s=busy_s)

    # --- the LatencyModel protocol -----------------------------------------------------------------------

    def prefill_s(self, tokens: int, ctx_tokens: int = 0) -> float:
        return self.iteration_cost(tokens, ctx_tokens, 0, 0).time_s

    def _line(self, batch: int) -> tuple[float, float, float, float]:
        line = self._decode.get(batch)
        if line is None:
            lo, hi = (self.round_cost(0.0, batch, batch * c, 0.0, batch) for c in _FIT_CTX)
            span = batch * (_FIT_CTX[1] - _FIT_CTX[0])
            per_ctx, busy_per_ctx = max(0.0, (hi.time_s - lo.time_s) / span), max(0.0, (hi.busy_s - lo.busy_s) / span)
            line = (max(0.0, lo.time_s - per_ctx * batch * _FIT_CTX[0]), per_ctx,
                    max(0.0, lo.busy_s - busy_per_ctx * batch * _FIT_CTX[0]), busy_per_ctx)
            self._decode[batch] = line
        return line

    def decode_step_coeffs(self, batch: int) -> tuple[float, float]:
        fixed_s, per_ctx_s, _, _ = self._line(batch) if batch > 0 else (0.0, 0.0, 0.0, 0.0)
        return fixed_s, per_ctx_s

    def decode_busy_coeffs(self, batch: int) -> tuple[float, float]:
        _, _, fixed_s, per_ctx_s = self._line(batch) if batch > 0 else (0.0, 0.0, 0.0, 0.0)
        return fixed_s, per_ctx_s

    def iteration_cost(
        self, prefill_tokens: int, prefill_ctx_tokens: int, decode_batch: int, decode_ctx_tokens: int,
        *, prefill_attn_pairs: int | None = None,
    ) -> IterationCost:
        check_token_counts(prefill_tokens, prefill_ctx_tokens, decode_batch, decode_ctx_tokens)
        time_s = busy_s = 0.0
        if decode_batch:
            fixed_s, per_ctx_s, busy_fixed_s, busy_per_ctx_s = self._line(decode_batch)
            time_s = fixed_s + per_ctx_s * decode_ctx_tokens
            busy_s = busy_fixed_s + busy_per_ctx_s * decode_ctx_tokens
            if prefill_tokens:
                # Decode tokens riding a prefill chunk's iteration add what a step adds beyond its floor
                # (the overhead and the weight reads of one token, which the chunk already pays).
                floor_s, _, busy_floor_s, _ = self._line(1)
                time_s, busy_s = max(0.0, time_s - floor_s), max(0.0, busy_s - busy_floor_s)
        if prefill_tokens:
            pairs = (prefill_attn_pairs if prefill_attn_pairs is not None
                     else prefill_tokens * prefill_ctx_tokens + prefill_tokens * (prefill_tokens + 1) // 2)
            tokens = -(-prefill_tokens // _PREFILL_BUCKET) * _PREFILL_BUCKET
            per_token = -(-pairs // (prefill_tokens * _PREFILL_BUCKET)) * _PREFILL_BUCKET  # mean keys per query
            prefill = self._prefill.get((tokens, per_token))
            if prefill is None:
                prefill = self._prefill[(tokens, per_token)] = self.round_cost(tokens, 0.0, 0.0, tokens * per_token, 1.0)
            time_s += prefill.time_s
            busy_s += prefill.busy_s
        return IterationCost(time_s=time_s, busy_s=busy_s)


@lru_cache(maxsize=64)
def _stage_costs(model: ModelSpec, sku: Sku) -> StageCosts:
    return StageCosts(model, sku)


def with_operator_replicas(own: LatencyModel, model: ModelSpec, sku: Sku, tp: int,
                           replicas: tuple[OperatorReplicas, ...]) -> LatencyModel:
    """The latency model of a base engine (`own` its model alone) serving with `replicas` attached."""
    if not replicas:
        return own
    return _pipelined(own, model, sku, tp, replicas)  # memoised: its decode lines are reused across changes


@lru_cache(maxsize=1024)
def _pipelined(own: LatencyModel, model: ModelSpec, sku: Sku, tp: int,
               replicas: tuple[OperatorReplicas, ...]) -> LatencyModel:
    link = TransferParams().link(Topology.SAME_HOST, sku.name)
    return PipelinedStagesLatencyModel(own, _stage_costs(model, sku), tp, replicated_stages(replicas), link)


def replica_attach_s(model: ModelSpec, replica: OperatorReplicas, params: LoadTimeParams | None = None) -> float:
    """Seconds for one replica of `replica`'s stage to join a running engine of `model`
    (`operators_attach_s`)."""
    return operators_attach_s(model, operator_families(replica), replica.tp, params)


def operators_attach_s(model: ModelSpec, operators: Iterable[Operator], tp: int,
                       params: LoadTimeParams | None = None) -> float:
    """Seconds for a replica of `operators` on `tp` GPUs to join a running engine of `model`: their
    weight bytes over the warm path (`opscale.perf.loading.attach_load_time_s`), the per-operator
    scale-up latency. The one owner of it: the policy's targets, the runtime and the scale-up table."""
    weights = sum(operator_weight_bytes(model, op) for op in frozenset(operators))
    return attach_load_time_s(weights, tp, params)
