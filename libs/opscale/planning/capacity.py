"""Per-instance capacity from the performance model: the request rate one instance sustains while
meeting a TBT objective.

With a decode batch of B sequences of mean context C, one step takes s(B) = fixed(B) + per_ctx(B)·B·C.
The largest B with s(B) <= the TBT budget gives B/s(B) output tokens per second. Prefill competes for
the same engine time, so at a request rate r the engine spends r·p seconds per second prefilling
(p = prefill time of one prompt), leaving (1 - r·p) for decode:
    r · n_out = (1 - r·p) · B / s(B)   =>   r = 1 / (n_out·s(B)/B + p).
A disaggregated deployment's instances do one phase each: a prefill instance sustains r = 1 / p (its
signal is prompt tokens/s: r · n_prompt), a decode instance r = B / (n_out·s(B)) (output tokens/s).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from opscale.model import ModelSpec, Role, Sku
from opscale.perf import Catalog, RooflineLatencyModel


class SupportsStepLatency(Protocol):
    def prefill_s(self, tokens: int, ctx_tokens: int) -> float: ...

    def decode_step_coeffs(self, batch: int) -> tuple[float, float]: ...


def sustainable_rps(latency: SupportsStepLatency, tbt_budget_s: float, mean_prompt_tokens: float,
                    mean_output_tokens: float, max_batch: int = 256, kv_token_capacity: int | None = None,
                   role: Role = Role.UNIFIED) -> float:
    """Requests/s one instance of `role` sustains at the TBT budget (see the module docstring)."""
    prefill = latency.prefill_s(max(1, round(mean_prompt_tokens)), 0)
    if role is Role.PREFILL:
        return 1.0 / prefill
    mean_ctx = mean_prompt_tokens + mean_output_tokens / 2
    best_batch, best_step = 1, None
    for batch in _batch_grid(max_batch):
        if kv_token_capacity is not None and batch * (mean_prompt_tokens + mean_output_tokens) > kv_token_capacity:
            break
        fixed, per_ctx = latency.decode_step_coeffs(batch)
        step = fixed + per_ctx * batch * mean_ctx
        if step > tbt_budget_s and best_step is not None:
            break
        best_batch, best_step = batch, step
    assert best_step is not None
    if role is Role.DECODE:
        return best_batch / (mean_output_tokens * best_step)
    return 1.0 / (mean_output_tokens * best_step / best_batch + prefill)


def _batch_grid(max_batch: int) -> list[int]:
    grid, b = [], 1
    while b < max_batch:
        grid.append(b)
        b = b + 1 if b < 8 else int(b * 1.25)
    grid.append(max_batch)
    return grid


class CapacityEstimator:
    """`CapacityFn` backed by the performance model: builds each (model, SKU, TP) latency model once and
    caches rates by token lengths rounded to two significant digits. (Coarser buckets, such as powers of
    two, make the estimate jump when the observed mean length drifts across a bucket edge, and a
    scaler fed a jumping capacity oscillates.)"""

    def __init__(self, catalog: Catalog, tbt_budget_s: float, *, max_batch: int = 256,
                 gpu_memory_utilization: float = 0.9,
                 latency_factory: Callable[[ModelSpec, Sku, int], SupportsStepLatency] | None = None) -> None:
        self.catalog = catalog
        self.tbt_budget_s = tbt_budget_s
        self.max_batch = max_batch
        self.gpu_memory_utilization = gpu_memory_utilization
        self.latency_factory = latency_factory or RooflineLatencyModel
        self._cache: dict[tuple[str, str, int, int, int, Role], float] = {}

    def __call__(self, model: str, sku: str, tp: int, prompt_tokens: float, output_tokens: float,
                 role: Role = Role.UNIFIED) -> float:
        key = (model, sku, tp, _bucket(prompt_tokens), _bucket(output_tokens), role)
        rate = self._cache.get(key)
        if rate is None:
            spec, gpu = self.catalog.model(model), self.catalog.sku(sku)
            kv_bytes = gpu.gpu_memory_gb * 1e9 * tp * self.gpu_memory_utilization - spec.weight_bytes
            if kv_bytes <= 0:
                raise ValueError(f"{model} does not fit on {tp} x {sku}: weights need "
                                 f"{spec.weight_bytes / 1e9:.0f} GB")
            rate = sustainable_rps(self.latency_factory(spec, gpu, tp), self.tbt_budget_s, key[3], key[4],
                                   self.max_batch, int(kv_bytes // spec.kv_bytes_per_token), role)
            self._cache[key] = rate
        return rate


def _bucket(tokens: float) -> int:
    """Two significant digits: 1437 -> 1400, 87.6 -> 88, 3 -> 3."""
    value = max(1.0, tokens)
    return int(round(value, 1 - int(math.floor(math.log10(value)))))
