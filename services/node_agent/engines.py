"""The node-agent's simulated engines, paced in real time.

Each instance is a SimEngine (the very engine the simulator runs) driven by one asyncio task that sleeps
until the engine's next iteration ends on the wall clock, advances it, and hands each request's tokens to
its stream. The engines run with `max_run_steps=1`, so every decode step is its own event and tokens
stream one by one, as from a real engine. A request whose client goes away is cancelled in the engine.
Each request enters the engine with the tier and origin region the router gave it (the node-agent's own
region for a direct client), and the engine server's span names them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from opentelemetry import trace

from opscale.engine import Finished, FirstToken, SimEngine, Tokens
from opscale.engine.outputs import EngineReport
from opscale.engine.sim import EngineNotAcceptingError, RequestTooLargeError
from opscale.model import InstanceSpec, Request
from opscale.runtime.clock import Clock

from opscale_services.node_agent.engine_http import (
    EngineRequest,
    InstanceNotAccepting,
    RequestTooLarge,
    UnknownInstance,
)

log = logging.getLogger(__name__)

EngineFactory = Callable[[InstanceSpec], SimEngine]
_END = object()


@dataclass(slots=True)
class _Running:
    spec: InstanceSpec
    engine: SimEngine
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    streams: dict[str, asyncio.Queue[object]] = field(default_factory=dict)
    produced: dict[str, int] = field(default_factory=dict)


class RealtimeEngines:
    """Implements the engine server's EngineHost and the agent shell's start/drain/stop/report."""

    def __init__(self, clock: Clock, factory: EngineFactory, region: str,
                 is_accepting: Callable[[str], bool]) -> None:
        self.clock = clock
        self.factory = factory
        self.region = region
        self.is_accepting = is_accepting
        self._engines: dict[str, _Running] = {}
        self._last_s = 0.0

    def _now(self) -> float:
        # The engine refuses time going backwards; a wall-clock step back must not break it.
        self._last_s = max(self._last_s, self.clock.now_s())
        return self._last_s

    # -- lifecycle (driven by the node-agent core's actions) -----------------------------------

    def start(self, spec: InstanceSpec) -> None:
        if spec.instance_id in self._engines:
            return
        running = _Running(spec, self.factory(spec))
        running.task = asyncio.create_task(self._drive(running), name=f"engine-{spec.instance_id}")
        self._engines[spec.instance_id] = running

    def drain(self, instance_id: str) -> None:
        running = self._engines.get(instance_id)
        if running is not None:
            running.engine.drain()

    async def stop(self, instance_id: str) -> None:
        running = self._engines.pop(instance_id, None)
        if running is None:
            return
        if running.task is not None:
            running.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running.task
        unfinished = running.engine.stop(self._now())
        for request in unfinished:
            queue = running.streams.get(request.request_id)
            if queue is not None:
                queue.put_nowait(InstanceNotAccepting(f"instance {instance_id} stopped"))

    async def close(self) -> None:
        for instance_id in list(self._engines):
            await self.stop(instance_id)

    def reports(self) -> list[EngineReport]:
        now = self._now()
        return [r.engine.report(now) for r in self._engines.values()]

    # -- EngineHost ----------------------------------------------------------------------------

    async def generate(self, instance_id: str, request: EngineRequest) -> AsyncIterator[int]:
        running = self._engines.get(instance_id)
        if running is None:
            raise UnknownInstance(f"no instance {instance_id!r} on this node")
        if not self.is_accepting(instance_id):
            raise InstanceNotAccepting(f"instance {instance_id!r} is not accepting requests")
        request_id = request.request_id
        submitted = Request(request_id, running.spec.model, request.tier, request.region or self.region,
                            self._now(), max(1, request.prompt_tokens), max(1, request.max_tokens))
        # the engine server's span (the caller's context) says what the engine was given
        trace.get_current_span().set_attributes({
            "opscale.request_id": request_id, "opscale.tier": submitted.tier, "opscale.region": submitted.region,
            "opscale.prompt_tokens": submitted.prompt_tokens, "opscale.instance_id": instance_id})
        queue: asyncio.Queue[object] = asyncio.Queue()
        try:
            running.engine.submit(submitted, submitted.arrival_s)
        except EngineNotAcceptingError as exc:
            raise InstanceNotAccepting(str(exc)) from None
        except RequestTooLargeError as exc:
            raise RequestTooLarge(str(exc)) from None
        running.streams[request_id] = queue
        running.produced[request_id] = 0
        running.wake.set()
        finished = False
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    finished = True
                    return
                if isinstance(item, Exception):
                    raise item
                assert isinstance(item, int)
                yield item
        finally:
            running.streams.pop(request_id, None)
            running.produced.pop(request_id, None)
            if not finished and instance_id in self._engines:
                running.engine.cancel(request_id, self._now())
                running.wake.set()

    # -- the driver ----------------------------------------------------------------------------

    async def _drive(self, running: _Running) -> None:
        engine = running.engine
        while True:
            next_s = engine.next_event_s()
            timeout = None if next_s is None else max(0.0, next_s - self.clock.now_s())
            try:
                await asyncio.wait_for(running.wake.wait(), timeout)
            except TimeoutError:
                pass
            running.wake.clear()
            try:
                outputs = engine.advance(self._now())
            except Exception:  # the engine is pure; an error here is a bug worth a loud log, not a dead agent
                log.exception("engine %s failed to advance", running.spec.instance_id)
                await asyncio.sleep(0.1)
                continue
            for out in outputs:
                queue = running.streams.get(out.request_id)
                if queue is None:
                    continue
                if isinstance(out, FirstToken):
                    running.produced[out.request_id] = 1
                    queue.put_nowait(1)
                elif isinstance(out, Tokens):
                    running.produced[out.request_id] += out.count
                    queue.put_nowait(running.produced[out.request_id])
                elif isinstance(out, Finished):
                    if running.produced.get(out.request_id, 0) < out.output_tokens:
                        queue.put_nowait(out.output_tokens)
                    queue.put_nowait(_END)
