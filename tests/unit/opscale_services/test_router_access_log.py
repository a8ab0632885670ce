"""The router's API writes an access-log line per request only when `router.access_log` asks for one: the
request records and /metrics count every request already, and a line each is CPU on the hot path."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from opscale.openai.schema import ParsedRequest, TokenChunk
from opscale.runtime.live.settings import RouterSettings

from opscale_services.router.api import build_router_app, serve_router

pytestmark = pytest.mark.unit


class NoModels:
    def models(self) -> list[str]:
        return []

    def check(self, req: object) -> None:  # every name is known here
        return None

    async def generate(self, req: ParsedRequest, trace_headers: dict[str, str]) -> AsyncIterator[TokenChunk]:
        raise AssertionError("not asked in this test")
        yield  # pragma: no cover


async def access_lines(settings: RouterSettings, caplog: pytest.LogCaptureFixture) -> int:
    """Serve the API as the router's main does, send two requests, count the access-log records."""
    server = await serve_router(build_router_app(NoModels()), settings.http_limits, shutdown_timeout_s=1.0,
                                access_log=settings.access_log)
    try:
        host, port = server.addresses[0][:2]
        with caplog.at_level(logging.INFO, logger="opscale.router.access"):
            async with aiohttp.ClientSession() as session:
                for path in ("/health", "/v1/models"):
                    async with session.get(f"http://{host}:{port}{path}") as response:
                        assert response.status == 200
    finally:
        await server.close()
    return sum(record.name == "opscale.router.access" for record in caplog.records)


async def test_no_access_line_per_request_by_default(caplog: pytest.LogCaptureFixture) -> None:
    assert await access_lines(RouterSettings(), caplog) == 0


async def test_router_access_log_writes_one_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    assert await access_lines(RouterSettings(access_log=True), caplog) == 2
