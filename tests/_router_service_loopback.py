"""Serving an aiohttp app on a free loopback port, and a bus that only records, for the router service
tests (unit and integration).

It lives in tests/ so both tiers import it by name: pytest puts this directory on sys.path when it
loads tests/conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from opscale.runtime.live.openai_http import make_runner


@asynccontextmanager
async def serve(app: web.Application, *, handler_cancellation: bool = True) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port (by default a client disconnect cancels its handler); yields
    the base URL."""
    # a short shutdown timeout keeps a failing test from waiting a minute for a stuck handler
    runner = make_runner(app, handler_cancellation=handler_cancellation, shutdown_timeout=1.0)
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
