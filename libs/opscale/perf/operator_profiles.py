"""Operator profiles: latency and memory of each operator family over batch, sequence length, SKU,
tensor parallelism and SM share (issue 14 item 3; PAPERS.md §1.2 and §1.6: batch 1-256, L up to 64K,
SM share 1-100%).

Latency. A family (`opscale.perf.operators.Operator`) over one iteration costs:
- measured, where a vidur profile (`opscale.perf.profiles.OperatorProfile`, read by the caller from
  `../shared/data/vidur_profiling`) covers the model, SKU and TP degree: the QKV/O projections with the
  input norm and rotary embedding (`ATTN_PROJ_OPS`), the MLP with its norm, activation and residual add
  (`MLP_OPS`), each per layer times the layer count, plus the tensor-parallel all-reduce of the
  calibrated roofline (half of a layer's two per family). vidur measured neither attention nor the LM
  head (their profiles are Git LFS pointers, data/README "Gaps"), so those always come from:
- the calibrated roofline otherwise (`RooflineOperatorModel` with `calibrated_params(sku)`), which also
  prices a mixture's shared expert as the MLP of a dense view of the model with the shared expert's
  intermediate size (the same GEMM shape over the same roofline).
At an SM share s < 1 (`opscale.perf.sm_share`) the roofline runs on the partition's roof
(`partition_sku`); a measured time is scaled by the roofline's own ratio of busy time at s to busy time
at a whole GPU, and kernel time is multiplied by the co-location slowdown. The per-iteration overhead
is CPU-side and does not scale.

Memory, per replica (one GPU of `tp`, so weights and heads are divided by tp):
- weights of the family (`operator_weight_bytes` / tp);
- activations of one iteration: the QKV output (ATTN_PROJ), the gate/up output of the active experts
  (MLP), fp32 logits (LM_HEAD); one layer at a time, since layers run in sequence;
- attention: the KV cache of the batch (batch x seq x `kv_bytes_per_token`) and its workspace, which
  depends on the kernel. FlashAttention (Dao et al., NeurIPS 2022, arXiv 2205.14135, Theorem 1) needs
  O(N) extra memory beyond its inputs and output: the softmax statistics m and l, one fp32 pair per
  query row per head. Standard attention (that paper's Algorithm 0) writes S = QK^T to HBM and then
  P = softmax(S): two batch x heads x q x k matrices in the model's dtype, O(N^2). For decode q = 1.
So without FlashAttention the workspace grows with seq^2 and caps the batch a replica can hold.

Pure arithmetic: profiles are passed in, never read here; no clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum

from opscale.model import ModelSpec, Sku
from opscale.perf.calibration import calibrated_params
from opscale.perf.latency import RooflineLatencyModel, RooflineParams
from opscale.perf.operators import Operator, RooflineOperatorModel, operator_weight_bytes
from opscale.perf.profiles import OperatorProfile, ProfileSet
from opscale.perf.sm_share import SmShareParams, check_share, partition_sku, slowdown

# vidur's ops (opscale.perf.profiles.LAYER_OPS) by the family that places them, as the roofline groups
# them (opscale.planning.operators.dag.NODE_OPERATOR).
ATTN_PROJ_OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj")
MLP_OPS = ("post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
_MEASURED_OPS: Mapping[Operator, tuple[str, ...]] = {Operator.ATTN_PROJ: ATTN_PROJ_OPS, Operator.MLP: MLP_OPS}
PROFILE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PROFILE_SEQS = (128, 512, 1024, 4096, 8192, 16384, 32768, 65536)
_FP32 = 4
_EAGER_MATRICES = 2  # S and P, both in HBM (FlashAttention paper, Algorithm 0)
_FLASH_STATS = 2  # m and l per query row and head, fp32


class Phase(StrEnum):
    PREFILL = "prefill"
    DECODE = "decode"


class AttentionKernel(StrEnum):
    FLASH = "flash"  # FlashAttention: O(seq) workspace
    EAGER = "eager"  # materialised scores: O(seq^2) workspace


@dataclass(frozen=True, slots=True)
class OperatorCost:
    """One iteration of a set of families: `time_s` (with the iteration overhead), `busy_s` (kernel
    time: what draws dynamic power) and where the numbers came from ("vidur", "roofline" or both)."""

    time_s: float
    busy_s: float
    source: str


@dataclass(frozen=True, slots=True)
class OperatorMemory:
    """Bytes one replica (one GPU of its tp) holds for a family at a batch shape."""

    weights: float
    activations: float
    kv_cache: float
    attention_workspace: float

    @property
    def total(self) -> float:
        return self.weights + self.activations + self.kv_cache + self.attention_workspace


def attention_workspace_bytes(model: ModelSpec, batch: int, q_tokens: int, kv_tokens: int,
                              kernel: AttentionKernel | str, tp: int = 1) -> float:
    """Peak attention workspace of one layer (layers run in turn) for `batch` sequences of `q_tokens`
    queries over `kv_tokens` keys each, on one GPU of `tp` (see the module docstring)."""
    heads = model.heads / tp
    if AttentionKernel(kernel) is AttentionKernel.EAGER:
        return _EAGER_MATRICES * batch * heads * q_tokens * kv_tokens * model.bytes_per_param
    return _FLASH_STATS * batch * heads * q_tokens * _FP32


def phase_work(phase: Phase, batch: int, seq: float) -> tuple[float, float, float, float, float]:
    """The work of `batch` customers of `phase` as `OperatorProfiles.ops_cost` takes it (prefill tokens,
    decode tokens, attention pairs, logits, cached decode context): prefill customers are prompts of
    `seq` tokens (b L new tokens, b L (L + 1) / 2 pairs, a logit each); decode customers are one token
    of a sequence holding `seq` cached tokens (b tokens over b C cached ones, a logit each). The one
    owner of it: every phase price is `ops_cost` of this."""
    if phase is Phase.PREFILL:
        return batch * seq, 0.0, batch * seq * (seq + 1) / 2, float(batch), 0.0
    return 0.0, float(batch), 0.0, float(batch), batch * float(seq)


class OperatorProfiles:
    """Latency and memory per operator family of `model` on `sku` (see the module docstring).

    `profiles`: measured vidur profiles (None: roofline only); `params`: the roofline's calibration
    (default: the SKU's shipped one); `sharing`: how an SM share is priced."""

    def __init__(self, model: ModelSpec, sku: Sku, *, profiles: ProfileSet | None = None,
                 params: RooflineParams | None = None, sharing: SmShareParams | None = None) -> None:
        self.model = model
        self.sku = sku
        self.params = params if params is not None else calibrated_params(sku.name)
        self.sharing = sharing if sharing is not None else SmShareParams()
        self.measured: OperatorProfile | None = profiles.find(sku.name, model.name) if profiles else None
        self._shared_view: ModelSpec | None = None
        if model.experts and model.shared_expert_intermediate:
            self._shared_view = dataclasses.replace(
                model, name=f"{model.name} shared expert", intermediate=model.shared_expert_intermediate,
                experts=0, experts_per_token=0, shared_expert_intermediate=0)
        self._rooflines: dict[tuple[int, float], tuple[RooflineOperatorModel, RooflineOperatorModel | None]] = {}
        self._allreduce: dict[int, RooflineLatencyModel] = {}

    def __repr__(self) -> str:
        source = "vidur + roofline" if self.measured is not None else "roofline"
        return f"OperatorProfiles({self.model.name!r}, {self.sku.name!r}, {source})"

    # --- latency ----------------------------------------------------------------------------------------

    def source(self, operator: Operator | str, tp: int = 1) -> str:
        """"vidur" when a measured profile prices `operator` at `tp`, else "roofline"."""
        return "vidur" if self._measured_at(Operator(operator), tp) else "roofline"

    def latency(self, operator: Operator | str, phase: Phase | str, batch: int, seq: int, *, tp: int = 1,
                share: float = 1.0) -> OperatorCost:
        """One iteration of one family: prefill of `batch` prompts of `seq` tokens, or one decode step
        of `batch` sequences holding `seq` cached tokens each."""
        _check_positive(batch=batch, seq=seq)
        return self.phase_cost(frozenset({Operator(operator)}), Phase(phase), tp, batch, seq, share)

    def phase_cost(self, ops: frozenset[Operator], phase: Phase, tp: int, batch: int, seq: float,
                   share: float = 1.0) -> OperatorCost:
        """One iteration of the families `ops` over `batch` customers of `phase` (`phase_work`)."""
        return self.ops_cost(ops, tp, share, *phase_work(phase, batch, seq))

    def ops_cost(self, ops: frozenset[Operator], tp: int, share: float, prefill_tokens: float,
                 decode_batch: float, pairs: float, logits: float, decode_ctx: float = 0.0) -> OperatorCost:
        """One iteration of the families `ops` on one replica of `tp` GPUs at SM `share`, the
        per-iteration overhead included."""
        check_share(share)
        base, shared = self._roofline(tp, share)
        tokens = prefill_tokens + decode_batch
        roof_ops = frozenset(ops)
        busy = time = 0.0
        sources = set()
        for op in (Operator.ATTN_PROJ, Operator.MLP):
            if op in roof_ops and tokens > 0 and self._measured_at(op, tp):
                roof_ops -= {op}
                kernel_s = self._measured_s(op, tp, tokens)
                if share < 1.0:
                    kernel_s *= self._share_ratio(op, tp, share, prefill_tokens, decode_batch)
                kernel_s *= slowdown(share, self.sharing)
                busy += kernel_s
                time += kernel_s + self._allreduce_at(tp).allreduce_s(round(tokens)) / 2
                sources.add("vidur")
        if roof_ops:
            c = base.ops_cost(roof_ops, prefill_tokens, 0.0, decode_batch, decode_ctx, pairs, logits)
            busy_s, time_s = c.busy_s, c.time_s
            if shared is not None and Operator.MLP in roof_ops:
                extra = shared.ops_cost(frozenset({Operator.MLP}), prefill_tokens, 0.0, decode_batch, 0.0, 0.0, 0.0)
                busy_s += extra.busy_s
                time_s += extra.time_s
            factor = slowdown(share, self.sharing)
            busy += busy_s * factor
            time += time_s + busy_s * (factor - 1.0)
            sources.add("roofline")
        if tokens > 0:
            time += base.iteration_overhead_s
        return OperatorCost(time, busy, "+".join(sorted(sources)) or "roofline")

    # --- memory -----------------------------------------------------------------------------------------

    def memory(self, operator: Operator | str, phase: Phase | str, batch: int, seq: int, *, tp: int = 1,
               kernel: AttentionKernel | str = AttentionKernel.FLASH) -> OperatorMemory:
        """Bytes one GPU of a replica holds for `operator` at this shape (see the module docstring).
        Prefill: `batch` prompts of `seq` tokens; decode: `batch` sequences of `seq` cached tokens."""
        _check_positive(batch=batch, seq=seq)
        op, phase = Operator(operator), Phase(phase)
        m = self.model
        bpp = m.bytes_per_param
        tokens = batch * seq if phase is Phase.PREFILL else batch
        weights = operator_weight_bytes(m, op) / tp
        activations = kv = workspace = 0.0
        if op is Operator.ATTN_PROJ:
            activations = tokens * (m.hidden + 2 * m.kv_heads * m.head_dim) * bpp / tp
        elif op is Operator.MLP:
            k = m.experts_per_token if m.experts else 1
            width = 2 * (m.intermediate * k + m.shared_expert_intermediate)
            activations = tokens * width * bpp / tp
        elif op is Operator.LM_HEAD:
            activations = batch * m.vocab * _FP32 / tp
        else:
            kv = batch * seq * m.kv_bytes_per_token / tp
            q = seq if phase is Phase.PREFILL else 1
            workspace = attention_workspace_bytes(m, batch, q, seq, kernel, tp)
        return OperatorMemory(weights, activations, kv, workspace)

    # --- the grid ---------------------------------------------------------------------------------------

    def table(self, *, batches: Iterable[int] = PROFILE_BATCHES, seqs: Iterable[int] = PROFILE_SEQS,
              tp: int = 1, shares: Iterable[float] = (1.0,),
              kernel: AttentionKernel | str = AttentionKernel.FLASH) -> Iterator[dict[str, object]]:
        """Rows of the profile grid: per family, phase, batch, seq and share, latency and memory."""
        for op in Operator:
            for phase in Phase:
                for b in batches:
                    for seq in seqs:
                        mem = self.memory(op, phase, b, seq, tp=tp, kernel=kernel)
                        for s in shares:
                            cost = self.latency(op, phase, b, seq, tp=tp, share=s)
                            yield {"operator": op.value, "phase": phase.value, "sku": self.sku.name, "tp": tp,
                                   "batch": b, "seq": seq, "share": s, "latency_s": cost.time_s,
                                   "busy_s": cost.busy_s, "memory_bytes": mem.total, "source": cost.source}

    # --- pieces -----------------------------------------------------------------------------------------

    def _measured_at(self, op: Operator, tp: int) -> bool:
        p = self.measured
        return p is not None and op in _MEASURED_OPS and tp in p.curves and not self.model.experts

    def _measured_s(self, op: Operator, tp: int, tokens: float) -> float:
        p = self.measured
        assert p is not None
        at_tp = p.curves[tp]
        layer = sum(at_tp[name].at(tokens) for name in _MEASURED_OPS[op] if name in at_tp)
        # vidur's `emb` is the embedding lookup, which the LM head family holds; the LM head itself was
        # not measured, so that family stays on the roofline whole.
        return layer * self.model.layers

    def _share_ratio(self, op: Operator, tp: int, share: float, prefill_tokens: float, decode_batch: float) -> float:
        ops = frozenset({op})
        whole = self._roofline(tp, 1.0)[0].ops_cost(ops, prefill_tokens, 0.0, decode_batch, 0.0, 0.0, 0.0).busy_s
        part = self._roofline(tp, share)[0].ops_cost(ops, prefill_tokens, 0.0, decode_batch, 0.0, 0.0, 0.0).busy_s
        return part / whole if whole > 0 else 1.0 / share

    def _roofline(self, tp: int, share: float) -> tuple[RooflineOperatorModel, RooflineOperatorModel | None]:
        key = (tp, share)
        found = self._rooflines.get(key)
        if found is None:
            sku = partition_sku(self.sku, share, self.sharing)
            base = RooflineOperatorModel(self.model, sku, tp, self.params)
            shared = (RooflineOperatorModel(self._shared_view, sku, tp, self.params)
                      if self._shared_view is not None else None)
            found = self._rooflines[key] = (base, shared)
        return found

    def _allreduce_at(self, tp: int) -> RooflineLatencyModel:
        found = self._allreduce.get(tp)
        if found is None:
            found = self._allreduce[tp] = RooflineLatencyModel(self.model, self.sku, tp, self.params)
        return found


def _check_positive(**values: int) -> None:
    for label, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
