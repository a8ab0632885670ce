"""Drive simulated engines through a list of requests on a virtual clock.

The smallest shells there are: arrivals are submitted at their arrival times and the engines are
advanced to each of their own events in between. `replay` drives one engine; `replay_disaggregated`
a prefill engine and a decode engine joined by a KV transfer, which is what the simulation runtime
does for each P/D pair of a fleet. Used by tests, calibration and benchmarks.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

from opscale.engine.outputs import EngineOutput, PrefillDone
from opscale.engine.sim import SimEngine
from opscale.model import Request, Role


def replay(engine: SimEngine, requests: Iterable[Request],
           transfer_s: Callable[[Request], float] | None = None) -> list[EngineOutput]:
    """Submit `requests` (sorted by arrival) at their arrival times and run until the engine is idle.

    On a decode engine each request arrives prefilled, its KV `transfer_s(request)` seconds away
    (0 when `transfer_s` is None). Returns every output in time order. An event of the engine and an
    arrival at the same instant are handled event first; the engine's results do not depend on that order.
    """
    prefilled = engine.role is Role.DECODE
    outputs: list[EngineOutput] = []
    for request in requests:
        while (event_s := engine.next_event_s()) is not None and event_s <= request.arrival_s:
            outputs += engine.advance(event_s)
        if prefilled:
            delay_s = transfer_s(request) if transfer_s is not None else 0.0
            engine.submit_prefilled(request, request.arrival_s, request.arrival_s + delay_s)
        else:
            engine.submit(request, request.arrival_s)
    while (event_s := engine.next_event_s()) is not None:
        outputs += engine.advance(event_s)
    return outputs


def replay_disaggregated(prefill: SimEngine, decode: SimEngine, requests: Iterable[Request],
                         transfer_s: Callable[[Request, int], float]) -> list[EngineOutput]:
    """Serve `requests` (sorted by arrival) with prefill/decode disaggregation.

    Each request is submitted to `prefill` at its arrival; when its `PrefillDone` comes out, it is
    submitted to `decode` at that instant with its KV landing `transfer_s(request, kv_bytes)` later.
    Returns both engines' outputs in time order: `PrefillDone` from the prefill engine, `FirstToken`,
    `Tokens`, `Preempted` and `Finished` from the decode engine (whose first token includes the transfer).
    At one instant, engine events come before hand-offs and hand-offs before arrivals.
    """
    if prefill.role is not Role.PREFILL or decode.role is not Role.DECODE:
        raise ValueError(f"replay_disaggregated needs a prefill and a decode engine, got {prefill.role} "
                         f"({prefill.instance_id}) and {decode.role} ({decode.instance_id})")
    pending = sorted(requests, key=lambda r: r.arrival_s)
    by_id = {r.request_id: r for r in pending}
    outputs: list[EngineOutput] = []
    handoffs: list[tuple[float, int, PrefillDone]] = []  # (at_s, order, output): a heap
    next_arrival = 0
    order = 0
    while True:
        times = [t for t in (prefill.next_event_s(), decode.next_event_s()) if t is not None]
        if handoffs:
            times.append(handoffs[0][0])
        if next_arrival < len(pending):
            times.append(pending[next_arrival].arrival_s)
        if not times:
            return outputs
        now_s = min(times)
        if prefill.next_event_s() == now_s:
            for out in prefill.advance(now_s):
                outputs.append(out)
                if isinstance(out, PrefillDone):
                    heapq.heappush(handoffs, (out.at_s, order, out))
                    order += 1
        elif decode.next_event_s() == now_s:
            outputs += decode.advance(now_s)
        elif handoffs and handoffs[0][0] == now_s:
            done = heapq.heappop(handoffs)[2]
            request = by_id[done.request_id]
            decode.submit_prefilled(request, now_s, now_s + transfer_s(request, done.kv_bytes))
        else:
            prefill.submit(pending[next_arrival], now_s)
            next_arrival += 1
