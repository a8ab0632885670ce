"""Drive one simulated engine through a list of requests on a virtual clock.

The smallest shell there is: arrivals are submitted at their arrival times and the engine is advanced
to each of its own events in between. Used by tests, calibration and benchmarks of a single engine;
the simulation runtime does the same for a whole fleet.
"""

from __future__ import annotations

from collections.abc import Iterable

from opscale.engine.outputs import EngineOutput
from opscale.engine.sim import SimEngine
from opscale.model import Request


def replay(engine: SimEngine, requests: Iterable[Request]) -> list[EngineOutput]:
    """Submit `requests` (sorted by arrival) at their arrival times and run until the engine is idle.

    Returns every output in time order. An event of the engine and an arrival at the same instant are
    handled event first; the engine's results do not depend on that order.
    """
    outputs: list[EngineOutput] = []
    for request in requests:
        while (event_s := engine.next_event_s()) is not None and event_s <= request.arrival_s:
            outputs += engine.advance(event_s)
        engine.submit(request, request.arrival_s)
    while (event_s := engine.next_event_s()) is not None:
        outputs += engine.advance(event_s)
    return outputs
