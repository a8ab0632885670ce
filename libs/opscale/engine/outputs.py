"""What a simulated engine reports as it runs: first tokens, token counts, completions, preemptions.

Every output is stamped with the simulated time at which it happened. `FirstToken` carries the first
output token and `Tokens` the later ones, so for every finished request
1 + sum(Tokens.count) == Finished.output_tokens (when the engine emits Tokens).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FirstToken:
    """The request's prefill completed and produced its first output token at `at_s`."""

    request_id: str
    at_s: float


@dataclass(frozen=True, slots=True)
class Tokens:
    """`count` further output tokens produced during one run of iterations, stamped at the run's end."""

    request_id: str
    count: int
    at_s: float


@dataclass(frozen=True, slots=True)
class Finished:
    """The request produced its last token at `at_s`."""

    request_id: str
    at_s: float
    first_token_s: float
    output_tokens: int
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class Preempted:
    """The KV cache ran out: the request lost its cache and waits to be prefilled again (recompute)."""

    request_id: str
    at_s: float


EngineOutput = FirstToken | Tokens | Finished | Preempted
