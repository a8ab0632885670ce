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
    enable_prefix_caching: bool = Field(
        False, description="Keep the KV of prompt prefixes after their requests leave (an LRU within the "
                           "free KV cache) and skip prefilling the cached leading blocks of later prompts.")
    prefix_block_tokens: int = Field(
        512, ge=1, description="Tokens covered by one entry of a request's `prefix_hashes` (Mooncake's "
                               "hash_ids granularity). Must be a multiple of block_size when prefix "
                               "caching is on.")
    kv_events: bool = Field(
        False, description="Publish KV-cache events (blocks stored and removed, chained prefix hashes; vLLM's "
                           "--kv-events-config): the router's global prefix index follows each instance's cache "
                           "from them (routing_policy kv_aware). Needs enable_prefix_caching.")
    host_kv_cache_gb: float = Field(
        0.0, ge=0, description="Host-memory KV tier per instance, GB (LMCache / Mooncake Store style): prefix "
                               "blocks evicted from the GPU are kept there and loaded back over PCIe instead of "
                               "recomputed; 0: off. Needs enable_prefix_caching.")
    host_kv_load_gbps: float | None = Field(
        None, gt=0, description="Host-to-GPU bandwidth for loading host-tier blocks back, GB/s per instance; "
                                "None: opscale.perf.transfer.PCIE_P2P_GBPS (PCIe Gen4 x16).")

    @model_validator(mode="after")
    def _budget_covers_decodes(self) -> Self:
        # As in vLLM: every running sequence must be able to decode in one iteration.
        if self.max_batched_tokens < self.max_num_seqs:
            raise ValueError(f"max_batched_tokens ({self.max_batched_tokens}) must be >= max_num_seqs "
                             f"({self.max_num_seqs})")
        # A cached prefix block must be made of whole KV blocks, or sharing it would split a block.
        if self.enable_prefix_caching and self.prefix_block_tokens % self.block_size:
            raise ValueError(f"prefix_block_tokens ({self.prefix_block_tokens}) must be a multiple of "
                             f"block_size ({self.block_size}) when enable_prefix_caching is on")
        if self.host_kv_cache_gb > 0 and not self.enable_prefix_caching:
            raise ValueError(f"host_kv_cache_gb ({self.host_kv_cache_gb:g}) needs enable_prefix_caching: the host "
                             f"tier keeps the prefix blocks the GPU cache evicts")
        if self.kv_events and not self.enable_prefix_caching:
            raise ValueError("kv_events (True) needs enable_prefix_caching: without a prefix cache there are no "
                             "cached blocks to report")
        return self
