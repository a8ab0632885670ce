"""Requests, their tiers and their outcomes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TierSpec:
    """A service tier: its latency objectives and how it is prioritised.

    `deadline_s` bounds end-to-end latency for latency-insensitive work (None: interactive, judged on
    TTFT and TBT only). A lower `priority` is served first.
    """

    name: str
    ttft_slo_s: float
    tbt_slo_s: float
    deadline_s: float | None = None
    priority: int = 0

    def __post_init__(self) -> None:
        for label, value in (("ttft_slo_s", self.ttft_slo_s), ("tbt_slo_s", self.tbt_slo_s)):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"tier {self.name!r}: {label} must be a positive number, got {value!r}")


# Request and RequestOutcome are made once per request, several million times in a long simulation:
# they are not `frozen` because a frozen dataclass's __init__ costs three times as much. Treat them as
# immutable all the same (cores share them; `dataclasses.replace` makes a changed copy); they stay
# hashable by value.
@dataclass(slots=True, unsafe_hash=True)
class Request:
    """One inference request as it arrives at the control plane.

    `output_tokens` is the number of tokens the request will generate (known to traces and the
    simulator; a live request's `max_tokens` is its upper bound). `prefix_hashes` identify reusable
    KV-cache blocks of the prompt, when the trace provides them. `tenant` is the id of the API key that
    sent it (opscale.routing.tenants; never the secret), "" when the router asks for no key.
    """

    request_id: str
    model: str
    tier: str
    region: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_hashes: tuple[int, ...] = field(default=())
    tenant: str = ""

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1:
            raise ValueError(f"request {self.request_id}: prompt_tokens must be >= 1, got {self.prompt_tokens}")
        if self.output_tokens < 1:
            raise ValueError(f"request {self.request_id}: output_tokens must be >= 1, got {self.output_tokens}")
        if not math.isfinite(self.arrival_s) or self.arrival_s < 0:
            raise ValueError(f"request {self.request_id}: arrival_s must be >= 0, got {self.arrival_s}")

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


@dataclass(slots=True, unsafe_hash=True)
class RequestOutcome:
    """What happened to a request: the record the router publishes and the aggregator windows.

    Times are absolute seconds on the runtime's clock. `first_token_s` and `finish_s` are None for a
    request that was rejected or failed before producing them.
    """

    request_id: str
    model: str
    tier: str
    region: str
    served_region: str
    instance_id: str
    arrival_s: float
    first_token_s: float | None
    finish_s: float | None
    prompt_tokens: int
    output_tokens: int
    status: str = "ok"  # ok | rejected | failed | cancelled
    # A disaggregated request: the instance that ran its prefill; `instance_id` is the decode instance
    # that streamed its tokens. "" for a request served whole by one instance.
    prefill_instance_id: str = ""
    tenant: str = ""  # the API key id the request came with (Request.tenant)

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float | None:
        return None if self.finish_s is None else self.finish_s - self.arrival_s

    @property
    def tbt_s(self) -> float | None:
        """Mean time between output tokens (TPOT) of this request; None with fewer than 2 tokens."""
        if self.first_token_s is None or self.finish_s is None or self.output_tokens < 2:
            return None
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)

    def meets(self, tier: TierSpec) -> bool:
        """True when the request completed within every objective of its tier."""
        if self.status != "ok" or self.ttft_s is None or self.e2e_s is None:
            return False
        if tier.deadline_s is not None:
            return self.e2e_s <= tier.deadline_s
        tbt = self.tbt_s
        return self.ttft_s <= tier.ttft_slo_s and (tbt is None or tbt <= tier.tbt_slo_s)
