"""The router's routes on its own HTTP/1.1 server (api.RouterApi on http1_server): the completions, the
models and /health answered, API keys and OpenAI error bodies on every route, another method 405 and an
unknown path 404 (OpenAI's bodies), a query string ignored, and `Expect: 100-continue` answered."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from opscale.openai.schema import ParsedRequest, TokenChunk
from opscale.routing.tenants import ApiKeySpec, KeyTable
from opscale.runtime.clock import WallClock
from opscale.runtime.live.server_limits import ServerLimits

from opscale_services.router.api import build_router_app, serve_router
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


@asynccontextmanager
async def router(backend: TwoTokens, limits: ServerLimits | None) -> AsyncIterator[str]:
    gate = TenantGate(KeyTable([ApiKeySpec.model_validate({"id": "t", "secret": KEY})], WallClock().now_s()),
                      WallClock().now_s)
    server = await serve_router(build_router_app(backend, gate=gate), limits, shutdown_timeout_s=1.0)
    try:
        yield f"http://127.0.0.1:{server.addresses[0][1]}"
    finally:
        await server.close()


@pytest.mark.parametrize("limits", [None, ServerLimits()], ids=["plain", "limited"])
async def test_completions_answer_with_keys_and_openai_error_bodies(limits: ServerLimits | None) -> None:
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
        # no key: 401 with OpenAI's body
        async with session.post(f"{url}/v1/completions", json=body) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "invalid_api_key"
        # a body that is not JSON is OpenAI's 400
        async with session.post(f"{url}/v1/completions", data=b"{", headers=AUTH) as resp:
            assert resp.status == 400
            assert "error" in await resp.json()
    assert backend.requests == 2


async def test_other_methods_paths_and_query_strings() -> None:
    backend = TwoTokens()
    async with router(backend, ServerLimits()) as url, aiohttp.ClientSession() as session:
        # another method on a route: 405 naming the allowed one, as an OpenAI error body
        async with session.get(f"{url}/v1/completions", headers=AUTH) as resp:
            assert resp.status == 405 and resp.headers["Allow"] == "POST"
            assert (await resp.json())["error"]["message"].startswith("Method Not Allowed")
        async with session.post(f"{url}/v1/nothing-here", headers=AUTH) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["message"] == "Not Found: POST /v1/nothing-here"
        async with session.post(f"{url}/v1/nothing-here") as resp:
            assert resp.status == 401  # keys first, on every path but /health
        # a query string: the route still matches
        body = {"model": "m", "prompt": "hi", "max_tokens": 2}
        async with session.post(f"{url}/v1/completions?trace=1", json=body, headers=AUTH) as resp:
            assert resp.status == 200
            assert (await resp.json())["choices"][0]["text"] == " a b"
        async with session.get(f"{url}/v1/models", headers=AUTH) as resp:
            assert [m["id"] for m in (await resp.json())["data"]] == ["m"]
        async with session.get(f"{url}/v1/models/m", headers=AUTH) as resp:
            assert (await resp.json())["id"] == "m"
        async with session.get(f"{url}/v1/models/org%2Fm", headers=AUTH) as resp:
            assert resp.status == 404 and "'org/m'" in (await resp.json())["error"]["message"]
        async with session.get(f"{url}/health") as resp:
            assert resp.status == 200
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
