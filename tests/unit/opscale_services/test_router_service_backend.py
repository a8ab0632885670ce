"""The live router end to end on loopback: its HTTP API, RouterCore and pooled upstream client in front
of small aiohttp engines that stream, die or stall. Admission (429 with Retry-After and an OpenAI body),
re-routing a request whose instance died before its first token, an error event after it, a client
disconnect that reaches the engine and releases the core's accounting, the routed headers the engine
receives, and the engine's usage counts preferred over the router's in answers and records. The bus is
an in-memory recorder: these need no NATS, so they are `unit` tests even though they open sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from _router_service_loopback import LiveRouter, live_router, serve, sse
from aiohttp import web

from opscale.model import InstanceState, InstanceStatus, Role
from opscale.openai.routed_headers import (
    PROMPT_TOKENS_HEADER,
    REGION_HEADER,
    REQUEST_ID_HEADER,
    TIER_HEADER,
)
from opscale.services.router import RouterConfig, RouterCore

pytestmark = pytest.mark.unit

GUARD_S = 10.0  # hang guard only, never a performance threshold
BODY = {"model": "m", "prompt": "hello", "max_tokens": 4, "stream": True}


@dataclass
class Engine:
    """An OpenAI-compatible engine: `mode` ok (streams `tokens`), dies before the first token (resets the
    connection), answers 503, or cuts the stream after `cut_after` tokens. Asked for usage, it reports
    `prompt_tokens` as its own count of the prompt (as vLLM does, from its tokenizer)."""

    mode: str = "ok"
    tokens: int = 4
    prompt_tokens: int = 1
    gap_s: float = 0.0
    cut_after: int = 2
    hits: int = 0
    aborted: asyncio.Event = field(default_factory=asyncio.Event)
    seen_bodies: list[dict[str, Any]] = field(default_factory=list)
    seen_headers: list[dict[str, str]] = field(default_factory=list)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        body = await request.json()
        self.seen_bodies.append(body)
        self.seen_headers.append({name.lower(): value for name, value in request.headers.items()})
        if self.mode == "dies":
            assert request.transport is not None
            request.transport.abort()  # the process died: connection reset, no answer
            raise asyncio.CancelledError
        if self.mode == "503":
            return web.json_response({"error": {"message": "draining", "type": "x", "param": None, "code": None}},
                                     status=503)
        response = web.StreamResponse()
        response.content_type = "text/event-stream"
        await response.prepare(request)
        try:
            for i in range(min(self.tokens, body["max_tokens"])):
                if self.mode == "cut" and i == self.cut_after:
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                event = {"id": "x", "object": "text_completion", "model": "m",
                         "choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}]}
                await response.write(f"data: {json.dumps(event)}\n\n".encode())
                await asyncio.sleep(self.gap_s)  # noqa: TID251 - pacing of a fake engine
            if (body.get("stream_options") or {}).get("include_usage"):
                n = min(self.tokens, body["max_tokens"])
                usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": n,
                         "total_tokens": self.prompt_tokens + n}
                await response.write(f"data: {json.dumps({'id': 'x', 'choices': [], 'usage': usage})}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
        except (asyncio.CancelledError, ConnectionResetError):
            self.aborted.set()
            raise
        return response


def engine_app(engine: Engine) -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/completions", engine.completions)
    return app


@asynccontextmanager
async def router(engines: dict[str, Engine], config: RouterConfig | None = None) -> AsyncIterator[LiveRouter]:
    """The live router with `engines` registered (instance id -> engine) through one heartbeat."""
    async with AsyncExitStack() as stack:
        urls = {i: await stack.enter_async_context(serve(engine_app(e))) for i, e in engines.items()}
        statuses = [InstanceStatus(i, "m", "H100-80GB", 1, Role.UNIFIED, InstanceState.READY, endpoint=u)
                    for i, u in sorted(urls.items())]
        yield await stack.enter_async_context(live_router(RouterCore(config or RouterConfig(models=["m"])), statuses))


async def test_full_hold_queue_is_429_with_retry_after_and_an_openai_body() -> None:
    config = RouterConfig(models=["m"], max_pending_per_model=1, pending_timeout_s=0.3, pending_retry_after_s=2.0)
    async with router({}, config) as r, aiohttp.ClientSession() as http:
        held = asyncio.create_task(http.post(f"{r.url}/v1/completions", json=BODY))
        for _ in range(200):
            if r.core.pending():
                break
            await asyncio.sleep(0.01)  # noqa: TID251 - polling a live server's state
        assert r.core.pending() == {"m": 1}
        async with http.post(f"{r.url}/v1/completions", json=BODY) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "2"
            error = (await resp.json())["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["code"] == "rate_limit_exceeded" and "queue is full" in error["message"]
        await asyncio.sleep(0.35)  # noqa: TID251 - past the pending timeout on the wall clock
        await r.host.tick()  # the held request's wait is over: refused 503, not left hanging
        resp = await asyncio.wait_for(held, GUARD_S)
        assert resp.status == 503 and "Retry-After" in resp.headers
        resp.release()


@pytest.mark.parametrize("failure", ["dies", "503"])
async def test_instance_failing_before_the_first_token_is_retried_on_another(failure: str) -> None:
    bad, good = Engine(mode=failure), Engine(tokens=4)
    async with router({"i-a-bad": bad, "i-b-good": good}) as r, aiohttp.ClientSession() as http:
        async with http.post(f"{r.url}/v1/completions", json=BODY) as resp:
            assert resp.status == 200
            events = sse(await resp.read())
        assert [e["choices"][0]["text"] for e in events[:4]] == [" t0", " t1", " t2", " t3"]
        assert events[-1] == "[DONE]"
        assert (bad.hits, good.hits) == (1, 1)
        assert r.core.in_flight() == 0
        await r.records.flush()
        [record] = r.bus.records()
        assert record.status == "ok" and record.instance_id == "i-b-good"


async def test_every_instance_failing_gives_502_after_bounded_attempts() -> None:
    engines = {f"i-{k}": Engine(mode="dies") for k in range(4)}
    async with router(engines, RouterConfig(models=["m"], max_attempts=3)) as r, aiohttp.ClientSession() as http:
        async with http.post(f"{r.url}/v1/completions", json=BODY) as resp:
            assert resp.status == 502
            assert "failed on 3 instances" in (await resp.json())["error"]["message"]
        assert sum(e.hits for e in engines.values()) == 3  # three different instances, once each
        assert r.core.in_flight() == 0


async def test_failure_after_the_first_token_is_an_sse_error_event_and_not_retried() -> None:
    cut, spare = Engine(mode="cut", tokens=4, cut_after=2), Engine()
    async with router({"i-a-cut": cut, "i-b-spare": spare}) as r, aiohttp.ClientSession() as http:
        async with http.post(f"{r.url}/v1/completions", json=BODY) as resp:
            assert resp.status == 200
            events = sse(await resp.read())
        assert [e["choices"][0]["text"] for e in events[:2]] == [" t0", " t1"]
        assert "error" in events[2] and events[2]["error"]["code"] == "upstream_error"
        assert events[-1] == "[DONE]"
        assert spare.hits == 0
        assert r.core.in_flight() == 0


async def test_client_disconnect_cancels_the_engine_request_and_releases_the_core() -> None:
    slow = Engine(tokens=10_000, gap_s=0.01)
    async with router({"i-1": slow}) as r:
        async with aiohttp.ClientSession() as http:
            resp = await http.post(f"{r.url}/v1/completions", json={**BODY, "max_tokens": 10_000})
            assert resp.status == 200
            await asyncio.wait_for(resp.content.readuntil(b"\n\n"), GUARD_S)
            assert r.core.in_flight() == 1
            resp.close()  # the client goes away mid-stream
        await asyncio.wait_for(slow.aborted.wait(), GUARD_S)
        for _ in range(200):
            if r.core.in_flight() == 0:
                break
            await asyncio.sleep(0.01)  # noqa: TID251 - polling a live server's state
        assert r.core.in_flight() == 0
        await r.records.flush()
        [record] = r.bus.records()
        assert record.status == "cancelled" and record.output_tokens >= 1


async def test_a_stream_is_forwarded_as_the_engines_events_with_its_usage_when_asked() -> None:
    engine = Engine(tokens=3)
    async with router({"i-1": engine}) as r, aiohttp.ClientSession() as http:
        body = {**BODY, "stream_options": {"include_usage": True}}
        async with http.post(f"{r.url}/v1/completions", json=body) as resp:
            assert resp.status == 200
            raw = await resp.read()
        # the engine's bytes, unchanged (its ids and spacing), and its usage chunk
        assert raw.startswith(b'data: {"id": "x", "object": "text_completion"')
        events = sse(raw)
        assert [e["choices"][0]["text"] for e in events[:3]] == [" t0", " t1", " t2"]
        assert events[-2]["usage"]["completion_tokens"] == 3 and events[-1] == "[DONE]"
        assert engine.seen_bodies[0]["stream_options"] == {"include_usage": True}
        await r.records.flush()
        [record] = r.bus.records()
        assert record.status == "ok" and record.output_tokens == 3 and record.first_token_s is not None


async def test_the_engine_is_told_the_routers_request_id_tier_origin_region_and_prompt_count() -> None:
    engine = Engine(tokens=2)
    async with router({"i-1": engine}) as r, aiohttp.ClientSession() as http:
        async with http.post(f"{r.url}/v1/completions", json={**BODY, "opscale_tier": "batch"},
                             headers={REGION_HEADER: "us-east"}) as resp:
            assert resp.status == 200
            request_id = resp.headers[REQUEST_ID_HEADER]
            await resp.read()
        seen = engine.seen_headers[0]
        # "hello" is 5 characters: the router's estimate is 2 tokens
        assert (seen[REQUEST_ID_HEADER], seen[TIER_HEADER], seen[REGION_HEADER], seen[PROMPT_TOKENS_HEADER]) == (
            request_id, "batch", "us-east", "2")
        await r.records.flush()
        [record] = r.bus.records()
        assert (record.request_id, record.tier, record.region, record.served_region) == (
            request_id, "batch", "us-east", "local")
        assert [subject for subject, _ in r.bus.published if subject.startswith("opscale.records.")] == [
            "opscale.records.us-east"]  # published under the origin region


async def test_an_assembled_answer_and_its_record_report_the_engines_token_counts() -> None:
    engine = Engine(tokens=3, prompt_tokens=37)
    async with router({"i-1": engine}) as r, aiohttp.ClientSession() as http:
        async with http.post(f"{r.url}/v1/completions", json={**BODY, "stream": False}) as resp:
            assert resp.status == 200
            body = await resp.json()
        # asked for usage although the client could not (a whole answer has no stream options)
        assert engine.seen_bodies[0]["stream_options"] == {"include_usage": True}
        assert body["choices"][0]["text"] == " t0 t1 t2"
        assert body["usage"] == {"prompt_tokens": 37, "completion_tokens": 3, "total_tokens": 40}
        await r.records.flush()
        [record] = r.bus.records()
        assert (record.prompt_tokens, record.output_tokens, record.status) == (37, 3, "ok")


async def test_a_forwarded_streams_record_takes_the_engines_prompt_count_when_the_engine_reported_it() -> None:
    engine = Engine(tokens=3, prompt_tokens=37)
    async with router({"i-1": engine}) as r, aiohttp.ClientSession() as http:
        async with http.post(f"{r.url}/v1/completions",
                             json={**BODY, "stream_options": {"include_usage": True}}) as resp:
            events = sse(await resp.read())
        assert events[-2]["usage"]["prompt_tokens"] == 37  # the engine's own chunk, forwarded
        async with http.post(f"{r.url}/v1/completions", json=BODY) as resp:
            assert all("usage" not in e for e in sse(await resp.read())[:-1])
        # not asked for usage, the engine sends none: its events reach the client unchanged
        assert "stream_options" not in engine.seen_bodies[1]
        await r.records.flush()
        with_usage, without = r.bus.records()
        assert (with_usage.prompt_tokens, with_usage.output_tokens) == (37, 3)
        assert (without.prompt_tokens, without.output_tokens) == (2, 3)  # the router's estimate and count
