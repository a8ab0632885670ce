"""Per-instance capacity from the performance model: the request rate one instance sustains while
meeting a TBT objective.

With a decode batch of B sequences of mean context C, one step takes s(B) = fixed(B) + per_ctx(B)·B·C.
The largest B with s(B) <= the TBT budget gives B/s(B) output tokens per second. Prefill competes for
the same engine time, so at a request rate r the engine spends r·p seconds per second prefilling
(p = prefill time of one prompt), leaving (1 - r·p) for decode:
    r · n_out = (1 - r·p) · B / s(B)   =>   r = 1 / (n_out·s(B)/B + p).
"""

from __future__ import annotations

from typing import Protocol


class SupportsStepLatency(Protocol):
    def prefill_s(self, tokens: int, ctx_tokens: int) -> float: ...

    def decode_step_coeffs(self, batch: int) -> tuple[float, float]: ...


def sustainable_rps(latency: SupportsStepLatency, tbt_budget_s: float, mean_prompt_tokens: float,
                    mean_output_tokens: float, max_batch: int = 256, kv_token_capacity: int | None = None) -> float:
    """Requests/s one instance sustains at the TBT budget (see the module docstring)."""
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
    prefill = latency.prefill_s(max(1, round(mean_prompt_tokens)), 0)
    return 1.0 / (mean_output_tokens * best_step / best_batch + prefill)


def _batch_grid(max_batch: int) -> list[int]:
    grid, b = [], 1
    while b < max_batch:
        grid.append(b)
        b = b + 1 if b < 8 else int(b * 1.25)
    grid.append(max_batch)
    return grid
