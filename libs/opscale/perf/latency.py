"""Iteration latency of an inference engine: the `LatencyModel` protocol and its roofline implementation.

An engine iteration runs every operator of the model once over a batch of new tokens: prefill chunks
and one decode token per running sequence. The roofline model prices each operator at the larger of
its compute time (FLOPs over derated peak FLOP/s) and its memory time (bytes moved over derated HBM
bandwidth), adds tensor-parallel all-reduces and a fixed per-iteration overhead (scheduling, kernel
launches, sampling). Figures are per GPU: with tensor parallelism `tp`, weights, FLOPs and KV cache
are split `tp` ways. `opscale.perf.profiled` replaces the linear and norm operators' times with
measured profiles and keeps this protocol; `opscale.perf.calibration` fits `RooflineParams` to them.

Two optional terms, off by default so that default parameters keep the original arithmetic, let a
calibrated roofline price what the weight-bearing GEMMs leave out: the elementwise kernels of every
layer (norms, rotary embedding, activation, residual add: memory-bound on activation traffic) and a
fixed per-layer time (kernel launch floors, which dominate them at small batches).

Decode iterations are linear in the total KV context: `fixed_s(batch) + per_ctx_token_s * S`. The
simulated engine relies on that shape to advance a whole run of decode steps in closed form.

Whole iterations. Kernel-level pieces (what vidur's operator profiles measure) miss what measured
whole iterations show (Splitwise's Llama-2-70B steps on A100/H100 at TP 2/4/8; bench/perf_fidelity.py):
- a host floor: an engine that launches kernels eagerly spends host time per layer issuing them, and
  the GPU work overlaps it, so the forward pass takes max(layers * host_layer_s, GPU time). At high TP
  the GPU share shrinks and the floor binds: Splitwise's decode step stays at ~44 ms (A100) and
  ~30 ms (H100) from TP4 to TP8 where the GPU time halves;
- serial host work after the forward pass, per sequence (`sequence_overhead_s`), and before a prefill
  (`prefill_overhead_s`);
- a long-prompt prefill attention cost per (query, key) pair and layer that does not shrink with TP
  (`prefill_pair_s`).
All four are 0 by default (a GPU-bound engine, e.g. one replaying CUDA graphs, has no host floor).
Decode attention stays outside the max, so decode iterations keep the linear shape below.

Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from opscale.model import ModelSpec, Sku

# Effective per-GPU all-reduce bus bandwidth in GB/s (what NCCL's busbw reaches on large messages),
# by SKU name. SXM parts all-reduce over NVLink; the PCIe cards (L40S, A10G, L20) over PCIe Gen4 x16.
# Sources: NVIDIA datasheets (NVLink 3: 600 GB/s, NVLink 4: 900 GB/s bidirectional per GPU; H20 keeps
# NVLink 4) derated to typical nccl-tests busbw; PCIe Gen4 x16 is 32 GB/s per direction.
DEFAULT_INTERCONNECT_GBPS: dict[str, float] = {
    "a100-80gb": 230.0,
    "h100-80gb": 360.0,
    "h200": 360.0,
    "h20": 360.0,
    "l40s": 20.0,
    "a10g": 20.0,
    "l20": 20.0,
}
# A SKU the table does not know is assumed to sit on PCIe.
FALLBACK_INTERCONNECT_GBPS = 20.0


class RooflineParams(BaseModel):
    """Calibration of the roofline model. Defaults follow common practice for vLLM-class engines."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    compute_efficiency: float = Field(
        0.6, gt=0, le=1, description="Fraction of the SKU's peak dense FLOP/s that GEMMs reach.")
    bandwidth_efficiency: float = Field(
        0.8, gt=0, le=1, description="Fraction of the SKU's HBM bandwidth that weight and KV reads reach.")
    iteration_overhead_s: float = Field(
        0.004, ge=0, description="Fixed time per iteration, seconds: scheduling, kernel launches, sampling.")
    allreduce_latency_s: float = Field(
        10e-6, ge=0, description="Fixed cost of one tensor-parallel all-reduce call, seconds.")
    interconnect_gbps: float | None = Field(
        None, gt=0, description="Per-GPU all-reduce bus bandwidth, GB/s; None: the SKU's default "
                                "(DEFAULT_INTERCONNECT_GBPS, else PCIe).")
    elementwise_efficiency: float | None = Field(
        None, gt=0, le=1, description="Fraction of the SKU's HBM bandwidth that the elementwise kernels "
                                      "(norms, rotary, activation, residual add) reach on activation "
                                      "traffic; None leaves them out, as the original roofline does.")
    layer_overhead_s: float = Field(
        0.0, ge=0, description="Fixed time per transformer layer per iteration, seconds: the launch floors "
                               "of the layer's kernels. Counted only when the iteration has tokens.")
    # Whole-iteration terms (see "Whole iterations" in the module docstring). Operator profiles time
    # kernels alone and cannot see them; they are fitted to measured whole iterations (Splitwise's
    # Llama-2-70B prefill and decode steps, `iteration_fit.fit_iteration`). 0 leaves them out.
    host_layer_s: float = Field(
        0.0, ge=0, description="Host (CPU) time to issue one layer's kernels in an iteration, seconds, for an "
                               "engine that launches kernels eagerly (no CUDA graphs). The GPU runs while the "
                               "host issues, so the iteration's kernels and all-reduces take max(layers * "
                               "host_layer_s, their GPU time): a floor that does not shrink with TP.")
    sequence_overhead_s: float = Field(
        0.0, ge=0, description="Host time per sequence that produces a token in an iteration, seconds: "
                               "sampling and output processing, after the forward pass (serial).")
    prefill_overhead_s: float = Field(
        0.0, ge=0, description="Extra fixed time of an iteration that prefills prompt tokens, seconds: prompt "
                               "input and attention-metadata preparation (serial).")
    prefill_pair_s: float = Field(
        0.0, ge=0, description="Time per (query, key) pair of prefill attention per layer that does not "
                               "shrink with TP, seconds: the long-prompt attention cost that whole "
                               "iterations show beyond the sharded roofline.")


@dataclass(frozen=True, slots=True)
class DenseWork:
    """The work of all transformer layers' weight-bearing and elementwise operators over one iteration.

    Figures are summed over the `tp` GPUs (each GPU does 1/tp of a sharded operator; an operator every
    GPU repeats, such as a norm, counts once per GPU), so time = work / (tp * per-GPU rate).
    `gemm_flops[i]` and `gemm_bytes[i]` belong to the same operator group (QKV/O projections, MLP),
    each priced at max(compute, memory). Attention over the KV cache and the LM head are not in it.
    """

    gemm_flops: tuple[float, ...]
    gemm_bytes: tuple[float, ...]
    elementwise_bytes: float


@dataclass(frozen=True, slots=True)
class IterationCost:
    """One iteration's time and how hard it worked the GPUs.

    `busy_s` is the part of `time_s` in which the bottleneck unit (tensor cores or HBM) of each GPU is
    saturated: the sum over operators of max(compute time, memory time). Communication and fixed
    overhead are not busy. `utilisation` = busy_s / time_s feeds `Sku.power_w`.
    """

    time_s: float
    busy_s: float

    @property
    def utilisation(self) -> float:
        return self.busy_s / self.time_s if self.time_s > 0 else 0.0


@runtime_checkable
class LatencyModel(Protocol):
    """Iteration latency of one model on one SKU at one tensor-parallel degree."""

    def prefill_s(self, tokens: int, ctx_tokens: int = 0) -> float:
        """One iteration that prefills `tokens` new tokens of one sequence whose KV cache already holds
        `ctx_tokens` tokens (0 for a fresh prompt). Attention is quadratic in `tokens`."""
        ...

    def decode_step_coeffs(self, batch: int) -> tuple[float, float]:
        """(fixed_s, per_ctx_token_s): a decode iteration of `batch` sequences whose KV contexts total
        S tokens takes fixed_s + per_ctx_token_s * S."""
        ...

    def decode_busy_coeffs(self, batch: int) -> tuple[float, float]:
        """(fixed_busy_s, per_ctx_token_busy_s): the busy part of the same decode iteration, for power."""
        ...

    def iteration_cost(
        self, prefill_tokens: int, prefill_ctx_tokens: int, decode_batch: int, decode_ctx_tokens: int,
        *, prefill_attn_pairs: int | None = None,
    ) -> IterationCost:
        """A mixed (chunked-prefill) iteration: `prefill_tokens` new prompt tokens whose sequences already
        cache `prefill_ctx_tokens` tokens in total, plus one decode token for each of `decode_batch`
        sequences whose KV contexts total `decode_ctx_tokens`.

        `prefill_attn_pairs` is the exact number of (query, key) pairs of the prefill attention,
        sum over chunks of n*(p + (n+1)/2) for a chunk of n tokens after p cached ones; when None the
        prefill is taken as one chunk. With no prefill, time_s equals the decode_step_coeffs line.
        """
        ...

    def iteration_s(
        self, prefill_tokens: int, prefill_ctx_tokens: int, decode_batch: int, decode_ctx_tokens: int,
        *, prefill_attn_pairs: int | None = None,
    ) -> float:
        """`iteration_cost(...).time_s`."""
        ...


def dense_layer_work(model: ModelSpec, tp: int, tokens: int) -> DenseWork:
    """`DenseWork` of `model` split over `tp` GPUs for an iteration of `tokens` new tokens.

    Per layer and token: QKV/O projections 2*P_attn FLOPs, MLP 2*P_active FLOPs; weights are read once
    per iteration (for a mixture of E experts with k per token, the E*(1-(1-k/E)^T) experts a batch of
    T tokens touches on average). Elementwise traffic, in values of bytes_per_param each: the two norms
    (read and write the hidden state: 2*hidden each) and the residual add (two reads, one write:
    3*hidden) run on every GPU; rotary embedding (read and write q and k) and the gated activation
    (read gate and up, write one: 3*intermediate per active expert) are sharded.

    Example: Llama-2-7B (hidden 4096, 32 layers, intermediate 11008), tp 1, one token: QKV/O FLOPs
    2 * 4 * 4096**2 * 32 = 4.3e9 and their weights 4 * 4096**2 * 2 bytes * 32 = 4.3e9 bytes.
    """
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ValueError(f"tp must be a positive integer, got {tp!r}")
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")
    layers, bpp = model.layers, model.bytes_per_param
    attn_params = model.attn_params_per_layer * layers
    mlp = MlpRoofline.of(model)
    experts_per_token = mlp.experts_per_token
    kv_dim = model.kv_heads * model.head_dim
    replicated = 7 * model.hidden
    sharded = (2 * (model.hidden + kv_dim) + 3 * model.intermediate * experts_per_token
               + 3 * model.shared_expert_intermediate)
    return DenseWork(
        gemm_flops=(2 * attn_params * tokens, mlp.flops(tokens)),
        gemm_bytes=(attn_params * bpp, mlp.weight_bytes(tokens)),
        elementwise_bytes=float((replicated * tp + sharded) * bpp * layers * tokens),
    )


@dataclass(frozen=True, slots=True)
class MlpRoofline:
    """The MLP of all of a model's layers on the roofline: the one place its mixture-of-experts terms
    are priced (`dense_layer_work`, `RooflineLatencyModel`, `RooflineOperatorModel`). A batch of
    `tokens` does 2 FLOPs per active parameter per token (the k routed experts' and the always-on
    shared expert's, Qwen2-MoE) and reads the weights of the experts it touches on average
    (`_experts_touched`: every one of a dense model's), plus the shared expert's once it has tokens."""

    experts: int
    experts_per_token: int  # 1 for a dense model
    active_params: int
    expert_bytes: int  # one expert, every layer
    shared_expert_bytes: int

    @classmethod
    def of(cls, model: ModelSpec) -> MlpRoofline:
        layers, bpp = model.layers, model.bytes_per_param
        return cls(model.experts, model.experts_per_token if model.experts else 1,
                   model.active_mlp_params_per_layer * layers, 3 * model.hidden * model.intermediate * layers * bpp,
                   model.shared_expert_params_per_layer * layers * bpp)

    def flops(self, tokens: float) -> float:
        return 2 * self.active_params * tokens

    def weight_bytes(self, tokens: float) -> float:
        touched = _experts_touched(self.experts, self.experts_per_token, tokens)
        return self.expert_bytes * touched + (self.shared_expert_bytes if tokens else 0.0)

    def seconds(self, tokens: float, s_per_flop: float, s_per_byte: float) -> float:
        """At max(compute, memory)."""
        return max(self.flops(tokens) * s_per_flop, self.weight_bytes(tokens) * s_per_byte)


def _experts_touched(experts: int, per_token: int, tokens: float) -> float:
    """Expected distinct experts a batch of `tokens` routes to, each token picking `per_token` of
    `experts` uniformly; 1 for a dense model."""
    if not experts:
        return 1.0
    return experts * (1.0 - (1.0 - per_token / experts) ** tokens)


def check_token_counts(prefill_tokens: int, prefill_ctx_tokens: int, decode_batch: int,
                       decode_ctx_tokens: int) -> None:
    """The argument check every LatencyModel's iteration_cost starts with."""
    if min(prefill_tokens, prefill_ctx_tokens, decode_batch, decode_ctx_tokens) < 0:
        raise ValueError(
            f"token counts must be >= 0, got prefill_tokens={prefill_tokens}, prefill_ctx_tokens="
            f"{prefill_ctx_tokens}, decode_batch={decode_batch}, decode_ctx_tokens={decode_ctx_tokens}")


class IterationTime:
    """Mixin: `iteration_s` is the time of `iteration_cost`, for every LatencyModel implementation."""

    def iteration_s(
        self, prefill_tokens: int, prefill_ctx_tokens: int, decode_batch: int, decode_ctx_tokens: int,
        *, prefill_attn_pairs: int | None = None,
    ) -> float:
        return self.iteration_cost(prefill_tokens, prefill_ctx_tokens, decode_batch,  # type: ignore[attr-defined]
                                   decode_ctx_tokens, prefill_attn_pairs=prefill_attn_pairs).time_s


def attn_pairs(chunk_tokens: int, cached_tokens: int) -> int:
    """(query, key) pairs of causal attention for `chunk_tokens` new tokens after `cached_tokens`.

    Example: a fresh 4-token prompt -> 1 + 2 + 3 + 4 = 10 pairs; 2 more tokens after it -> 5 + 6 = 11.
    """
    return chunk_tokens * cached_tokens + chunk_tokens * (chunk_tokens + 1) // 2


class RooflineLatencyModel(IterationTime):
    """Roofline latency of `model` on `tp` GPUs of `sku` (see the module docstring).

    Per operator and iteration of T new tokens (per GPU, i.e. divided by tp):
      QKV/O projections: 2*P_attn*T FLOPs vs P_attn weight bytes;
      MLP: 2*P_active*T FLOPs vs the bytes of the experts the batch touches (all of a dense MLP; for a
        mixture of E experts with k per token, E*(1-(1-k/E)^T) of them on average);
      LM head on the tokens that produce logits; attention: 4*heads*head_dim FLOPs per (query, key)
        pair per layer vs the KV bytes read and written;
      two ring all-reduces of T*hidden activations per layer when tp > 1; a fixed overhead.
    Elementwise kernels and a per-layer fixed time are added when the params ask for them (see
    `dense_layer_work`); embeddings are left out.
    """

    def __init__(self, model: ModelSpec, sku: Sku, tp: int = 1, params: RooflineParams | None = None) -> None:
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise ValueError(f"tp must be a positive integer, got {tp!r}")
        self.model = model
        self.sku = sku
        self.tp = tp
        self.params = params if params is not None else RooflineParams()
        p = self.params
        flops_per_s = sku.peak_tflops * 1e12 * p.compute_efficiency
        bytes_per_s = sku.mem_bandwidth_gbps * 1e9 * p.bandwidth_efficiency
        # Seconds per unit of work on one GPU: everything below is already divided by tp.
        self._s_per_flop = 1.0 / (flops_per_s * tp)
        self._s_per_byte = 1.0 / (bytes_per_s * tp)
        layers, bpp = model.layers, model.bytes_per_param

        self._attn_proj_params = model.attn_params_per_layer * layers
        self._mlp = MlpRoofline.of(model)
        self._lm_head_params = model.vocab * model.hidden
        self._bpp = bpp
        self._attn_flops_per_pair = 4 * model.heads * model.head_dim * layers
        self._kv_bytes_per_token = model.kv_bytes_per_token
        # Decode attention reads each cached token's K and V once per step: linear in the context.
        self._decode_s_per_ctx = max(self._attn_flops_per_pair * self._s_per_flop,
                                     self._kv_bytes_per_token * self._s_per_byte)

        link_gbps = p.interconnect_gbps
        if link_gbps is None:
            link_gbps = DEFAULT_INTERCONNECT_GBPS.get(sku.name.casefold(), FALLBACK_INTERCONNECT_GBPS)
        self.interconnect_gbps = link_gbps
        self._allreduce_calls = 2 * layers if tp > 1 else 0
        # Ring all-reduce moves 2(n-1)/n of the message over each GPU's link.
        self._allreduce_s_per_token = (
            2 * (tp - 1) / tp * model.hidden * bpp / (link_gbps * 1e9) if tp > 1 else 0.0)
        # Optional terms (0 with default params, and adding 0.0 leaves a float unchanged).
        if p.elementwise_efficiency is None:
            self._elementwise_s_per_token = 0.0
        else:
            per_token = dense_layer_work(model, tp, 1).elementwise_bytes
            self._elementwise_s_per_token = per_token / (
                sku.mem_bandwidth_gbps * 1e9 * p.elementwise_efficiency * tp)
        self._layers_overhead_s = p.layer_overhead_s * layers
        self._host_floor_s = p.host_layer_s * layers
        self._prefill_pair_s = p.prefill_pair_s * layers
        self._decode_cache: dict[int, tuple[float, float, float]] = {}

    def __repr__(self) -> str:
        return f"RooflineLatencyModel({self.model.name!r}, {self.sku.name!r}, tp={self.tp})"

    # --- operator pieces (what a profiled model takes from the roofline, or checks against it) ------

    @property
    def decode_attention_s_per_ctx_token(self) -> float:
        """Seconds a decode iteration spends per cached context token (reading its K and V)."""
        return self._decode_s_per_ctx

    def dense_layers_s(self, tokens: int) -> float:
        """All layers' projections, MLP, elementwise kernels and per-layer fixed time over `tokens` new
        tokens: what operator profiles measure. No attention core, LM head, all-reduce or overhead."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        if tokens == 0:
            return 0.0
        return self._gemm_s(tokens) + self._elementwise_s_per_token * tokens + self._layers_overhead_s

    def lm_head_s(self, logit_tokens: int) -> float:
        """The LM head over the `logit_tokens` tokens that produce logits."""
        s_flop, s_byte = self._s_per_flop, self._s_per_byte
        return max(2 * self._lm_head_params * logit_tokens * s_flop,
                   self._lm_head_params * self._bpp * s_byte)

    def prefill_attention_s(self, pairs: int, kv_tokens: int) -> float:
        """Prefill attention over `pairs` (query, key) pairs, reading and writing `kv_tokens` tokens'
        K and V (the chunk's and its cached context's)."""
        return max(pairs * self._attn_flops_per_pair * self._s_per_flop,
                   kv_tokens * self._kv_bytes_per_token * self._s_per_byte)

    def allreduce_s(self, tokens: int) -> float:
        """Tensor-parallel all-reduces of one iteration over `tokens` new tokens (0 when tp is 1)."""
        return self._allreduce_s(tokens)

    # --- the protocol -------------------------------------------------------------------------------

    def prefill_s(self, tokens: int, ctx_tokens: int = 0) -> float:
        return self.iteration_cost(tokens, ctx_tokens, 0, 0).time_s

    def decode_step_coeffs(self, batch: int) -> tuple[float, float]:
        fixed_s, _busy_s, per_ctx_s = self._decode_coeffs(batch)
        return fixed_s, per_ctx_s

    def decode_busy_coeffs(self, batch: int) -> tuple[float, float]:
        _fixed_s, busy_s, per_ctx_s = self._decode_coeffs(batch)
        return busy_s, per_ctx_s

    def iteration_cost(
        self, prefill_tokens: int, prefill_ctx_tokens: int, decode_batch: int, decode_ctx_tokens: int,
        *, prefill_attn_pairs: int | None = None,
    ) -> IterationCost:
        check_token_counts(prefill_tokens, prefill_ctx_tokens, decode_batch, decode_ctx_tokens)
        if prefill_tokens == 0:
            # The same arithmetic as the decode line, so a decode-only iteration costs exactly
            # fixed_s + per_ctx_token_s * S whichever way it is asked for.
            fixed_s, busy_s, per_ctx_s = self._decode_coeffs(decode_batch)
            attn_s = per_ctx_s * decode_ctx_tokens
            return IterationCost(time_s=fixed_s + attn_s, busy_s=busy_s + attn_s)
        pairs = prefill_attn_pairs
        if pairs is None:
            pairs = attn_pairs(prefill_tokens, prefill_ctx_tokens)
        tokens = prefill_tokens + decode_batch
        # Logits are computed for the decode tokens and the last token of the prefill.
        busy_s = self._linear_s(tokens, decode_batch + 1)
        busy_s += self.prefill_attention_s(pairs, prefill_ctx_tokens + prefill_tokens)
        gpu_s = busy_s + self._allreduce_s(tokens) + self._layers_overhead_s
        extra_s = self._prefill_pair_s * pairs
        decode_attn_s = self._decode_s_per_ctx * decode_ctx_tokens
        busy_s += extra_s + decode_attn_s
        time_s = (whole_iteration_s(self.params, self._host_floor_s, gpu_s, decode_batch + 1, prefill=True)
                  + extra_s + decode_attn_s)
        return IterationCost(time_s=time_s, busy_s=busy_s)

    # --- pieces -------------------------------------------------------------------------------------

    def _decode_coeffs(self, batch: int) -> tuple[float, float, float]:
        cached = self._decode_cache.get(batch)
        if cached is None:
            if batch < 0:
                raise ValueError(f"decode batch must be >= 0, got {batch}")
            if batch == 0:
                # An empty iteration still pays the scheduler's overhead.
                cached = (self.params.iteration_overhead_s, 0.0, self._decode_s_per_ctx)
            else:
                busy_s = self._linear_s(batch, batch)
                gpu_s = busy_s + self._allreduce_s(batch) + self._layers_overhead_s
                fixed_s = whole_iteration_s(self.params, self._host_floor_s, gpu_s, batch, prefill=False)
                cached = (fixed_s, busy_s, self._decode_s_per_ctx)
            self._decode_cache[batch] = cached
        return cached

    def _linear_s(self, tokens: int, logit_tokens: int) -> float:
        """The busy operators that scale with new tokens: weight-bearing GEMMs (each at max(compute,
        memory)), the LM head, and the elementwise kernels when the params price them."""
        return (self._gemm_s(tokens) + self.lm_head_s(logit_tokens)
                + self._elementwise_s_per_token * tokens)

    def _gemm_s(self, tokens: int) -> float:
        """QKV/O projections and MLP over `tokens` new tokens, each at max(compute, memory)."""
        s_flop, s_byte, bpp = self._s_per_flop, self._s_per_byte, self._bpp
        attn_proj = max(2 * self._attn_proj_params * tokens * s_flop, self._attn_proj_params * bpp * s_byte)
        return attn_proj + self._mlp.seconds(tokens, s_flop, s_byte)

    def _allreduce_s(self, tokens: int) -> float:
        if not self._allreduce_calls:
            return 0.0
        per_call = self.params.allreduce_latency_s + self._allreduce_s_per_token * tokens
        return self._allreduce_calls * per_call


def whole_iteration_s(params: RooflineParams, host_floor_s: float, gpu_s: float, sequences: int, *,
                      prefill: bool) -> float:
    """An iteration's time from the GPU time of its forward pass (kernels and all-reduces, without the
    decode attention over the KV context, which the caller adds): the host floor overlaps it, and the
    serial host work (per-iteration and per-sequence overhead, and the prefill's) follows.

    Example: host floor 40 ms, GPU 11 ms, 4 ms overhead, 8 sequences at 0.25 ms -> 40 + 4 + 2 = 46 ms.
    """
    serial_s = params.iteration_overhead_s + params.sequence_overhead_s * sequences
    if prefill:
        serial_s += params.prefill_overhead_s
    return max(gpu_s, host_floor_s) + serial_s


def weights_fit(model: ModelSpec, sku: Sku, tp: int, gpu_memory_utilization: float = 1.0) -> bool:
    """True when the model's weights fit in `gpu_memory_utilization` of `tp` GPUs' memory."""
    return model.weight_bytes < gpu_memory_utilization * tp * sku.gpu_memory_gb * 1e9
