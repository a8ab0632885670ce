"""Service times and memory of a planner stage (a set of operator families on one replica of `tp` GPUs,
or of an SM share of one GPU), taken from `opscale.perf.operator_profiles.OperatorProfiles`, the one
owner of operator prices (measured vidur profiles where given, the calibrated roofline otherwise,
spatial partitions by `opscale.perf.sm_share`), never computed a second way.

A stage's batch of b customers costs the profiles' `phase_cost` of its families (with the per-iteration
overhead: each stage runs its own engine iteration; `operator_profiles.phase_work` says what a prefill
and a decode customer bring), its time and kernel time from one pricing (`phase_cost`).

Memory: a replica holds its families' weights (`opscale.perf.operators.operator_weight_bytes`) on
`gpu_memory_utilization` of its GPUs; tp is the smallest power of two that leaves room. A replica with
attention also holds the KV cache of what it serves (`kv_bytes_per_token` per cached token) and the
attention workspace of its kernel (FlashAttention or materialised scores); `replica_bytes` adds the
iteration's activations, for packing partitions onto GPUs.

Contention: `memory_bound_fraction` is the share of a stage's kernel time its HBM traffic takes on the
roofline (its busy time on a roof with free compute over its busy time on the real roof: 1 when every
kernel is memory-bound), which sets how much it suffers from and inflicts on a neighbour on the same
GPU (`opscale.perf.sm_share.contention_slowdown`).

Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from opscale.model import ModelSpec, Sku
from opscale.perf.latency import RooflineParams
from opscale.perf.operator_profiles import AttentionKernel, OperatorProfiles, Phase
from opscale.perf.operators import Operator, operator_weight_bytes
from opscale.perf.profiles import ProfileSet
from opscale.perf.sm_share import SmShareParams

TP_DEGREES = (1, 2, 4, 8)


class StageCosts:
    """Service times and memory of stages of `model` on `sku` (see the module docstring)."""

    def __init__(self, model: ModelSpec, sku: Sku, *, params: RooflineParams | None = None,
                 gpu_memory_utilization: float = 0.9, sharing: SmShareParams | None = None,
                 profiles: ProfileSet | None = None) -> None:
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}")
        self.model = model
        self.sku = sku
        self.operators = OperatorProfiles(model, sku, profiles=profiles, params=params, sharing=sharing)
        self.params = self.operators.params
        self.gpu_memory_utilization = gpu_memory_utilization
        self._sharing = sharing
        self._rooflines: tuple[OperatorProfiles, OperatorProfiles] | None = None

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

    def transient_bytes(self, ops: frozenset[Operator], phase: Phase, tp: int, batch: int, seq: int,
                        kernel: AttentionKernel) -> float:
        """Per GPU of a replica: the iteration's activations and attention workspace (not weights or KV)."""
        total = 0.0
        for op in ops:
            m = self.operators.memory(op, phase, batch, seq, tp=tp, kernel=kernel)
            total += m.activations + m.attention_workspace
        return total

    def prefill_s(self, ops: frozenset[Operator], tp: int, batch: int, prompt_tokens: int,
                  share: float = 1.0) -> float:
        """One iteration of the stage over `batch` fresh prompts of `prompt_tokens` tokens."""
        return self.operators.phase_cost(ops, Phase.PREFILL, tp, batch, prompt_tokens, share).time_s

    def decode_s(self, ops: frozenset[Operator], tp: int, batch: int, ctx_tokens: float,
                 share: float = 1.0) -> float:
        """One decode iteration of the stage over `batch` sequences of `ctx_tokens` cached tokens each."""
        return self.operators.phase_cost(ops, Phase.DECODE, tp, batch, ctx_tokens, share).time_s

    def phase_cost(self, ops: frozenset[Operator], phase: Phase, tp: int, batch: int, seq: float,
                   share: float = 1.0) -> tuple[float, float]:
        """(time_s, busy_s) of one iteration of the stage over `batch` customers of `phase` (prompts of
        `seq` tokens, or decode steps of sequences holding `seq`): one pricing for both."""
        cost = self.operators.phase_cost(ops, phase, tp, batch, seq, share)
        return cost.time_s, cost.busy_s

    def iteration_cost(self, ops: frozenset[Operator], tp: int, share: float, prefill_tokens: float,
                       decode_batch: float, pairs: float, logits: float, decode_ctx: float) -> tuple[float, float]:
        """(time_s, busy_s) of one iteration of the stage over a mixed unit of work: `prefill_tokens` new
        prompt tokens with `pairs` attention pairs, `decode_batch` decode tokens over `decode_ctx` cached
        ones, `logits` sampled (what `prefill_s` and `decode_s` price, in one call)."""
        cost = self.operators.ops_cost(ops, tp, share, prefill_tokens, decode_batch, pairs, logits, decode_ctx)
        return cost.time_s, cost.busy_s

    def busy_s(self, ops: frozenset[Operator], phase: Phase, tp: int, batch: int, seq: float,
               share: float = 1.0) -> float:
        """Kernel time (what draws dynamic power) of one iteration at the stage's batch."""
        return _busy_s(self.operators, ops, phase, tp, batch, seq, share)

    def memory_bound_fraction(self, ops: frozenset[Operator], phase: Phase, tp: int, batch: int, seq: float,
                              share: float = 1.0) -> float:
        """Fraction in [0, 1] of the stage's kernel time its HBM traffic takes on the roofline (see the
        module docstring; measured profiles do not say, so the roofline's split stands for them)."""
        if self._rooflines is None:
            free_compute = dataclasses.replace(self.sku, peak_tflops=self.sku.peak_tflops * 1e9)
            self._rooflines = (
                OperatorProfiles(self.model, self.sku, params=self.params, sharing=self._sharing),
                OperatorProfiles(self.model, free_compute, params=self.params, sharing=self._sharing))
        real, memory_only = self._rooflines
        whole = _busy_s(real, ops, phase, tp, batch, seq, share)
        return min(1.0, _busy_s(memory_only, ops, phase, tp, batch, seq, share) / whole) if whole > 0 else 0.0


def _busy_s(profiles: OperatorProfiles, ops: frozenset[Operator], phase: Phase, tp: int, batch: int, seq: float,
            share: float) -> float:
    return profiles.phase_cost(ops, phase, tp, batch, seq, share).busy_s
