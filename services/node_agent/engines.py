"""The node-agent's simulated engines, paced in real time.

Each instance is a SimEngine (the very engine the simulator runs) driven by one asyncio task that sleeps
until the engine's next iteration ends on the wall clock, advances it, and hands each request's tokens to
its stream. The engines run with `max_run_steps=1`, so every decode step is its own event and tokens
stream one by one, as from a real engine. A request whose client goes away is cancelled in the engine.
Each request enters the engine with the tier and origin region the router gave it (the node-agent's own
region for a direct client), and the engine server's span names them.

Disaggregated instances (opscale.openai.kv_transfer): a prefill engine runs a prefill step and, at its
PrefillDone, answers where the KV is (`SimKvHandoff`: this host, its region and switches, the instance's
SKU and TP, the KV's size). A decode engine takes a decode step with those parameters: it pulls the KV
as a KV connector would, so the transfer starts when the request arrives and lasts what
opscale.perf.transfer prices for the switch tier the two hosts share (`handoff_s`, the simulator's own
pricing); the request's first token leaves when the KV has landed, so the transfer is part of its TTFT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from opscale.engine import Finished, FirstToken, PrefillDone, SimEngine, Tokens
from opscale.engine.errors import WrongRoleError
from opscale.engine.kv_events import as_block_event
from opscale.engine.outputs import EngineReport
from opscale.engine.sim import EngineNotAcceptingError, RequestTooLargeError
from opscale.model import InstanceSpec, OperatorReplicas, Request, Role
from opscale.openai.kv_transfer import SimKvHandoff
from opscale.perf.transfer import Placement, TransferParams, handoff_s
from opscale.runtime.clock import Clock

from opscale_services.node_agent.engine_http import (
    BadKvTransfer,
    EngineRequest,
    InstanceNotAccepting,
    RequestTooLarge,
    UnknownInstance,
    WrongRole,
)
from opscale_services.node_agent.kv_forward import KvEventsOf

log = logging.getLogger(__name__)

EngineFactory = Callable[[InstanceSpec], SimEngine]
_END = object()
# Why an instance refuses a request its role does not serve, by the instance's role.
_ROLE_HINT = {
    Role.UNIFIED: "it is a unified instance: it serves whole requests, not a prefill or decode step",
    Role.PREFILL: "it is a prefill instance: it serves the prefill step of a disaggregated request "
                  "(kv_transfer_params.do_remote_decode); send requests through the router",
    Role.DECODE: "it is a decode instance: it serves the decode step of a disaggregated request "
                 "(the kv_transfer_params a prefill instance answered with); send requests through the router",
}


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

    def __init__(self, clock: Clock, factory: EngineFactory, placement: Placement,
                 is_accepting: Callable[[str], bool], transfer: TransferParams | None = None) -> None:
        self.clock = clock
        self.factory = factory
        self.placement = placement  # this host (`host` is the agent id): where a KV hand-off starts or lands
        self.region = placement.region
        self.transfer = transfer if transfer is not None else TransferParams()
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

    def set_operator_replicas(self, instance_id: str, serving: tuple[OperatorReplicas, ...]) -> None:
        """The engine's next iterations run with these operator replicas beside it (in place)."""
        running = self._engines.get(instance_id)
        if running is not None:
            running.engine.set_operator_replicas(serving)
            running.wake.set()  # re-plan the next iteration at the new speed

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

    def take_kv_events(self) -> list[KvEventsOf]:
        """Each engine's KV events since the last call (none unless EngineConfig.kv_events is on)."""
        out: list[KvEventsOf] = []
        for instance_id, r in self._engines.items():
            if not r.engine.config.kv_events:
                continue
            events = r.engine.take_kv_events()
            if events:
                out.append((instance_id, r.spec.model, [as_block_event(e) for e in events]))
        return out

    # -- EngineHost ----------------------------------------------------------------------------

    async def generate(self, instance_id: str, request: EngineRequest) -> AsyncIterator[int]:
        running, queue = self._submit(instance_id, request, prefill_step=False)
        request_id = request.request_id
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
            self._forget(instance_id, running, request_id, finished)

    async def prefill(self, instance_id: str, request: EngineRequest) -> dict[str, Any]:
        """The prefill step of a disaggregated request: its KV hand-off parameters once the prefill is done."""
        running, queue = self._submit(instance_id, request, prefill_step=True)
        done = False
        try:
            item = await queue.get()
            while not isinstance(item, PrefillDone):
                if isinstance(item, Exception):
                    raise item
                item = await queue.get()  # a prefill engine streams nothing before its hand-off
            done = True
            spec = running.spec
            p = self.placement
            return SimKvHandoff(instance_id, p.host, p.region, p.switch, p.s1, p.s2, spec.sku, spec.tp,
                                item.kv_bytes).params()
        finally:
            self._forget(instance_id, running, request.request_id, done)

    def _submit(self, instance_id: str, request: EngineRequest,
                prefill_step: bool) -> tuple[_Running, asyncio.Queue[object]]:
        """Enter `request` into the instance's engine as its role takes it (see the module docstring);
        raises the engine server's exceptions for what the instance refuses."""
        running = self._engines.get(instance_id)
        if running is None:
            raise UnknownInstance(f"no instance {instance_id!r} on this node")
        if not self.is_accepting(instance_id):
            raise InstanceNotAccepting(f"instance {instance_id!r} is not accepting requests")
        role = running.spec.role
        decode_step = request.kv_transfer is not None
        wants = Role.PREFILL if prefill_step else Role.DECODE if decode_step else Role.UNIFIED
        if role is not wants:
            raise WrongRole(_ROLE_HINT[role])
        now = self._now()
        request_id = request.request_id
        submitted = Request(request_id, running.spec.model, request.tier, request.region or self.region,
                            now, max(1, request.prompt_tokens), max(1, request.max_tokens),
                            prefix_hashes=request.prefix_hashes)
        # the engine server's span (the caller's context) says what the engine was given
        span = trace.get_current_span()
        span.set_attributes({
            "opscale.request_id": request_id, "opscale.tier": submitted.tier, "opscale.region": submitted.region,
            "opscale.prompt_tokens": submitted.prompt_tokens, "opscale.instance_id": instance_id})
        try:
            if request.kv_transfer is not None:
                handoff = SimKvHandoff.from_params(request.kv_transfer)
                if not isinstance(handoff, SimKvHandoff):
                    raise BadKvTransfer(handoff)
                source = Placement(handoff.region, handoff.s0, handoff.host, handoff.s1, handoff.s2)
                topology, transfer_s = handoff_s(self.transfer, source, self.placement, handoff.kv_bytes,
                                                 source_sku=handoff.sku, source_tp=handoff.tp,
                                                 dest_tp=running.spec.tp)
                span.set_attributes({"opscale.prefill_instance_id": handoff.engine_id,
                                     "opscale.kv_topology": topology.value, "opscale.kv_transfer_s": transfer_s})
                running.engine.submit_prefilled(submitted, now, now + transfer_s)
            else:
                running.engine.submit(submitted, now)
        except EngineNotAcceptingError as exc:
            raise InstanceNotAccepting(str(exc)) from None
        except RequestTooLargeError as exc:
            raise RequestTooLarge(str(exc)) from None
        except WrongRoleError as exc:  # the checks above make this a bug; still the request's answer, not a crash
            raise WrongRole(str(exc)) from None
        queue: asyncio.Queue[object] = asyncio.Queue()
        running.streams[request_id] = queue
        running.produced[request_id] = 0
        running.wake.set()
        return running, queue

    def _forget(self, instance_id: str, running: _Running, request_id: str, finished: bool) -> None:
        """The request's stream is over: an unfinished one (the client went away) is cancelled in the engine."""
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
                elif isinstance(out, PrefillDone):
                    queue.put_nowait(out)  # the prefill step's answer
