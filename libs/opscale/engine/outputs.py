"""What an engine reports: per request as it runs (first tokens, token counts, completions,
preemptions, and the hand-off of a prefilled request from a prefill instance to a decode instance), and
its load as a whole (`EngineReport`, read by the node-agent before each tick).

Every output is stamped with the simulated time at which it happened. `FirstToken` carries the first
output token and `Tokens` the later ones, so for every finished request
1 + sum(Tokens.count) == Finished.output_tokens (when the engine emits Tokens).

Prefill/decode disaggregation: a prefill instance emits `PrefillDone` and nothing else for a request;
the decode instance that receives its KV emits `FirstToken`, `Tokens` and `Finished`, with the same
identity above. The first token, sampled by the prefill instance, travels with the KV and reaches the
client from the decode instance once the KV has landed (as with Dynamo or llm-d, where the client
streams from the decode worker), so the KV transfer counts towards TTFT.

Outputs are values: nothing changes one once the engine has made it. They are slotted dataclasses but
not declared frozen, because a frozen dataclass sets each field through object.__setattr__ and is about
four times as slow to build; an engine makes one or more for every request, and a large simulation
makes millions. For the same reason each writes out its __init__ (the dataclass keeps it and still
makes __eq__ and __repr__): the compiled build (opscale._native_modules) compiles a written __init__,
but leaves the one a dataclass generates at import time interpreted, slower there than in plain Python.
`EngineReport`, made once per instance and tick, is an ordinary frozen dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class FirstToken:
    """The request's prefill completed and produced its first output token at `at_s`."""

    request_id: str
    at_s: float

    def __init__(self, request_id: str, at_s: float) -> None:
        self.request_id = request_id
        self.at_s = at_s


@dataclass(slots=True)
class Tokens:
    """`count` further output tokens produced during one run of iterations, stamped at the run's end."""

    request_id: str
    count: int
    at_s: float

    def __init__(self, request_id: str, count: int, at_s: float) -> None:
        self.request_id = request_id
        self.count = count
        self.at_s = at_s


@dataclass(slots=True)
class Finished:
    """The request produced its last token at `at_s`."""

    request_id: str
    at_s: float
    first_token_s: float
    output_tokens: int
    prompt_tokens: int

    def __init__(self, request_id: str, at_s: float, first_token_s: float, output_tokens: int,
                 prompt_tokens: int) -> None:
        self.request_id = request_id
        self.at_s = at_s
        self.first_token_s = first_token_s
        self.output_tokens = output_tokens
        self.prompt_tokens = prompt_tokens


@dataclass(slots=True)
class Preempted:
    """The KV cache ran out: the request lost its cache and waits to be prefilled again (recompute)."""

    request_id: str
    at_s: float

    def __init__(self, request_id: str, at_s: float) -> None:
        self.request_id = request_id
        self.at_s = at_s


@dataclass(slots=True)
class PrefillDone:
    """A prefill instance finished the request's prefill at `at_s` and handed it off: its KV
    (`kv_bytes`, the prompt's KV) is to be sent to a decode instance, and it left this instance.

    `first_token_s` is when the prefill's last iteration sampled the first output token; the client sees
    that token only when the decode instance has the KV (see the module docstring). The KV is released
    here at hand-off: the transfer is taken to stream out layer by layer as the prefill runs (Splitwise,
    Mooncake), so its duration is paid on the decode side, not held on this instance.
    """

    request_id: str
    at_s: float
    kv_bytes: int
    first_token_s: float

    def __init__(self, request_id: str, at_s: float, kv_bytes: int, first_token_s: float) -> None:
        self.request_id = request_id
        self.at_s = at_s
        self.kv_bytes = kv_bytes
        self.first_token_s = first_token_s


EngineOutput = FirstToken | Tokens | Finished | Preempted | PrefillDone


@dataclass(frozen=True, slots=True)
class EngineReport:
    """An engine backend's load, as the node-agent's shell reads it before each tick (the simulated
    engine's `report`, or a real server's metrics). Rates and fractions are over the engine's report
    window (`EngineConfig.report_window_s` for the simulated one).

    Two utilisation figures, not to be confused (opscale.engine.usage): `busy_frac` is GPU utilisation
    as nvidia-smi defines it, the fraction of time a kernel runs; `sm_activity` is the compute used
    over the peak, FLOPs over (time x peak FLOP/s of the instance's GPUs). A busy decode engine has
    busy_frac near 1 and a low sm_activity. Token rates: `tokens_per_s` counts every output token,
    `decode_tps` those of decode steps (not the token a prefill samples), `prefill_tps` the prompt
    tokens prefilled (prefix-cache hits included) and `prefill_missed_tps` those actually computed.
    """

    instance_id: str
    queued: int
    running: int
    outstanding_tokens: int
    kv_used_frac: float
    tokens_per_s: float
    busy_frac: float
    power_w: float
    idle: bool
    sm_activity: float
    decode_tps: float
    prefill_tps: float
    prefill_missed_tps: float
    kv_capacity_tokens: int = 0  # tokens its KV cache holds (0: unknown)
