"""Iteration latency from measured operator profiles, with the roofline for what was not measured.

`ProfiledLatencyModel` implements the `LatencyModel` protocol (see `opscale.perf.latency`) for one
model, SKU and TP degree:
- the linear and norm operators of every layer and the embedding (vidur's `mlp.csv` ops) come from an
  `OperatorProfile`, interpolated at the iteration's token count;
- attention (absent from the profiles), the LM head and the per-iteration overhead come from a
  `RooflineLatencyModel` of the same model, SKU and TP (normally calibrated: `calibrated_params`);
- the tensor-parallel all-reduces (two per layer, T*hidden*bytes_per_param each) from a
  `NetworkProfile` when it measured this TP degree on one node, else from the roofline;
- the whole-iteration terms (host floor, serial host work, TP-independent prefill attention) from the
  roofline's params, combined as `latency.whole_iteration_s` does for the roofline.
Profiled operators depend only on the number of new tokens, and attention alone on the KV context,
so a decode iteration stays `fixed_s(batch) + per_ctx_token_s * S`, the shape the engine's
closed-form decode runs rely on. Profiled kernel time counts as busy (the GPU runs kernels);
all-reduce and overhead do not.

`latency_model_for` picks the profiled model when a profile covers the configuration and the
calibrated roofline otherwise.

Pure arithmetic: no I/O, no clock.
"""

from __future__ import annotations

from opscale.model import ModelSpec, Sku
from opscale.perf.calibration import calibrated_params
from opscale.perf.latency import (
    IterationCost,
    IterationTime,
    LatencyModel,
    RooflineLatencyModel,
    RooflineParams,
    attn_pairs,
    check_token_counts,
    whole_iteration_s,
)
from opscale.perf.profiles import (
    EMBEDDING_OP,
    GEMM_OPS,
    LAYER_OPS,
    Curve,
    NetworkProfile,
    OperatorProfile,
    ProfileSet,
)

ALL_REDUCE = "all_reduce"
# Token counts an engine sees are bounded by its batch token budget; the cap only bounds memory if a
# caller sweeps far more distinct counts than that.
_CACHE_LIMIT = 1 << 16


class ProfiledLatencyModel(IterationTime):
    """Latency of `model` on `tp` GPUs of `sku` from `profile`, with `fallback` for attention, the LM
    head and overhead (see the module docstring). `network`, when given, prices the all-reduces.

    Raises ValueError when the pieces disagree: a fallback for another model/SKU/TP, a profile of
    another SKU or shape, a profile without this TP degree or without the layer's GEMMs.
    """

    def __init__(self, model: ModelSpec, sku: Sku, tp: int, profile: OperatorProfile,
                 fallback: RooflineLatencyModel, *, network: NetworkProfile | None = None) -> None:
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise ValueError(f"tp must be a positive integer, got {tp!r}")
        if (fallback.model, fallback.sku, fallback.tp) != (model, sku, tp):
            raise ValueError(f"fallback {fallback!r} is not for model {model.name!r} on {sku.name!r} at tp={tp}")
        if profile.sku.casefold() != sku.name.casefold():
            raise ValueError(f"profile {profile.source or profile.model!r} was measured on {profile.sku!r}, "
                             f"not {sku.name!r}")
        _check_shape(profile, model)
        if tp not in profile.curves:
            raise ValueError(f"profile {profile.sku}/{profile.model} has no measurements at tp={tp}; "
                             f"measured tp: {', '.join(map(str, profile.tp_degrees))}")
        ops = profile.curves[tp]
        missing = [op for op in GEMM_OPS if op not in ops]
        if missing:
            raise ValueError(f"profile {profile.sku}/{profile.model} tp={tp} lacks {', '.join(missing)}: "
                             f"a layer cannot be priced without its GEMMs")
        if network is not None and network.sku.casefold() != sku.name.casefold():
            raise ValueError(f"network profile {network.sku}_{network.topology} is not for {sku.name!r}")
        self.model = model
        self.sku = sku
        self.tp = tp
        self.profile = profile
        self.fallback = fallback
        self.params: RooflineParams = fallback.params
        self._layer_curves: tuple[Curve, ...] = tuple(ops[op] for op in LAYER_OPS if op in ops)
        self._embedding: Curve | None = ops.get(EMBEDDING_OP)
        self._allreduce: Curve | None = None
        if tp > 1 and network is not None:
            self._allreduce = network.curves.get((ALL_REDUCE, tp, tp))
        self.network = network if self._allreduce is not None else None
        self._allreduce_calls = 2 * model.layers if tp > 1 else 0
        self._bytes_per_token = model.hidden * model.bytes_per_param
        self._per_ctx_s = fallback.decode_attention_s_per_ctx_token
        self._overhead_s = fallback.params.iteration_overhead_s
        # The whole-iteration terms, as the roofline prices them (`latency.whole_iteration_s`).
        self._host_floor_s = fallback.params.host_layer_s * model.layers
        self._prefill_pair_s = fallback.params.prefill_pair_s * model.layers
        self._ops_cache: dict[int, float] = {}
        self._decode_cache: dict[int, tuple[float, float]] = {}

    def __repr__(self) -> str:
        source = "profiled" if self.network is None else f"profiled, {self.network.topology} network"
        return f"ProfiledLatencyModel({self.model.name!r}, {self.sku.name!r}, tp={self.tp}, {source})"

    # --- pieces -------------------------------------------------------------------------------------

    def operators_s(self, tokens: int) -> float:
        """The profiled operators over `tokens` new tokens: each layer's ops times the layer count, plus
        the embedding. 0 for no tokens."""
        cached = self._ops_cache.get(tokens)
        if cached is None:
            if tokens < 0:
                raise ValueError(f"tokens must be >= 0, got {tokens}")
            layer_s = sum(curve.at(tokens) for curve in self._layer_curves)
            cached = layer_s * self.model.layers
            if self._embedding is not None:
                cached += self._embedding.at(tokens)
            if len(self._ops_cache) >= _CACHE_LIMIT:
                self._ops_cache.clear()
            self._ops_cache[tokens] = cached
        return cached

    def allreduce_s(self, tokens: int) -> float:
        """The iteration's tensor-parallel all-reduces over `tokens` new tokens."""
        if self._allreduce is None:
            return self.fallback.allreduce_s(tokens)
        if tokens <= 0:
            return 0.0
        return self._allreduce_calls * self._allreduce.at(tokens * self._bytes_per_token)

    # --- the protocol -------------------------------------------------------------------------------

    def prefill_s(self, tokens: int, ctx_tokens: int = 0) -> float:
        return self.iteration_cost(tokens, ctx_tokens, 0, 0).time_s

    def decode_step_coeffs(self, batch: int) -> tuple[float, float]:
        fixed_s, _busy_s = self._decode_coeffs(batch)
        return fixed_s, self._per_ctx_s

    def decode_busy_coeffs(self, batch: int) -> tuple[float, float]:
        _fixed_s, busy_s = self._decode_coeffs(batch)
        return busy_s, self._per_ctx_s

    def iteration_cost(
        self, prefill_tokens: int, prefill_ctx_tokens: int, decode_batch: int, decode_ctx_tokens: int,
        *, prefill_attn_pairs: int | None = None,
    ) -> IterationCost:
        check_token_counts(prefill_tokens, prefill_ctx_tokens, decode_batch, decode_ctx_tokens)
        if prefill_tokens == 0:
            # The decode line itself, so a decode-only iteration costs exactly fixed + c*S.
            fixed_s, busy_s = self._decode_coeffs(decode_batch)
            attn_s = self._per_ctx_s * decode_ctx_tokens
            return IterationCost(time_s=fixed_s + attn_s, busy_s=busy_s + attn_s)
        pairs = prefill_attn_pairs
        if pairs is None:
            pairs = attn_pairs(prefill_tokens, prefill_ctx_tokens)
        tokens = prefill_tokens + decode_batch
        # Logits for the decode tokens and the prefill's last token, as the roofline counts them.
        busy_s = self.operators_s(tokens) + self.fallback.lm_head_s(decode_batch + 1)
        busy_s += self.fallback.prefill_attention_s(pairs, prefill_ctx_tokens + prefill_tokens)
        gpu_s = busy_s + self.allreduce_s(tokens)
        extra_s = self._prefill_pair_s * pairs
        decode_attn_s = self._per_ctx_s * decode_ctx_tokens
        busy_s += extra_s + decode_attn_s
        time_s = (whole_iteration_s(self.params, self._host_floor_s, gpu_s, decode_batch + 1, prefill=True)
                  + extra_s + decode_attn_s)
        return IterationCost(time_s=time_s, busy_s=busy_s)

    def _decode_coeffs(self, batch: int) -> tuple[float, float]:
        cached = self._decode_cache.get(batch)
        if cached is None:
            if batch < 0:
                raise ValueError(f"decode batch must be >= 0, got {batch}")
            if batch == 0:
                # An empty iteration still pays the scheduler's overhead.
                cached = (self._overhead_s, 0.0)
            else:
                busy_s = self.operators_s(batch) + self.fallback.lm_head_s(batch)
                fixed_s = whole_iteration_s(self.params, self._host_floor_s, busy_s + self.allreduce_s(batch),
                                            batch, prefill=False)
                cached = (fixed_s, busy_s)
            if len(self._decode_cache) >= _CACHE_LIMIT:
                self._decode_cache.clear()
            self._decode_cache[batch] = cached
        return cached


def _check_shape(profile: OperatorProfile, model: ModelSpec) -> None:
    shape = profile.shape
    if shape is None:
        return
    # The vocabulary is not compared: vidur pads it (Llama-2's 32000 is profiled as 32768).
    pairs = (("n_head", shape.heads, "heads", model.heads), ("n_kv_head", shape.kv_heads, "kv_heads", model.kv_heads),
             ("n_embd", shape.hidden, "hidden", model.hidden),
             ("n_expanded_embd", shape.intermediate, "intermediate", model.intermediate))
    for profiled_name, profiled, model_name, value in pairs:
        if profiled != value:
            raise ValueError(f"profile {profile.source or profile.model!r} was measured with {profiled_name}="
                             f"{profiled}, but model {model.name!r} has {model_name}={value}")


def latency_model_for(model: ModelSpec, sku: Sku, tp: int, *, profiles: ProfileSet | None = None,
                      params: RooflineParams | None = None) -> LatencyModel:
    """The best latency model available: `ProfiledLatencyModel` when `profiles` measured `model` on
    `sku` at `tp` (with the SKU's network profile, if any), else `RooflineLatencyModel`. Either way the
    roofline uses `params`, by default the SKU's shipped calibration (`calibrated_params`)."""
    roofline = RooflineLatencyModel(model, sku, tp, params if params is not None else calibrated_params(sku.name))
    if profiles is None:
        return roofline
    profile = profiles.find(sku.name, model.name)
    if profile is None or tp not in profile.curves:
        return roofline
    return ProfiledLatencyModel(model, sku, tp, profile, roofline, network=profiles.network_for(sku.name))


class LatencyModels:
    """`latency_model_for` built once per (model, SKU, TP) and then shared, so the engines of a run and
    the capacity estimates sizing them ask the same model (as a live node-agent and planner do)."""

    def __init__(self, profiles: ProfileSet | None = None) -> None:
        self.profiles = profiles
        self._models: dict[tuple[str, str, int], LatencyModel] = {}

    def __call__(self, model: ModelSpec, sku: Sku, tp: int) -> LatencyModel:
        key = (model.name, sku.name, tp)
        latency = self._models.get(key)
        if latency is None:
            latency = self._models[key] = latency_model_for(model, sku, tp, profiles=self.profiles)
        return latency
