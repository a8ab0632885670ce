"""The router's hot routes served by make_runner's server without aiohttp's route lookup
(openai_http.DIRECT_POST_ROUTES): the same answers as through the app, the app's middlewares (API keys,
OpenAI error bodies) applied, and every other request (another method, a query string, `Expect:
100-continue`) left to the app."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web

from opscale.openai.schema import ParsedRequest, TokenChunk
from opscale.routing.tenants import ApiKeySpec, KeyTable
from opscale.runtime.clock import WallClock
from opscale.runtime.live.openai_http import DIRECT_POST_ROUTES, make_runner
from opscale.runtime.live.server_limits import ServerLimits

from opscale_services.router.api import build_router_app
from opscale_services.router.auth import TenantGate

pytestmark = pytest.mark.unit

GUARD_S = 10.0  # hang guard only, never a performance threshold
KEY = "sk-direct-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


class TwoTokens:
    """A back end that answers every request with two tokens, and counts the requests it saw."""

    def __init__(self) -> None:
        self.requests = 0

    def models(self) -> list[str]:
        return ["m"]

    def check(self, req: object) -> None:
        return None

    async def generate(self, req: ParsedRequest, trace_headers: dict[str, str]) -> AsyncIterator[TokenChunk]:
        self.requests += 1
        yield TokenChunk(" a", 0, None)
        yield TokenChunk(" b", 1, "stop")


class Router(str):
    """The router's base URL, and the paths aiohttp's route lookup resolved (the app's own dispatch)."""

    resolved: list[str]


@asynccontextmanager
async def router(backend: TwoTokens, limits: ServerLimits | None) -> AsyncIterator[Router]:
    gate = TenantGate(KeyTable([ApiKeySpec.model_validate({"id": "t", "secret": KEY})], WallClock().now_s()),
                      WallClock().now_s)
    app = build_router_app(backend, gate=gate)
    assert set(app[DIRECT_POST_ROUTES]) == {"/v1/completions", "/v1/chat/completions"}
    resolved: list[str] = []
    lookup = app.router.resolve

    async def spy(request: web.Request) -> web.AbstractMatchInfo:
        resolved.append(request.path)
        return await lookup(request)
    app.router.resolve = spy  # type: ignore[method-assign]
    runner = make_runner(app, limits, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = Router(f"http://127.0.0.1:{runner.addresses[0][1]}")
        url.resolved = resolved
        yield url
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("limits", [None, ServerLimits()], ids=["plain", "limited"])
async def test_hot_routes_answer_as_the_app_does_with_its_middlewares(limits: ServerLimits | None) -> None:
    backend = TwoTokens()
    async with router(backend, limits) as url, aiohttp.ClientSession() as session:
        body = {"model": "m", "prompt": "hi", "max_tokens": 2, "stream": True}
        async with session.post(f"{url}/v1/completions", json=body, headers=AUTH) as resp:
            assert resp.status == 200
            text = await asyncio.wait_for(resp.text(), GUARD_S)
        assert text.endswith("data: [DONE]\n\n") and '" a"' in text and '" b"' in text
        chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        async with session.post(f"{url}/v1/chat/completions", json=chat, headers=AUTH) as resp:
            assert resp.status == 200
            assert (await resp.json())["choices"][0]["message"]["content"] == " a b"
        # the gate's middleware runs on the direct path: no key, 401 with OpenAI's body
        async with session.post(f"{url}/v1/completions", json=body) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "invalid_api_key"
        # the error middleware too: a body that is not JSON is OpenAI's 400
        async with session.post(f"{url}/v1/completions", data=b"{", headers=AUTH) as resp:
            assert resp.status == 400
            assert "error" in await resp.json()
        assert url.resolved == []  # none of them went through the app's route lookup
    assert backend.requests == 2


async def test_other_requests_go_to_the_app() -> None:
    backend = TwoTokens()
    async with router(backend, ServerLimits()) as url, aiohttp.ClientSession() as session:
        # another method on a hot path: the app's 405, as an OpenAI error body
        async with session.get(f"{url}/v1/completions", headers=AUTH) as resp:
            assert resp.status == 405
            assert (await resp.json())["error"]["message"].startswith("Method Not Allowed")
        # a query string: the app's route still matches it
        body = {"model": "m", "prompt": "hi", "max_tokens": 2}
        async with session.post(f"{url}/v1/completions?trace=1", json=body, headers=AUTH) as resp:
            assert resp.status == 200
            assert (await resp.json())["choices"][0]["text"] == " a b"
        async with session.get(f"{url}/v1/models", headers=AUTH) as resp:
            assert [m["id"] for m in (await resp.json())["data"]] == ["m"]
        assert url.resolved == ["/v1/completions", "/v1/completions", "/v1/models"]
    assert backend.requests == 1


async def test_a_client_that_asks_for_100_continue_gets_it() -> None:
    async with router(TwoTokens(), ServerLimits()) as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 2}).encode()
        writer.write(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        # the interim answer comes before the body is sent, as curl waits for it
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD_S)).startswith(b"HTTP/1.1 100")
        writer.write(body)
        assert (await asyncio.wait_for(reader.readline(), GUARD_S)).startswith(b"HTTP/1.1 200")
        writer.close()
