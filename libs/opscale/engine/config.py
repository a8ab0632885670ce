"""Configuration of the simulated engine: the vLLM scheduler knobs that shape its behaviour."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EngineConfig(BaseModel):
    """vLLM-like scheduler limits. Names follow vLLM's engine arguments where one exists."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_num_seqs: int = Field(256, ge=1, description="Most sequences running (admitted) at once.")
    max_batched_tokens: int = Field(
        8192, ge=1, description="Token budget of one iteration: decode tokens plus prefill chunks "
                                "(chunked prefill: a longer prompt takes several iterations).")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Fraction of GPU memory for weights plus KV cache.")
    block_size: int = Field(16, ge=1, description="Tokens per KV-cache block.")
    max_run_steps: int | None = Field(
        None, ge=1, description="Most decode steps advanced as one event; None: unbounded. The live "
                                "runtime sets 1 so every token is reported as it is produced.")
    emit_tokens: bool = Field(
        True, description="Report `Tokens` outputs. They cost one object per running sequence per run; "
                          "simulations that only need first-token and finish times turn them off.")
    max_model_len: int | None = Field(
        None, ge=1, description="Longest prompt + output accepted, tokens; None: the model's max_context.")
    report_window_s: float = Field(
        10.0, gt=0, description="Window of the tokens_per_s and busy_frac figures in reports, seconds.")

    @model_validator(mode="after")
    def _budget_covers_decodes(self) -> Self:
        # As in vLLM: every running sequence must be able to decode in one iteration.
        if self.max_batched_tokens < self.max_num_seqs:
            raise ValueError(f"max_batched_tokens ({self.max_batched_tokens}) must be >= max_num_seqs "
                             f"({self.max_num_seqs})")
        return self
