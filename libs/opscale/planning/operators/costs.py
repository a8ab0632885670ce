"""Service times of a planner stage (a set of operator families on one replica of `tp` GPUs), taken from
the perf model that prices operator-split deployments, never computed a second way.

A stage's batch of b customers costs `RooflineOperatorModel.ops_cost` of its families (with the SKU's
shipped calibration, as `opscale.perf.profiled.latency_model_for` uses) plus the per-iteration overhead
(each stage runs its own engine iteration). Prefill customers are prompts of L tokens: b L new tokens,
b L (L + 1) / 2 attention pairs, one logit per prompt. Decode customers are one token of a running
sequence whose context holds C tokens: b tokens over b C cached ones, a logit each.

A mixture's shared expert (`ModelSpec.shared_expert_intermediate`), which the roofline's MLP does not
price, is priced as the MLP of a dense view of the model whose intermediate size is the shared
expert's: the same roofline over the same GEMM shape.

Memory: a replica holds its families' weights (`opscale.perf.operators.operator_weight_bytes`) on
`gpu_memory_utilization` of its GPUs; tp is the smallest power of two that leaves room. A replica with
attention also holds the KV cache of what it serves (`kv_bytes_per_token` per cached token).

Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from opscale.model import ModelSpec, Sku
from opscale.perf.calibration import calibrated_params
from opscale.perf.latency import RooflineParams
from opscale.perf.operators import Operator, RooflineOperatorModel, operator_weight_bytes

TP_DEGREES = (1, 2, 4, 8)
_MLP_ONLY = frozenset({Operator.MLP})


class StageCosts:
    """Service times and memory of stages of `model` on `sku` (see the module docstring)."""

    def __init__(self, model: ModelSpec, sku: Sku, *, params: RooflineParams | None = None,
                 gpu_memory_utilization: float = 0.9) -> None:
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}")
        self.model = model
        self.sku = sku
        self.params = params if params is not None else calibrated_params(sku.name)
        self.gpu_memory_utilization = gpu_memory_utilization
        self._models: dict[int, tuple[RooflineOperatorModel, RooflineOperatorModel | None]] = {}
        self._shared_view: ModelSpec | None = None
        if model.experts and model.shared_expert_intermediate:
            self._shared_view = dataclasses.replace(
                model, name=f"{model.name} shared expert", intermediate=model.shared_expert_intermediate,
                experts=0, experts_per_token=0, shared_expert_intermediate=0)

    def weight_bytes(self, ops: Iterable[Operator]) -> int:
        return sum(operator_weight_bytes(self.model, op) for op in frozenset(ops))

    def tp_for(self, ops: frozenset[Operator]) -> int | None:
        """The smallest tensor-parallel degree whose memory holds the stage's weights; None if none does."""
        weights = self.weight_bytes(ops)
        for tp in TP_DEGREES:
            if weights < self.memory_bytes(tp):
                return tp
        return None

    def memory_bytes(self, tp: int) -> float:
        return self.gpu_memory_utilization * tp * self.sku.gpu_memory_gb * 1e9

    def kv_room_bytes(self, ops: frozenset[Operator], tp: int) -> float:
        """What a replica has left for KV cache after its weights."""
        return self.memory_bytes(tp) - self.weight_bytes(ops)

    def prefill_s(self, ops: frozenset[Operator], tp: int, batch: int, prompt_tokens: int) -> float:
        """One iteration of the stage over `batch` fresh prompts of `prompt_tokens` tokens."""
        tokens = batch * prompt_tokens
        pairs = batch * prompt_tokens * (prompt_tokens + 1) / 2
        return self._cost(ops, tp, tokens, 0.0, pairs, float(batch))

    def decode_s(self, ops: frozenset[Operator], tp: int, batch: int, ctx_tokens: float) -> float:
        """One decode iteration of the stage over `batch` sequences of `ctx_tokens` cached tokens each."""
        return self._cost(ops, tp, 0.0, float(batch), 0.0, float(batch), batch * ctx_tokens)

    def _cost(self, ops: frozenset[Operator], tp: int, prefill_tokens: float, decode_batch: float,
              pairs: float, logits: float, decode_ctx: float = 0.0) -> float:
        base, shared = self._at(tp)
        time_s = base.iteration_overhead_s
        time_s += base.ops_cost(ops, prefill_tokens, 0.0, decode_batch, decode_ctx, pairs, logits).time_s
        if shared is not None and Operator.MLP in ops:
            time_s += shared.ops_cost(_MLP_ONLY, prefill_tokens, 0.0, decode_batch, 0.0, 0.0, 0.0).time_s
        return time_s

    def _at(self, tp: int) -> tuple[RooflineOperatorModel, RooflineOperatorModel | None]:
        found = self._models.get(tp)
        if found is None:
            base = RooflineOperatorModel(self.model, self.sku, tp, self.params)
            shared = (RooflineOperatorModel(self._shared_view, self.sku, tp, self.params)
                      if self._shared_view is not None else None)
            found = self._models[tp] = (base, shared)
        return found
