"""Calibration of the roofline fallback against measured operator profiles, and the shipped fit.

`fit_roofline` fits four `RooflineParams` to the per-layer time of vidur's profiled operators (the
sum of `profiles.LAYER_OPS` at each token count and TP degree): compute efficiency c and bandwidth
efficiency b of the GEMMs, the elementwise kernels' bandwidth efficiency e and a per-layer fixed time
L, so that per layer
    time = sum over {QKV/O, MLP} of max(flops / (c * peak), bytes / (b * bandwidth))
           + elementwise bytes / (e * bandwidth) + L,
with the work from `latency.dense_layer_work`, the same accounting the roofline prices. The loss is
the squared relative error, each doubling of the token count weighted alike within each (profile, TP)
curve: vidur's grids hold 64 points per doubling from 512 tokens up and 1 to 8 below 64, yet decode
batches (small counts) matter as much as prefill chunks. (c, b) are searched on a coarse-then-fine grid; (1/e, L) enter linearly and are solved in
closed form (with e <= 1, L >= 0) at each grid point. `fit_allreduce` fits the all-reduce latency and
bus bandwidth to a network profile by weighted linear least squares.

`CALIBRATED_PARAMS` are the results for the shipped catalogue, written here so that opscale runs
without the profiles; `calibrated_params(sku)` looks them up, falling back to the generic fit.
`python bench/perf_fidelity.py` recomputes them from the data and reports how far they are.

Pure arithmetic over values: no I/O (profiles are read by `opscale.perf.profiles`), no clock.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opscale.model import ModelSpec, Sku
from opscale.perf.latency import RooflineParams, dense_layer_work
from opscale.perf.profiles import NetworkProfile, OperatorProfile, ProfileSet

if TYPE_CHECKING:
    import numpy as np

# numpy is imported inside the fitting functions: fitting is offline work, and looking up the shipped
# constants (what every simulation does) should not pay for importing it.

GENERIC = "generic"


@dataclass(frozen=True, slots=True)
class GpuRoof:
    """The two roofs of a GPU: dense BF16/FP16 tensor FLOP/s (TFLOP/s) and memory bandwidth (GB/s)."""

    name: str
    peak_tflops: float
    mem_bandwidth_gbps: float

    @classmethod
    def of(cls, sku: Sku) -> GpuRoof:
        return cls(sku.name, sku.peak_tflops, sku.mem_bandwidth_gbps)


# Profiled GPUs the catalogue does not sell, needed to fit on their profiles (and to hold them out).
# NVIDIA A40 datasheet: 48 GB GDDR6, 696 GB/s; BF16/FP16 tensor 149.7 TFLOPS dense (299.4 with sparsity).
REFERENCE_ROOFS: Mapping[str, GpuRoof] = {"a40": GpuRoof("a40", 149.7, 696.0)}


def roofs_for(skus: Iterable[Sku]) -> dict[str, GpuRoof]:
    """Roofs by case-folded name: the given SKUs (e.g. a catalogue's) plus `REFERENCE_ROOFS`."""
    roofs = dict(REFERENCE_ROOFS)
    roofs.update({sku.name.casefold(): GpuRoof.of(sku) for sku in skus})
    return roofs


@dataclass(frozen=True, slots=True)
class RooflineFit:
    """Fitted params and how well they fit: `mape` is the plain mean absolute percentage error of the
    per-layer time over the `points` fitted; `skipped` names profiles the fit could not use."""

    params: RooflineParams
    skus: tuple[str, ...]
    profiles: int
    points: int
    mape: float
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AllReduceFit:
    """time = latency_s + 2(n-1)/n * bytes / (interconnect_gbps * 1e9), fitted over the TP degrees
    measured on one node; `mape` over the fitted points."""

    allreduce_latency_s: float
    interconnect_gbps: float
    points: int
    mape: float


# --- the roofline fit ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Samples:
    """Columns of the fit, one entry per (profile, tp, tokens) point; times in seconds at c = b = e = 1."""

    gemm_compute_s: np.ndarray  # (groups, n)
    gemm_memory_s: np.ndarray  # (groups, n)
    elementwise_s: np.ndarray
    measured_s: np.ndarray
    weight: np.ndarray


def layer_model(profile: OperatorProfile) -> ModelSpec | None:
    """A one-layer `ModelSpec` of the profile's shape, or None when the shape is unknown or the MLP is
    not gated (the roofline's MLP is the gated, three-matrix one)."""
    shape = profile.shape
    if shape is None or not shape.gated_mlp or shape.heads % shape.kv_heads or shape.hidden % shape.heads:
        return None
    return ModelSpec(name=f"{profile.model} (one layer)", layers=1, hidden=shape.hidden, heads=shape.heads,
                     kv_heads=shape.kv_heads, intermediate=shape.intermediate, vocab=shape.vocab)


def _skip_reason(profile: OperatorProfile, roof: GpuRoof | None) -> str:
    if roof is None:
        return "no peak FLOP/s and bandwidth known for the SKU"
    if profile.shape is None:
        return "no model shape columns"
    if not profile.shape.gated_mlp:
        return "ungated MLP"
    return "heads do not divide hidden or kv_heads"


def layer_time_s(profile_model: ModelSpec, roof: GpuRoof, tp: int, tokens: int, params: RooflineParams) -> float:
    """The calibrated roofline's time of the layers of `profile_model` (as the fit prices them)."""
    work = dense_layer_work(profile_model, tp, tokens)
    flops_per_s = roof.peak_tflops * 1e12 * tp
    bytes_per_s = roof.mem_bandwidth_gbps * 1e9 * tp
    gemm = sum(max(f / (flops_per_s * params.compute_efficiency), b / (bytes_per_s * params.bandwidth_efficiency))
               for f, b in zip(work.gemm_flops, work.gemm_bytes, strict=True))
    elementwise = 0.0
    if params.elementwise_efficiency is not None:
        elementwise = work.elementwise_bytes / (bytes_per_s * params.elementwise_efficiency)
    return gemm + elementwise + params.layer_overhead_s * profile_model.layers


def fit_roofline(
    profiles: Sequence[OperatorProfile], roofs: Mapping[str, GpuRoof], *,
    base: RooflineParams | None = None,
) -> RooflineFit:
    """Fit compute, bandwidth and elementwise efficiency and the per-layer time to `profiles`.

    `roofs` maps case-folded SKU names to their roofs; a profile whose SKU has no roof, or whose shape
    `layer_model` cannot express, is skipped. Fields the fit does not touch (overhead, all-reduce)
    come from `base`.
    Raises ValueError when nothing is left to fit.
    """
    import numpy as np

    samples, used, skipped = _collect(profiles, roofs)
    if samples is None:
        raise ValueError(f"no profile to fit (skipped: {', '.join(skipped) or 'none given'})")
    c, b, inv_e, layer_s, _loss = _search(samples)
    fitted = (base or RooflineParams()).model_copy(update={
        "compute_efficiency": round(c, 4), "bandwidth_efficiency": round(b, 4),
        "elementwise_efficiency": round(1.0 / inv_e, 4), "layer_overhead_s": round(layer_s, 8),
    })
    predicted = _predict(samples, fitted.compute_efficiency, fitted.bandwidth_efficiency,
                         1.0 / (fitted.elementwise_efficiency or 1.0), fitted.layer_overhead_s)
    mape = float(np.mean(np.abs(predicted - samples.measured_s) / samples.measured_s))
    return RooflineFit(params=fitted, skus=tuple(dict.fromkeys(p.sku for p in used)), profiles=len(used),
                       points=int(samples.measured_s.size), mape=mape, skipped=tuple(skipped))


def _collect(
    profiles: Sequence[OperatorProfile], roofs: Mapping[str, GpuRoof],
) -> tuple[_Samples | None, list[OperatorProfile], list[str]]:
    import numpy as np

    compute: list[list[float]] = []
    memory: list[list[float]] = []
    elementwise: list[float] = []
    measured: list[float] = []
    weight: list[float] = []
    used: list[OperatorProfile] = []
    skipped: list[str] = []
    for profile in profiles:
        roof = roofs.get(profile.sku.casefold())
        model = layer_model(profile)
        if roof is None or model is None:
            skipped.append(f"{profile.sku}/{profile.model}: {_skip_reason(profile, roof)}")
            continue
        used.append(profile)
        for tp in profile.tp_degrees:
            grid = profile.tokens(tp)
            flops_per_s = roof.peak_tflops * 1e12 * tp
            bytes_per_s = roof.mem_bandwidth_gbps * 1e9 * tp
            octaves: dict[int, int] = defaultdict(int)
            for tokens in grid:
                octaves[int(math.log2(tokens))] += 1
            for tokens in grid:
                y = profile.layer_s(tokens, tp)
                if y <= 0:
                    continue
                work = dense_layer_work(model, tp, tokens)
                compute.append([f / flops_per_s for f in work.gemm_flops])
                memory.append([m / bytes_per_s for m in work.gemm_bytes])
                elementwise.append(work.elementwise_bytes / bytes_per_s)
                measured.append(y)
                weight.append(1.0 / octaves[int(math.log2(tokens))])
    if not measured:
        return None, used, skipped
    return _Samples(
        gemm_compute_s=np.array(compute).T, gemm_memory_s=np.array(memory).T,
        elementwise_s=np.array(elementwise), measured_s=np.array(measured),
        weight=np.array(weight) / sum(weight)), used, skipped


def _predict(s: _Samples, c: float, b: float, inv_e: float, layer_s: float) -> np.ndarray:
    import numpy as np

    gemm = np.maximum(s.gemm_compute_s / c, s.gemm_memory_s / b).sum(axis=0)
    return gemm + s.elementwise_s * inv_e + layer_s


def _search(s: _Samples) -> tuple[float, float, float, float, float]:
    """(c, b, 1/e, L, loss) minimising the weighted squared relative error."""
    import numpy as np

    y, w = s.measured_s, s.weight
    # The linear part in relative terms: residual/y = inv_e * u + L * v.
    u, v = s.elementwise_s / y, 1.0 / y

    def solve(c: float, b: float) -> tuple[float, float, float]:
        r = (y - np.maximum(s.gemm_compute_s / c, s.gemm_memory_s / b).sum(axis=0)) / y
        return _bounded_lsq2(r, u, v, w)

    best = (math.inf, 1.0, 1.0, 1.0, 0.0)
    coarse = np.linspace(0.05, 1.0, 20)
    for c in coarse:
        for b in coarse:
            inv_e, layer_s, loss = solve(float(c), float(b))
            if loss < best[0]:
                best = (loss, float(c), float(b), inv_e, layer_s)
    _, c0, b0 = best[:3]
    for c in np.linspace(max(0.01, c0 - 0.05), min(1.0, c0 + 0.05), 21):
        for b in np.linspace(max(0.01, b0 - 0.05), min(1.0, b0 + 0.05), 21):
            inv_e, layer_s, loss = solve(float(c), float(b))
            if loss < best[0]:
                best = (loss, float(c), float(b), inv_e, layer_s)
    loss, c, b, inv_e, layer_s = best
    return c, b, inv_e, layer_s, loss


def _bounded_lsq2(r: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> tuple[float, float, float]:
    """Minimise sum w (r - x u - z v)^2 over x >= 1 (x = 1/e: e <= 1), z >= 0; returns (x, z, loss).

    The unconstrained optimum solves 2x2 normal equations; when it breaks a bound the optimum lies on
    that bound, where the other variable has a one-dimensional closed form.
    """
    wuu, wvv, wuv = float(w @ (u * u)), float(w @ (v * v)), float(w @ (u * v))
    wru, wrv = float(w @ (r * u)), float(w @ (r * v))

    def loss(x: float, z: float) -> float:
        e = r - x * u - z * v
        return float(w @ (e * e))

    det = wuu * wvv - wuv * wuv
    if det > 0:
        x = (wru * wvv - wrv * wuv) / det
        z = (wrv * wuu - wru * wuv) / det
        if x >= 1.0 and z >= 0.0:
            return x, z, loss(x, z)
    candidates = [(1.0, max(0.0, (wrv - wuv) / wvv) if wvv > 0 else 0.0)]
    candidates.append((max(1.0, wru / wuu) if wuu > 0 else 1.0, 0.0))
    scored = [(loss(x, z), x, z) for x, z in candidates]
    best_loss, x, z = min(scored)
    return x, z, best_loss


# --- the all-reduce fit -------------------------------------------------------------------------------

def fit_allreduce(network: NetworkProfile, collective: str = "all_reduce") -> AllReduceFit | None:
    """Fit latency and bus bandwidth of a ring all-reduce to the single-node measurements of
    `collective` in `network` (every worker count with devices_per_node == num_workers), minimising
    relative error. None when the profile has none."""
    import numpy as np

    rows: list[tuple[float, float, float]] = []  # (1, ring bytes, time)
    for (name, workers, devices), curve in network.curves.items():
        if name != collective or devices != workers or workers < 2:
            continue
        ring = 2 * (workers - 1) / workers
        rows.extend((1.0, ring * size, t) for size, t in zip(curve.xs, curve.times_s, strict=True) if t > 0)
    if not rows:
        return None
    a = np.array(rows)
    t = a[:, 2]
    design = a[:, :2] / t[:, None]
    (latency_s, s_per_byte), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    if s_per_byte <= 0 or latency_s < 0:
        return None
    predicted = a[:, :2] @ np.array([latency_s, s_per_byte])
    return AllReduceFit(allreduce_latency_s=float(latency_s), interconnect_gbps=float(1.0 / s_per_byte / 1e9),
                        points=int(t.size), mape=float(np.mean(np.abs(predicted - t) / t)))


# --- calibrating a whole profile set -----------------------------------------------------------------

def calibrate(profiles: ProfileSet, roofs: Mapping[str, GpuRoof],
              base: RooflineParams | None = None) -> dict[str, RooflineFit]:
    """A fit per profiled SKU (its own compute profiles, and its network profile's all-reduce) and a
    `GENERIC` fit over every SKU's compute profiles, for SKUs without profiles. Keys are SKU names as
    the profiles spell them, plus GENERIC."""
    base = base or RooflineParams()
    fits: dict[str, RooflineFit] = {}
    latencies: list[float] = []
    for sku in dict.fromkeys(p.sku for p in profiles.compute):
        own = [p for p in profiles.compute if p.sku == sku]
        if roofs.get(sku.casefold()) is None:
            continue
        network = profiles.network_for(sku)
        allreduce = fit_allreduce(network) if network is not None else None
        sku_base = base
        if allreduce is not None:
            latencies.append(allreduce.allreduce_latency_s)
            sku_base = base.model_copy(update={
                "allreduce_latency_s": round(allreduce.allreduce_latency_s, 7),
                "interconnect_gbps": round(allreduce.interconnect_gbps, 1)})
        fits[sku] = fit_roofline(own, roofs, base=sku_base)
    # The generic all-reduce keeps each SKU's default link bandwidth (it depends on the link, which an
    # unprofiled SKU does not share) but takes the measured per-call latency.
    generic_base = base
    if latencies:
        generic_base = base.model_copy(update={"allreduce_latency_s": round(statistics.median(latencies), 7)})
    fits[GENERIC] = fit_roofline(profiles.compute, roofs, base=generic_base)
    return fits


# --- the shipped fit ----------------------------------------------------------------------------------

# Obtained with `python bench/perf_fidelity.py` (it runs `calibrate` and prints the result) from vidur's
# operator profiles, microsoft/vidur data/profiling at commit 7d47513363ec447a741ac5e47241580b47724fbf
# (shared/data/vidur_profiling): A100-80GB from compute/a100/* (Llama-2-7B/70B, Llama-3-8B/70B,
# CodeLlama-34B, InternLM-20B, Qwen-72B; phi-2 skipped: ungated MLP) and network/a100_dgx/all_reduce.csv;
# H100-80GB from compute/h100/* and network/h100_dgx/all_reduce.csv; generic from the compute profiles of
# a100, h100 and a40 together (a40 with the datasheet roofs of REFERENCE_ROOFS), with the median of the
# two measured all-reduce latencies and each SKU's default link bandwidth. The per-iteration
# overhead is not fitted (operator profiles time kernels, not the scheduler) and keeps its default.
CALIBRATED_PARAMS: Mapping[str, RooflineParams] = {
    "a100-80gb": RooflineParams(
        compute_efficiency=0.715, bandwidth_efficiency=0.765, elementwise_efficiency=0.4071,
        layer_overhead_s=3.983e-05, allreduce_latency_s=3.36e-05, interconnect_gbps=153.9),
    "h100-80gb": RooflineParams(
        compute_efficiency=0.715, bandwidth_efficiency=0.85, elementwise_efficiency=0.3808,
        layer_overhead_s=3.211e-05, allreduce_latency_s=2.26e-05, interconnect_gbps=323.8),
    GENERIC: RooflineParams(
        compute_efficiency=0.725, bandwidth_efficiency=0.78, elementwise_efficiency=0.4145,
        layer_overhead_s=3.29e-05, allreduce_latency_s=2.81e-05),
}

# The whole-iteration terms (host_layer_s, sequence_overhead_s, prefill_overhead_s, prefill_pair_s;
# `latency.whole_iteration_s`) are what operator profiles cannot see. They are fitted by
# `iteration_fit.fit_iteration` over the kernel calibration above to Splitwise's measured Llama-2-70B
# iterations (Mutinifni/splitwise-sim data/perf_model.csv at commit
# 8f99e7dc9b407f4ce2488d03dd44c0b8b946dab0, shared/data/splitwise_perf_model: prefill at batch 1,
# decode at batch 1-64, TP 2/4/8), each SKU on its own rows; generic is their mean. Judged with one TP
# degree held out, they bring the roofline's error on those iterations from up to 49% to at most
# ~10% (bench/perf_fidelity.py, "splitwise"). Physically, Splitwise measured an internal vLLM branch
# of late 2023 (vllm-project/vllm#2472), which launched kernels eagerly: CUDA graphs came to vLLM
# with vllm-project/vllm#1926 (Dec 2023), and vllm-project/vllm#914 reports the eager decode of
# LLaMA-7B host-bound (30 vs 69 tokens/s with CUDA graphs). So the fitted host floor, 0.51 ms per
# layer on the A100 hosts and 0.33 ms on the H100 hosts (~41 and ~26 ms for 80 layers; Splitwise's
# decode step stays at ~44 and ~30 ms from TP4 to TP8), is an eager engine's; an engine replaying
# CUDA graphs has a far lower one. Per sequence, ~0.25 ms of sampling and output processing; per
# prefill, ~16 ms of prompt preparation; and ~1.4e-10 s per (query, key) pair and layer of prompt
# attention that does not shrink with TP (its mechanism is not identified: the sharded roofline
# prices Splitwise's TP2 prompts well and its TP4/8 long prompts 14-40% low, and this term is the one
# that predicts each TP degree from the other two).
#
# They describe the engine (its host and software stack), not the GPU, so they are kept apart from
# the kernel calibration and priced only on request (`calibrated_params(sku, whole_iteration=True)`):
# turning them on for every simulation halves a small model's decode throughput at large batches
# (per-sequence host time) and moves most experiment figures.
WHOLE_ITERATION_TERMS: Mapping[str, Mapping[str, float]] = {
    "a100-80gb": {"host_layer_s": 0.00051, "sequence_overhead_s": 0.000276, "prefill_overhead_s": 0.015968,
                  "prefill_pair_s": 1.325e-10},
    "h100-80gb": {"host_layer_s": 0.000325, "sequence_overhead_s": 0.0002382, "prefill_overhead_s": 0.016155,
                  "prefill_pair_s": 1.447e-10},
    GENERIC: {"host_layer_s": 0.0004175, "sequence_overhead_s": 0.0002571, "prefill_overhead_s": 0.0160615,
              "prefill_pair_s": 1.386e-10},
}


def calibrated_params(sku: str, *, whole_iteration: bool = False) -> RooflineParams:
    """The shipped calibration of `sku` (any case), or the generic one for a SKU without profiles; with
    `whole_iteration`, plus the whole-iteration terms fitted to Splitwise (`WHOLE_ITERATION_TERMS`)."""
    params = CALIBRATED_PARAMS.get(sku.casefold(), CALIBRATED_PARAMS[GENERIC])
    if whole_iteration:
        params = params.model_copy(update=WHOLE_ITERATION_TERMS.get(sku.casefold(), WHOLE_ITERATION_TERMS[GENERIC]))
    return params
