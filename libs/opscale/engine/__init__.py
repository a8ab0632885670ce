"""The simulated inference engine: continuous batching over a paged KV cache with chunked prefill,
recompute preemption, prefix caching and prefill/decode roles, advanced in closed-form runs of decode
steps (see opscale.engine.sim)."""

from opscale.engine.config import EngineConfig
from opscale.engine.errors import EngineNotAcceptingError, RequestTooLargeError, WrongRoleError
from opscale.engine.outputs import EngineOutput, Finished, FirstToken, Preempted, PrefillDone, Tokens
from opscale.engine.prefix_cache import PrefixCache
from opscale.engine.replay import replay, replay_disaggregated
from opscale.engine.sim import EngineState, SimEngine

__all__ = [
    "EngineConfig", "EngineNotAcceptingError", "EngineOutput", "EngineState", "Finished", "FirstToken",
    "Preempted", "PrefillDone", "PrefixCache", "RequestTooLargeError", "SimEngine", "Tokens", "WrongRoleError",
    "replay", "replay_disaggregated",
]
