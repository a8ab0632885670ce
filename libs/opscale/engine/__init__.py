"""The simulated inference engine: continuous batching over a paged KV cache with chunked prefill and
recompute preemption, advanced in closed-form runs of decode steps (see opscale.engine.sim)."""

from opscale.engine.config import EngineConfig
from opscale.engine.outputs import EngineOutput, Finished, FirstToken, Preempted, Tokens
from opscale.engine.replay import replay
from opscale.engine.sim import EngineNotAcceptingError, EngineState, RequestTooLargeError, SimEngine

__all__ = [
    "EngineConfig", "EngineNotAcceptingError", "EngineOutput", "EngineState", "Finished", "FirstToken",
    "Preempted", "RequestTooLargeError", "SimEngine", "Tokens", "replay",
]
