"""What every live service does the same way: logging, connections, the ops server, the supervised
loops, and a clean shutdown.

`LiveProcess` acquires its resources in order and releases each one on its own (an AsyncExitStack),
so a start-up that fails half-way releases what it had, and a shutdown that fails on one resource still
releases the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from opscale.runtime.clock import WallClock
from opscale.runtime.live.bus import NatsBus
from opscale.runtime.live.credentials import nats_connect_options, redis_connect_options
from opscale.runtime.live.ops_http import OpsAction, OpsServer, start_ops_server
from opscale.runtime.live.redact import redact_url
from opscale.runtime.live.settings import LiveSettings
from opscale.runtime.live.store import RedisStore
from opscale.runtime.live.supervisor import Supervisor, run_until_signalled
from opscale.runtime.live.telemetry import setup_tracing

log = logging.getLogger(__name__)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@dataclass(slots=True)
class LiveProcess:
    """The shared resources of one service process. Use `async with LiveProcess(...) as p:`."""

    service: str
    settings: LiveSettings
    clock: WallClock = field(default_factory=WallClock)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    bus: NatsBus = field(init=False)
    store: RedisStore = field(init=False)
    supervisor: Supervisor = field(init=False)
    tracer_provider: TracerProvider = field(init=False)
    ready: bool = False
    # POST /ops/{name} on the ops port; a service adds its actions once its state exists
    ops_actions: dict[str, OpsAction] = field(default_factory=dict)
    ops_port: int = 0
    ops: OpsServer | None = None
    # The service's decision core once wired: what a test or a debugger inspects (its view of the fleet)
    core: object | None = None

    async def __aenter__(self) -> LiveProcess:
        s = self.settings
        await self.stack.__aenter__()
        try:
            self.tracer_provider = setup_tracing(self.service, s.tracing_exporter)
            self.stack.callback(self.tracer_provider.shutdown)
            self.bus = NatsBus(s.namespace, registry=self.registry, tracer_provider=self.tracer_provider,
                               request_timeout_s=s.request_timeout_s)
            await self.bus.connect(s.nats_url, f"opscale-{self.service}", options=nats_connect_options(s.nats_auth))
            self.stack.push_async_callback(self.bus.close)
            await self.bus.ensure_streams()
            self.store = RedisStore(s.redis_url, s.namespace, timeout_s=s.request_timeout_s,
                                    options=redis_connect_options(s.redis_auth, s.redis_url))
            self.stack.push_async_callback(self.store.close)
            await self.store.ping()
            self.supervisor = Supervisor(self.service, clock=self.clock, stop_timeout_s=s.stop_timeout_s,
                                         registry=self.registry)
            ops = await start_ops_server(s.ops_host, s.ops_port, self.supervisor.health, lambda: self.ready,
                                         self.registry, actions=self.ops_actions)
            self.ops, self.ops_port = ops, ops.port
            self.stack.push_async_callback(ops.stop)
        except BaseException:
            await self.stack.__aexit__(None, None, None)
            raise
        log.info("%s: connected to %s and %s; ops on port %d", self.service, redact_url(s.nats_url),
                 redact_url(s.redis_url), self.ops_port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.__aexit__(None, None, None)

    async def close_ops_port(self) -> None:
        """Stop the ops server now (a draining service frees its port for a replacement at once); the
        shutdown's own stop of it then does nothing."""
        if self.ops is not None:
            await self.ops.stop()

    def on_exit(self, release: Callable[[], Awaitable[object]]) -> None:
        """Release `release` at shutdown (in reverse order of registration)."""
        self.stack.push_async_callback(release)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Start the supervised loops, mark ready, and run until a signal (or `stop`)."""
        self.ready = True
        report = await run_until_signalled(self.supervisor, stop=stop)
        self.ready = False
        if report.stuck:
            log.error("%s: loops that did not stop: %s", self.service, ", ".join(report.stuck))
