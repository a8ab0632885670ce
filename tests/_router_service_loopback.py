"""Serving the router's API or an aiohttp app on a free loopback port, a bus that only records, and the
live router around a core, for the router service tests (unit and integration).

It lives in tests/ so both tiers import it by name: pytest puts this directory on sys.path when it
loads tests/conftest.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry

from opscale.model import InstanceStatus
from opscale.runtime.clock import WallClock
from opscale.runtime.live.host import CoreHost
from opscale.runtime.live.openai_http import make_runner
from opscale.runtime.live.server_limits import ServerLimits
from opscale.services.events import AgentHeartbeat
from opscale.services.router import RouterCore

from opscale_services.router.api import RouterApi, build_router_app, serve_router
from opscale_services.router.auth import TenantGate
from opscale_services.router.backend import LiveRouterBackend
from opscale_services.router.metrics import RouterMetrics
from opscale_services.router.records import RecordBatcher
from opscale_services.router.upstream import UpstreamClient, UpstreamConfig


@asynccontextmanager
async def serve(app: web.Application | RouterApi, *, limits: ServerLimits | None = None) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port: the router's API on its own server (with `limits`), any other
    app (a fake engine) on aiohttp, where a client disconnect cancels its handler; yields the base URL."""
    # a short shutdown timeout keeps a failing test from waiting a minute for a stuck handler
    if isinstance(app, RouterApi):
        server = await serve_router(app, limits, shutdown_timeout_s=1.0)
        try:
            host, port = server.addresses[0][:2]
            yield f"http://{host}:{port}"
        finally:
            await server.close()
        return
    runner = make_runner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


class RecordingBus:
    """What the router publishes (request records, load reports), kept in memory."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Any]] = []

    async def publish(self, subject: str, event: Any, msg_id: str | None = None) -> None:
        self.published.append((subject, event))

    def records(self) -> list[Any]:
        return [r for _, event in self.published if isinstance(event, tuple) for r in event]


@dataclass
class LiveRouter:
    url: str
    core: RouterCore
    host: CoreHost
    bus: RecordingBus
    records: RecordBatcher


@asynccontextmanager
async def live_router(core: RouterCore, statuses: Sequence[InstanceStatus],
                      *, gate: TenantGate | None = None, metrics: RouterMetrics | None = None,
                      tracer_provider: TracerProvider | None = None, spans: bool = True
                      ) -> AsyncIterator[LiveRouter]:
    """The live router (HTTP API, back end, pooled upstream client) around `core`, serving on loopback,
    with `statuses` registered through one heartbeat (none when empty) and a bus that only records;
    with `gate`, behind API keys; `metrics`, when given, counts its requests; `tracer_provider` and
    `spans` as LiveRouterBackend takes them."""
    async with AsyncExitStack() as stack:
        bus = RecordingBus()
        clock = WallClock()
        upstream = await stack.enter_async_context(UpstreamClient(UpstreamConfig(connect_timeout_s=2.0)))
        records = RecordBatcher(bus, CollectorRegistry())  # type: ignore[arg-type]
        backend = LiveRouterBackend(core, clock, upstream, records, "local", tracer_provider,
                                    on_finished=gate.settle if gate is not None else None, metrics=metrics,
                                    spans=spans)
        host = CoreHost(core, bus, None, clock, on_action=backend.on_action)  # type: ignore[arg-type]
        backend.host = host
        if statuses:
            await host.handle(AgentHeartbeat("a1", "local", "H100-80GB", 8, "a1:1", 1, clock.now_s(), tuple(statuses)))
        url = await stack.enter_async_context(serve(build_router_app(backend, gate=gate, metrics=metrics)))
        yield LiveRouter(url, core, host, bus, records)


def sse(raw: bytes) -> list[Any]:
    """A streamed response body's data events: each JSON payload decoded, and "[DONE]"."""
    out: list[Any] = []
    for event in raw.decode().split("\n\n"):
        if event.startswith("data: "):
            data = event[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out
