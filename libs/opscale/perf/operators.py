"""Operator-split deployments: a model's operators placed in groups on separate GPU sets, each group
with its own SKU, tensor parallelism, replicas and micro-batch limit, priced as one engine.

Model-level serving is the special case of one group holding every operator. With several groups (for
example attention-FFN disaggregation: QKV/output projections, attention and the LM head on one set,
the MLP or experts on another), an engine iteration of T tokens costs

    iteration overhead
    + sum over groups g of rounds_g x cost_g(its operators, the batch spread over replicas_g x rounds_g)
    + sum over group boundaries crossed in the forward pass of (link latency + activation bytes / bandwidth)

(with the whole-iteration terms of `opscale.perf.latency.whole_iteration_s` when the params price them:
the engine's host floor overlaps the groups' and links' time, and its serial host work follows)
where rounds_g = ceil(ceil(T / replicas_g) / max_batch_tokens_g): a replica runs at most
max_batch_tokens_g tokens at once, and the replicas of a group work in parallel on equal shares. The
activations of T tokens at a boundary are T x hidden x bytes_per_param (opscale.perf.transfer) and move
over min(replicas) parallel links. Each group's cost is linear in the decode context, so the sum is too:
`OperatorSplitLatencyModel` satisfies the `LatencyModel` protocol, closed-form decode runs included.

That is the latency of one batch going through the whole graph. Groups also overlap on different
micro-batches (ping-pong pipelining, as MegaScale-Infer does), which the engine does not simulate:
`throughput_bound` gives the resulting ceiling, set by the slowest stage, where a group of r replicas
processes r micro-batches of max_batch_tokens at once (P1's service rate mu = b / s per replica).

Per-operator costs come from an `OperatorCostModel`; `RooflineOperatorModel` prices them with the same
roofline as `opscale.perf.latency.RooflineLatencyModel`, so a single group on one GPU set reproduces that
model exactly. Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol

from opscale.model import ModelSpec, Sku
from opscale.perf.latency import (
    DEFAULT_INTERCONNECT_GBPS,
    FALLBACK_INTERCONNECT_GBPS,
    IterationCost,
    IterationTime,
    MlpRoofline,
    RooflineParams,
    attn_pairs,
    check_token_counts,
    whole_iteration_s,
)
from opscale.perf.loading import LoadSource, LoadTimeParams, weights_load_time_s
from opscale.perf.transfer import Link, activation_bytes


class Operator(StrEnum):
    """The operator families a deployment can place apart."""

    ATTN_PROJ = "attn_proj"  # QKV and output projections
    ATTENTION = "attention"  # scores, softmax and values over the KV cache (which lives with it)
    MLP = "mlp"  # the dense MLP or the experts of a mixture
    LM_HEAD = "lm_head"  # token embedding and LM head (vocab x hidden each)


ALL_OPERATORS = frozenset(Operator)
ATTENTION_OPERATORS = frozenset({Operator.ATTN_PROJ, Operator.ATTENTION, Operator.LM_HEAD})
MLP_OPERATORS = frozenset({Operator.MLP})

# One layer of the forward pass, in order; the embedding comes before the first layer and the LM head
# after the last. Consecutive operators in different groups exchange activations.
_LAYER_ORDER = (Operator.ATTN_PROJ, Operator.ATTENTION, Operator.ATTN_PROJ, Operator.MLP)


def pass_crossings(owner: Mapping[Operator, int], layers: int) -> dict[tuple[int, int], int]:
    """How often one forward pass hands activations between two owners of operators (groups, GPUs):
    (owner a, owner b) with a < b -> hand-offs. The pass is the embedding lookup (on the LM head's
    owner), each layer's operators in order, then the LM head."""
    order = [owner[Operator.LM_HEAD]]  # the embedding lookup
    order += [owner[op] for op in _LAYER_ORDER] * layers
    order.append(owner[Operator.LM_HEAD])
    counts: dict[tuple[int, int], int] = {}
    for a, b in zip(order, order[1:], strict=False):
        if a != b:
            key = (min(a, b), max(a, b))
            counts[key] = counts.get(key, 0) + 1
    return counts
# RooflineParams.layer_overhead_s (the launch floors of a layer's kernels), split evenly over the
# operator families that run in every layer.
_LAYER_OVERHEAD_SHARE = {Operator.ATTN_PROJ: 1 / 3, Operator.ATTENTION: 1 / 3, Operator.MLP: 1 / 3}


def operator_weight_bytes(model: ModelSpec, operator: Operator) -> int:
    """Weight bytes of one operator family over all layers; they sum to model.weight_bytes."""
    bpp = model.bytes_per_param
    match Operator(operator):
        case Operator.ATTN_PROJ:
            return model.attn_params_per_layer * model.layers * bpp
        case Operator.MLP:
            return model.mlp_params_per_layer * model.layers * bpp
        case Operator.LM_HEAD:
            return 2 * model.vocab * model.hidden * bpp
        case Operator.ATTENTION:
            return 0
    raise AssertionError(operator)  # Operator admits nothing else


@dataclass(frozen=True, slots=True)
class OperatorGroup:
    """Operators that run together on `replicas` sets of `tp` GPUs of `sku`, at most
    `max_batch_tokens` tokens per replica at once."""

    name: str
    operators: frozenset[Operator]
    sku: Sku
    tp: int = 1
    replicas: int = 1
    max_batch_tokens: int = 8192

    def __post_init__(self) -> None:
        try:
            ops = frozenset(Operator(op) for op in self.operators)
        except ValueError:
            known = ", ".join(op.value for op in Operator)
            raise ValueError(f"operator group {self.name!r}: unknown operator in {sorted(self.operators)}; "
                             f"known: {known}") from None
        if not ops:
            raise ValueError(f"operator group {self.name!r}: operators must not be empty")
        object.__setattr__(self, "operators", ops)
        for label in ("tp", "replicas", "max_batch_tokens"):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"operator group {self.name!r}: {label} must be a positive integer, got {value!r}")

    @property
    def gpus(self) -> int:
        return self.tp * self.replicas

    def weight_bytes(self, model: ModelSpec) -> int:
        """Weights one replica holds."""
        return sum(operator_weight_bytes(model, op) for op in self.operators)


@dataclass(frozen=True, slots=True)
class Footprint:
    """What a deployment's GPUs give an engine: KV-cache bytes, power draw (idle, and the extra at full
    utilisation) and peak dense FLOP/s (what SM activity is measured against), summed over its GPUs."""

    kv_budget_bytes: float
    idle_power_w: float
    dynamic_power_w: float
    gpus: int
    peak_flops_per_s: float


@dataclass(frozen=True, slots=True)
class StageCapacity:
    """The rate one stage of a split deployment sustains: a group (its replicas each running a full
    micro-batch) or a link between two groups."""

    stage: str
    tokens_per_s: float
    micro_batch_tokens: int
    micro_batch_s: float


@dataclass(frozen=True, slots=True)
class ThroughputBound:
    """The deployment's token rate ceiling, the stage that sets it, and every stage's rate."""

    tokens_per_s: float
    bottleneck: str
    stages: tuple[StageCapacity, ...]


class OperatorCostModel(Protocol):
    """Cost of a subset of a model's operators over one batch on one replica (no iteration overhead).

    Token counts are floats: a batch spread over replicas and rounds gives fractional shares."""

    model: ModelSpec
    iteration_overhead_s: float
    params: RooflineParams

    def ops_cost(
        self, ops: frozenset[Operator], prefill_tokens: float, prefill_ctx_tokens: float, decode_batch: float,
        decode_ctx_tokens: float, prefill_attn_pairs: float, logit_tokens: float,
    ) -> IterationCost:
        """Time and busy time of `ops` for a mixed batch, as `LatencyModel.iteration_cost` describes it;
        `logit_tokens` tokens go through the LM head."""
        ...

    def ops_decode_coeffs(self, ops: frozenset[Operator], batch: float) -> tuple[float, float, float, float]:
        """(fixed_s, per_ctx_token_s, busy_fixed_s, busy_per_ctx_token_s) of `ops` for a decode batch."""
        ...


class RooflineOperatorModel:
    """The roofline of `opscale.perf.latency.RooflineLatencyModel`, operator family by operator family,
    for one replica of `tp` GPUs of `sku`. Tensor-parallel all-reduces follow the output projection
    and the MLP of each layer. When the params price elementwise kernels (see
    `opscale.perf.latency.dense_layer_work`), the input norm and rotary embedding go with the
    projections, the post-attention norm, residual add and gated activation with the MLP."""

    def __init__(self, model: ModelSpec, sku: Sku, tp: int = 1, params: RooflineParams | None = None) -> None:
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise ValueError(f"tp must be a positive integer, got {tp!r}")
        self.model = model
        self.sku = sku
        self.tp = tp
        self.params = params if params is not None else RooflineParams()
        p = self.params
        self.iteration_overhead_s = p.iteration_overhead_s
        self._s_per_flop = 1.0 / (sku.peak_tflops * 1e12 * p.compute_efficiency * tp)
        self._s_per_byte = 1.0 / (sku.mem_bandwidth_gbps * 1e9 * p.bandwidth_efficiency * tp)
        layers, bpp = model.layers, model.bytes_per_param
        self._layers = layers
        self._bpp = bpp
        self._attn_proj_params = model.attn_params_per_layer * layers
        self._mlp = MlpRoofline.of(model)
        self._lm_head_params = model.vocab * model.hidden
        self._attn_flops_per_pair = 4 * model.heads * model.head_dim * layers
        self._kv_bytes_per_token = model.kv_bytes_per_token
        self._decode_s_per_ctx = max(self._attn_flops_per_pair * self._s_per_flop,
                                     self._kv_bytes_per_token * self._s_per_byte)
        link_gbps = p.interconnect_gbps
        if link_gbps is None:
            link_gbps = DEFAULT_INTERCONNECT_GBPS.get(sku.name.casefold(), FALLBACK_INTERCONNECT_GBPS)
        self._allreduce_s_per_token = (
            2 * (tp - 1) / tp * model.hidden * bpp / (link_gbps * 1e9) if tp > 1 else 0.0)
        # Elementwise traffic per token, in values: replicated on every GPU (x tp) or sharded.
        self._elementwise_s_per_token: dict[Operator, float] = {}
        if p.elementwise_efficiency is not None:
            hidden, kv_dim = model.hidden, model.kv_heads * model.head_dim
            values = {
                Operator.ATTN_PROJ: 2 * hidden * tp + 2 * (hidden + kv_dim),
                Operator.MLP: (5 * hidden * tp + 3 * model.intermediate * self._mlp.experts_per_token
                               + 3 * model.shared_expert_intermediate),
            }
            s_per_byte = 1.0 / (sku.mem_bandwidth_gbps * 1e9 * p.elementwise_efficiency * tp)
            for op, per_token in values.items():
                self._elementwise_s_per_token[op] = per_token * bpp * layers * s_per_byte
        self._layer_overhead_s = {op: p.layer_overhead_s * layers * share
                                  for op, share in _LAYER_OVERHEAD_SHARE.items()}

    def __repr__(self) -> str:
        return f"RooflineOperatorModel({self.model.name!r}, {self.sku.name!r}, tp={self.tp})"

    def ops_cost(
        self, ops: frozenset[Operator], prefill_tokens: float, prefill_ctx_tokens: float, decode_batch: float,
        decode_ctx_tokens: float, prefill_attn_pairs: float, logit_tokens: float,
    ) -> IterationCost:
        tokens = prefill_tokens + decode_batch
        busy_s = self._weights_s(ops, tokens, logit_tokens) if tokens > 0 else 0.0
        if Operator.ATTENTION in ops:
            if prefill_tokens > 0:
                busy_s += max(prefill_attn_pairs * self._attn_flops_per_pair * self._s_per_flop,
                              (prefill_ctx_tokens + prefill_tokens) * self._kv_bytes_per_token * self._s_per_byte)
            busy_s += self._decode_s_per_ctx * decode_ctx_tokens
        time_s = busy_s + self._allreduce_s(ops, tokens) + (self._fixed_s(ops) if tokens > 0 else 0.0)
        return IterationCost(time_s=time_s, busy_s=busy_s)

    def ops_decode_coeffs(self, ops: frozenset[Operator], batch: float) -> tuple[float, float, float, float]:
        per_ctx_s = self._decode_s_per_ctx if Operator.ATTENTION in ops else 0.0
        if batch <= 0:
            return 0.0, per_ctx_s, 0.0, per_ctx_s
        busy_s = self._weights_s(ops, batch, batch)
        return busy_s + self._allreduce_s(ops, batch) + self._fixed_s(ops), per_ctx_s, busy_s, per_ctx_s

    def _fixed_s(self, ops: frozenset[Operator]) -> float:
        """The per-layer launch floors of `ops`, paid by an iteration that has tokens."""
        return sum(self._layer_overhead_s.get(op, 0.0) for op in ops)

    def _weights_s(self, ops: frozenset[Operator], tokens: float, logit_tokens: float) -> float:
        """Weight-bearing operators of `ops` over `tokens` new tokens, each at max(compute, memory)."""
        s_flop, s_byte, bpp = self._s_per_flop, self._s_per_byte, self._bpp
        total = 0.0
        if Operator.ATTN_PROJ in ops:
            total += max(2 * self._attn_proj_params * tokens * s_flop, self._attn_proj_params * bpp * s_byte)
        if Operator.MLP in ops:
            total += self._mlp.seconds(tokens, s_flop, s_byte)
        if Operator.LM_HEAD in ops:
            total += max(2 * self._lm_head_params * logit_tokens * s_flop, self._lm_head_params * bpp * s_byte)
        for op, s_per_token in self._elementwise_s_per_token.items():
            if op in ops:
                total += s_per_token * tokens
        return total

    def _allreduce_s(self, ops: frozenset[Operator], tokens: float) -> float:
        if self.tp == 1 or tokens <= 0:
            return 0.0
        calls = self._layers * ((Operator.ATTN_PROJ in ops) + (Operator.MLP in ops))
        return calls * (self.params.allreduce_latency_s + self._allreduce_s_per_token * tokens)


def roofline_factory(model: ModelSpec, params: RooflineParams | None = None) -> Callable[[OperatorGroup], RooflineOperatorModel]:
    """The usual `base_model_factory`: a roofline operator model of `model` on each group's SKU and tp."""
    def make(group: OperatorGroup) -> RooflineOperatorModel:
        return RooflineOperatorModel(model, group.sku, group.tp, params)
    return make


class OperatorSplitLatencyModel(IterationTime):
    """Iteration latency of an operator-split deployment (see the module docstring); a `LatencyModel`.

    `base_model_factory(group)` gives the cost model of one replica of each group; `link` joins the
    groups. Every operator must be in exactly one group.
    """

    def __init__(self, base_model_factory: Callable[[OperatorGroup], OperatorCostModel],
                 groups: Iterable[OperatorGroup], link: Link) -> None:
        self.groups: tuple[OperatorGroup, ...] = tuple(groups)
        if not self.groups:
            raise ValueError("an operator-split deployment needs at least one operator group")
        owner: dict[Operator, int] = {}
        names: set[str] = set()
        for i, group in enumerate(self.groups):
            if group.name in names:
                raise ValueError(f"operator group name {group.name!r} is used twice")
            names.add(group.name)
            for op in sorted(group.operators):  # sorted: the same error on every run
                if op in owner:
                    raise ValueError(f"operator {op.value!r} is in both group {self.groups[owner[op]].name!r} "
                                     f"and group {group.name!r}")
                owner[op] = i
        missing = sorted(op.value for op in ALL_OPERATORS - owner.keys())
        if missing:
            raise ValueError(f"operators {missing} are in no group; every operator needs one")
        self._costs = tuple(base_model_factory(group) for group in self.groups)
        self.model = self._costs[0].model
        for group, cost in zip(self.groups, self._costs, strict=True):
            if cost.model != self.model:
                raise ValueError(f"operator group {group.name!r} prices model {cost.model.name!r}, "
                                 f"not {self.model.name!r}")
        self.link = link
        self._overhead_s = max(cost.iteration_overhead_s for cost in self._costs)
        # The whole-iteration terms (`latency.whole_iteration_s`): one engine drives every group, so its
        # host floor and serial host work are the largest any group's params give; the unsharded
        # prefill attention time goes with the attention group.
        layers = self.model.layers
        self._host_floor_s = max(cost.params.host_layer_s for cost in self._costs) * layers
        self._serial = self._costs[0].params.model_copy(update={
            "iteration_overhead_s": self._overhead_s,
            "sequence_overhead_s": max(cost.params.sequence_overhead_s for cost in self._costs),
            "prefill_overhead_s": max(cost.params.prefill_overhead_s for cost in self._costs)})
        self._pair_s = tuple(cost.params.prefill_pair_s * layers if Operator.ATTENTION in group.operators else 0.0
                             for group, cost in zip(self.groups, self._costs, strict=True))
        self._act_bytes_per_token = activation_bytes(self.model, 1)
        self.crossings = self._count_crossings(owner)
        # Energy: group g's replicas each stay busy for its busy time; the engine multiplies one busy
        # figure by the deployment's total dynamic power, so each group's busy time is weighted by its
        # share of that power.
        dynamic_w = [g.gpus * (g.sku.max_power_w - g.sku.idle_power_w) for g in self.groups]
        total_w = sum(dynamic_w)
        self._power_share = tuple(w / total_w if total_w > 0 else 1.0 / len(dynamic_w) for w in dynamic_w)
        self._decode_cache: dict[int, tuple[float, float, float, float]] = {}

    def __repr__(self) -> str:
        parts = ", ".join(f"{g.name}: {g.replicas}x{g.tp} {g.sku.name}" for g in self.groups)
        return f"OperatorSplitLatencyModel({self.model.name!r}, {parts})"

    def _count_crossings(self, owner: dict[Operator, int]) -> tuple[tuple[int, int, int], ...]:
        """(group a, group b, times per forward pass) for each pair of groups that exchange activations."""
        return tuple((a, b, n) for (a, b), n in sorted(pass_crossings(owner, self.model.layers).items()))

    # --- the LatencyModel protocol -----------------------------------------------------------------------

    def prefill_s(self, tokens: int, ctx_tokens: int = 0) -> float:
        return self.iteration_cost(tokens, ctx_tokens, 0, 0).time_s

    def decode_step_coeffs(self, batch: int) -> tuple[float, float]:
        fixed_s, per_ctx_s, _, _ = self._decode(batch)
        return fixed_s, per_ctx_s

    def decode_busy_coeffs(self, batch: int) -> tuple[float, float]:
        _, _, busy_fixed_s, busy_per_ctx_s = self._decode(batch)
        return busy_fixed_s, busy_per_ctx_s

    def iteration_cost(
        self, prefill_tokens: int, prefill_ctx_tokens: int, decode_batch: int, decode_ctx_tokens: int,
        *, prefill_attn_pairs: int | None = None,
    ) -> IterationCost:
        check_token_counts(prefill_tokens, prefill_ctx_tokens, decode_batch, decode_ctx_tokens)
        if prefill_tokens == 0:
            # The decode line itself, so both ways of asking agree exactly (the closed form needs it).
            fixed_s, per_ctx_s, busy_fixed_s, busy_per_ctx_s = self._decode(decode_batch)
            return IterationCost(time_s=fixed_s + per_ctx_s * decode_ctx_tokens,
                                 busy_s=busy_fixed_s + busy_per_ctx_s * decode_ctx_tokens)
        pairs = prefill_attn_pairs if prefill_attn_pairs is not None else attn_pairs(prefill_tokens, prefill_ctx_tokens)
        tokens = prefill_tokens + decode_batch
        gpu_s = self._transfers_s(tokens)
        extra_s = busy_s = 0.0
        for group, cost, share, pair_s in zip(self.groups, self._costs, self._power_share, self._pair_s, strict=True):
            rounds = self._rounds(group, tokens)
            div = group.replicas * rounds
            # Logits for the decode tokens and the last token of the prefill, as the base model counts.
            c = cost.ops_cost(group.operators, prefill_tokens / div, prefill_ctx_tokens / div, decode_batch / div,
                              decode_ctx_tokens / div, pairs / div, (decode_batch + 1) / div)
            # Decode attention stays outside the host floor, as in the model-level roofline.
            decode_attn_s = cost.ops_decode_coeffs(group.operators, 0)[1] * decode_ctx_tokens / div
            gpu_s += rounds * (c.time_s - decode_attn_s)
            extra_s += rounds * (decode_attn_s + pair_s * pairs / div)
            busy_s += share * rounds * (c.busy_s + pair_s * pairs / div)
        time_s = whole_iteration_s(self._serial, self._host_floor_s, gpu_s, decode_batch + 1, prefill=True) + extra_s
        return IterationCost(time_s=time_s, busy_s=busy_s)

    # --- deployment figures ------------------------------------------------------------------------------

    def footprint(self, gpu_memory_utilization: float = 0.9) -> Footprint:
        """KV capacity and power of the deployment for an engine (`SimEngine(footprint=...)`).

        The KV cache lives with the attention operator: each replica of its group offers
        gpu_memory_utilization of its GPUs' memory less the weights it holds. Raises ValueError naming
        the group whose weights do not fit.
        """
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}")
        kv_budget = idle_w = dynamic_w = peak_flops = 0.0
        for group in self.groups:
            memory = gpu_memory_utilization * group.tp * group.sku.gpu_memory_gb * 1e9
            weights = group.weight_bytes(self.model)
            if weights >= memory:
                raise ValueError(
                    f"operator group {group.name!r}: weights of {sorted(op.value for op in group.operators)} "
                    f"({weights / 1e9:.1f} GB) do not fit {gpu_memory_utilization:g} x {group.tp} x "
                    f"{group.sku.name} ({group.sku.gpu_memory_gb:g} GB each)")
            if Operator.ATTENTION in group.operators:
                kv_budget += group.replicas * (memory - weights)
            idle_w += group.gpus * group.sku.idle_power_w
            dynamic_w += group.gpus * (group.sku.max_power_w - group.sku.idle_power_w)
            peak_flops += group.gpus * group.sku.peak_tflops * 1e12
        return Footprint(kv_budget, idle_w, dynamic_w, sum(g.gpus for g in self.groups), peak_flops)

    def throughput_bound(self, ctx_tokens: int, phase: Literal["decode", "prefill"] = "decode") -> ThroughputBound:
        """The token rate no schedule can beat: the slowest stage's, with every group's replicas running
        full micro-batches (max_batch_tokens) in parallel and every link busy.

        decode: micro-batches of max_batch_tokens sequences, each attending over `ctx_tokens` tokens;
        prefill: micro-batches of max_batch_tokens prompt tokens from prompts of `ctx_tokens` tokens.
        Operator work only: the engine's per-iteration overhead and queueing come on top.
        """
        if isinstance(ctx_tokens, bool) or not isinstance(ctx_tokens, int) or ctx_tokens < 1:
            raise ValueError(f"ctx_tokens must be a positive integer, got {ctx_tokens!r}")
        if phase not in ("decode", "prefill"):
            raise ValueError(f"phase must be 'decode' or 'prefill', got {phase!r}")
        stages: list[StageCapacity] = []
        for group, cost in zip(self.groups, self._costs, strict=True):
            b = group.max_batch_tokens
            if phase == "decode":
                c = cost.ops_cost(group.operators, 0, 0, b, b * ctx_tokens, 0, b)
            else:
                # Each prompt token attends to (ctx + 1) / 2 keys on average; one logit per prompt.
                c = cost.ops_cost(group.operators, b, 0, 0, 0, b * (ctx_tokens + 1) / 2, b / ctx_tokens)
            stages.append(StageCapacity(group.name, group.replicas * b / c.time_s, b, c.time_s))
        for a, b_index, count in self.crossings:
            ga, gb = self.groups[a], self.groups[b_index]
            bytes_per_token = count * self._act_bytes_per_token
            links = min(ga.replicas, gb.replicas)
            rate = self.link.gbps * 1e9 * links / bytes_per_token
            micro = min(ga.max_batch_tokens, gb.max_batch_tokens)
            stages.append(StageCapacity(f"link {ga.name}-{gb.name}", rate, micro,
                                        self.link.transfer_s(micro * bytes_per_token)))
        slowest = min(stages, key=lambda s: s.tokens_per_s)
        return ThroughputBound(slowest.tokens_per_s, slowest.stage, tuple(stages))

    # --- pieces ------------------------------------------------------------------------------------------

    @staticmethod
    def _rounds(group: OperatorGroup, tokens: float) -> int:
        """Micro-batches each replica of `group` runs one after the other for a batch of `tokens`."""
        per_replica = math.ceil(tokens / group.replicas)
        return max(1, math.ceil(per_replica / group.max_batch_tokens))

    def _transfers_s(self, tokens: float) -> float:
        if tokens <= 0 or not self.crossings:
            return 0.0
        link, act, groups = self.link, self._act_bytes_per_token, self.groups
        return sum(n * link.transfer_s(tokens * act, min(groups[a].replicas, groups[b].replicas))
                   for a, b, n in self.crossings)

    def _decode(self, batch: int) -> tuple[float, float, float, float]:
        cached = self._decode_cache.get(batch)
        if cached is not None:
            return cached
        if batch < 0:
            raise ValueError(f"decode batch must be >= 0, got {batch}")
        gpu_s = self._transfers_s(batch)
        per_ctx_s = busy_fixed_s = busy_per_ctx_s = 0.0
        for group, cost, share in zip(self.groups, self._costs, self._power_share, strict=True):
            rounds = self._rounds(group, batch)
            div = group.replicas * rounds
            f, pc, bf, bpc = cost.ops_decode_coeffs(group.operators, batch / div)
            # rounds x (f + pc x S / div): the context is spread like the batch.
            gpu_s += rounds * f
            per_ctx_s += pc / group.replicas
            busy_fixed_s += share * rounds * bf
            busy_per_ctx_s += share * bpc / group.replicas
        # An empty iteration pays the scheduler's overhead only, as in the model-level roofline.
        fixed_s = (whole_iteration_s(self._serial, self._host_floor_s, gpu_s, batch, prefill=False) if batch > 0
                   else self._overhead_s + gpu_s)
        cached = (fixed_s, per_ctx_s, busy_fixed_s, busy_per_ctx_s)
        self._decode_cache[batch] = cached
        return cached


def group_load_time_s(model: ModelSpec, group: OperatorGroup, source: LoadSource,
                      params: LoadTimeParams | None = None) -> float:
    """Seconds for one replica of `group` to become ready: `load_time_s` for its operators' weights only."""
    return weights_load_time_s(group.weight_bytes(model), group.sku, group.tp, source, params,
                               what=f"operator group {group.name!r} weights of {model.name}")


def split_groups(
    attention: tuple[Sku, int, int], mlp: tuple[Sku, int, int], *,
    attention_max_batch_tokens: int = 8192, mlp_max_batch_tokens: int = 8192,
) -> tuple[OperatorGroup, OperatorGroup]:
    """Attention-FFN disaggregation: `attention` = (sku, tp, replicas) for the projections, attention
    and LM head, `mlp` = (sku, tp, replicas) for the MLP or experts."""
    a_sku, a_tp, a_replicas = attention
    m_sku, m_tp, m_replicas = mlp
    return (OperatorGroup("attention", ATTENTION_OPERATORS, a_sku, a_tp, a_replicas, attention_max_batch_tokens),
            OperatorGroup("mlp", MLP_OPERATORS, m_sku, m_tp, m_replicas, mlp_max_batch_tokens))


def single_group(sku: Sku, tp: int = 1, replicas: int = 1, max_batch_tokens: int = 8192) -> Sequence[OperatorGroup]:
    """Model-level serving as a split deployment: every operator in one group."""
    return (OperatorGroup("model", ALL_OPERATORS, sku, tp, replicas, max_batch_tokens),)
