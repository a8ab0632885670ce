"""Fit of the whole-iteration terms of `RooflineParams` to measured whole iterations.

Kernel-level calibration (`opscale.perf.calibration`, vidur's operator profiles) prices what the GPU
does. Measured whole iterations (Splitwise's perf_model.csv: a prefill of P tokens at batch 1, and a
decode step of B sequences) also hold what the host does, which no operator profile sees. Given the
kernel-calibrated latency model, `fit_iteration` fits the four whole-iteration terms of
`latency.whole_iteration_s`:
    time = max(gpu_s, layers * host_layer_s) + overhead + sequences * sequence_overhead_s
           + [prefill] (prefill_overhead_s + layers * pairs * prefill_pair_s) + decode attention,
where gpu_s is the kernel-calibrated model's own time of the iteration without its serial overhead
and decode attention. The host floor enters through the max, so it is searched on a grid; the other
three are linear and solved by non-negative least squares at each grid point, on the relative error,
each phase (prefill, decode) weighted alike. `leave_one_tp_out` refits without each TP degree and
predicts it: the errors the bench reports, on points the fit never saw.

`parse_splitwise_csv` turns the text of Splitwise's perf_model.csv into samples.

Pure arithmetic over values: no I/O (callers read the file), no clock.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from opscale.model import ModelSpec
from opscale.perf.latency import LatencyModel, RooflineParams

if TYPE_CHECKING:
    import numpy as np

Phase = Literal["prefill", "decode"]
PHASES: tuple[Phase, ...] = ("prefill", "decode")
# Host floor per layer searched, seconds: 0 (GPU-bound) to 2 ms per layer (a slow host, eager mode).
HOST_LAYER_GRID_S: tuple[float, ...] = tuple(i * 5e-6 for i in range(401))
# A latency model of the fitted model and SKU at a TP degree, with the given params.
ModelAt = Callable[[int, RooflineParams], LatencyModel]


@dataclass(frozen=True, slots=True)
class IterationSample:
    """One measured iteration: a prefill of `prompt_tokens` (one sequence, nothing cached) or a decode
    step of `batch` sequences whose KV contexts total `ctx_tokens`; `measured_s` its mean time."""

    phase: Phase
    tp: int
    prompt_tokens: int
    batch: int
    ctx_tokens: int
    measured_s: float

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")
        if self.measured_s <= 0 or self.batch < 1 or self.tp < 1:
            raise ValueError(f"measured_s, batch and tp must be positive, got {self}")


@dataclass(frozen=True, slots=True)
class IterationFit:
    """The fitted whole-iteration terms (on top of the kernel calibration `params` started from) and
    the mean absolute percentage error per phase over the fitted samples."""

    params: RooflineParams
    points: int
    mape: dict[str, float]


@dataclass(frozen=True, slots=True)
class _Columns:
    gpu_s: np.ndarray  # the kernel-calibrated GPU time, without serial overhead or decode attention
    fixed_s: np.ndarray  # what is added unchanged: iteration overhead and decode attention
    linear: np.ndarray  # (n, 3): sequences, prefill indicator, layers * pairs
    measured_s: np.ndarray
    weight: np.ndarray


def kernel_params(params: RooflineParams) -> RooflineParams:
    """`params` without its whole-iteration terms: the kernel calibration alone."""
    return params.model_copy(update={"host_layer_s": 0.0, "sequence_overhead_s": 0.0,
                                     "prefill_overhead_s": 0.0, "prefill_pair_s": 0.0})


def _columns(samples: Sequence[IterationSample], model: ModelSpec, model_at: ModelAt,
             params: RooflineParams) -> _Columns:
    import numpy as np

    kernel = kernel_params(params)
    overhead = kernel.iteration_overhead_s
    gpu, fixed, linear, measured, weight = [], [], [], [], []
    counts = {phase: sum(1 for s in samples if s.phase == phase) for phase in PHASES}
    models: dict[int, LatencyModel] = {}
    for s in samples:
        lm = models.get(s.tp)
        if lm is None:
            lm = models[s.tp] = model_at(s.tp, kernel)
        if s.phase == "prefill":
            pairs = s.prompt_tokens * (s.prompt_tokens + 1) // 2
            gpu.append(lm.prefill_s(s.prompt_tokens) - overhead)
            fixed.append(overhead)
            linear.append((1.0, 1.0, float(model.layers * pairs)))
        else:
            fixed_s, per_ctx_s = lm.decode_step_coeffs(s.batch)
            gpu.append(fixed_s - overhead)
            fixed.append(overhead + per_ctx_s * s.ctx_tokens)
            linear.append((float(s.batch), 0.0, 0.0))
        measured.append(s.measured_s)
        weight.append(1.0 / counts[s.phase])
    return _Columns(np.array(gpu), np.array(fixed), np.array(linear), np.array(measured), np.array(weight))


def fit_iteration(samples: Sequence[IterationSample], model: ModelSpec, model_at: ModelAt,
                  params: RooflineParams) -> IterationFit:
    """Fit host_layer_s, sequence_overhead_s, prefill_overhead_s and prefill_pair_s to `samples` of
    `model`, keeping the kernel calibration of `params` (its whole-iteration terms are ignored).
    `model_at(tp, params)` builds the latency model whose GPU time the terms complete.
    Raises ValueError without samples."""
    import numpy as np

    if not samples:
        raise ValueError("no whole-iteration samples to fit")
    c = _columns(samples, model, model_at, params)
    sqrt_w = np.sqrt(c.weight)
    design = c.linear / c.measured_s[:, None] * sqrt_w[:, None]
    best: tuple[float, float, np.ndarray] = (math.inf, 0.0, np.zeros(3))
    for host in HOST_LAYER_GRID_S:
        rest = (c.measured_s - np.maximum(c.gpu_s, host * model.layers) - c.fixed_s) / c.measured_s * sqrt_w
        coef, residual = _nnls(design, rest)
        if residual < best[0]:
            best = (float(residual), host, coef)
    _, host, coef = best
    fitted = params.model_copy(update={
        "host_layer_s": round(host, 8), "sequence_overhead_s": round(float(coef[0]), 7),
        "prefill_overhead_s": round(float(coef[1]), 6), "prefill_pair_s": float(f"{coef[2]:.4g}")})
    return IterationFit(params=fitted, points=len(samples), mape=iteration_mape(samples, model_at, fitted))


def _nnls(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """min |a x - b| over x >= 0 for a few columns: the optimum is the unconstrained least-squares
    solution on its own support, so every support is tried (2^k small solves; k is 3 here)."""
    import itertools

    import numpy as np

    k = a.shape[1]
    best_x, best_r = np.zeros(k), float(np.linalg.norm(b))
    for size in range(1, k + 1):
        for support in itertools.combinations(range(k), size):
            cols = list(support)
            sol, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
            if np.any(sol < 0):
                continue
            x = np.zeros(k)
            x[cols] = sol
            r = float(np.linalg.norm(a @ x - b))
            if r < best_r:
                best_x, best_r = x, r
    return best_x, best_r


def iteration_mape(samples: Sequence[IterationSample], model_at: ModelAt,
                   params: RooflineParams) -> dict[str, float]:
    """Mean absolute percentage error per phase of the latency models `model_at(tp, params)`."""
    errors: dict[str, list[float]] = {phase: [] for phase in PHASES}
    for s, predicted in zip(samples, predict_iterations(samples, model_at, params), strict=True):
        errors[s.phase].append(abs(predicted - s.measured_s) / s.measured_s)
    return {phase: sum(e) / len(e) for phase, e in errors.items() if e}


def predict_iterations(samples: Sequence[IterationSample], model_at: ModelAt,
                       params: RooflineParams) -> list[float]:
    """Each sample's time as the latency model `model_at(tp, params)` prices it."""
    models: dict[int, LatencyModel] = {}
    out: list[float] = []
    for s in samples:
        lm = models.get(s.tp)
        if lm is None:
            lm = models[s.tp] = model_at(s.tp, params)
        if s.phase == "prefill":
            out.append(lm.prefill_s(s.prompt_tokens))
        else:
            fixed_s, per_ctx_s = lm.decode_step_coeffs(s.batch)
            out.append(fixed_s + per_ctx_s * s.ctx_tokens)
    return out


def leave_one_tp_out(samples: Sequence[IterationSample], model: ModelSpec, model_at: ModelAt,
                     params: RooflineParams) -> dict[int, tuple[RooflineParams, list[IterationSample]]]:
    """For each TP degree in `samples`: the params fitted on the other degrees, and the held-out samples
    of that degree (to be judged with them). Needs at least two degrees."""
    degrees = sorted({s.tp for s in samples})
    if len(degrees) < 2:
        raise ValueError(f"leave-one-TP-out needs two TP degrees or more, got {degrees}")
    out: dict[int, tuple[RooflineParams, list[IterationSample]]] = {}
    for held in degrees:
        train = [s for s in samples if s.tp != held]
        out[held] = (fit_iteration(train, model, model_at, params).params, [s for s in samples if s.tp == held])
    return out


def parse_splitwise_csv(text: str, skus: Mapping[str, str], models: Mapping[str, str],
                        ) -> dict[tuple[str, str], list[IterationSample]]:
    """Splitwise's perf_model.csv (columns model, hardware, prompt_size, batch_size, token_size,
    prompt_time, token_time in ms, tensor_parallel) as samples per (SKU, model), renamed by `skus` and
    `models` (rows of other hardware or models are skipped), each the mean over its repeats: every decode
    step, with the context per sequence at prompt + output/2 (its mean over the generation), and the
    prefills at batch 1 (a batched prompt_time is several prefills, not one iteration)."""
    groups: dict[tuple[str, str, int, int, int, int], list[tuple[float, float]]] = defaultdict(list)
    for row in csv.DictReader(io.StringIO(text)):
        if row["model"] in models and row["hardware"] in skus:
            key = (skus[row["hardware"]], models[row["model"]], int(row["tensor_parallel"]),
                   int(row["prompt_size"]), int(row["batch_size"]), int(row["token_size"]))
            groups[key].append((float(row["prompt_time"]) / 1e3, float(row["token_time"]) / 1e3))
    out: dict[tuple[str, str], list[IterationSample]] = defaultdict(list)
    for (sku, model, tp, prompt, batch, output), times in sorted(groups.items()):
        samples = out[(sku, model)]
        ctx = round(batch * (prompt + output / 2))
        samples.append(IterationSample("decode", tp, prompt, batch, ctx, sum(t[1] for t in times) / len(times)))
        if batch == 1:
            samples.append(IterationSample("prefill", tp, prompt, 1, 0, sum(t[0] for t in times) / len(times)))
    return dict(out)
