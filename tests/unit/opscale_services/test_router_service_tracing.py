"""The router's trace context on the way to the engine: with spans (a tracing exporter set), a span of
its own continues the client's trace; without (exporter "none", the production default), no span is
made and the client's trace headers reach the engine as they came. Loopback sockets only, so `unit`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
from _router_service_loopback import LiveRouter, live_router, serve, sse
from aiohttp import web

from opscale.model import InstanceState, InstanceStatus, Role
from opscale.runtime.live.telemetry import OpscaleTracerProvider, setup_tracing
from opscale.services.router import RouterConfig, RouterCore

pytestmark = pytest.mark.unit

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_TRACE = {"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01", "tracestate": "vendor=1"}


@dataclass
class HeaderEngine:
    """Streams two tokens and keeps the trace headers of every request it gets."""

    seen: list[dict[str, str]] = field(default_factory=list)

    async def serve(self, request: web.Request) -> web.StreamResponse:
        self.seen.append({h: request.headers[h] for h in ("traceparent", "tracestate") if h in request.headers})
        response = web.StreamResponse()
        response.content_type = "text/event-stream"
        await response.prepare(request)
        for i, finish in enumerate((None, "length")):
            text = '"finish_reason": null' if finish is None else f'"finish_reason": "{finish}"'
            await response.write(f'data: {{"choices": [{{"index": 0, "text": " t{i}", {text}}}]}}\n\n'.encode())
        await response.write(b"data: [DONE]\n\n")
        return response


@asynccontextmanager
async def router(engine: HeaderEngine, provider: OpscaleTracerProvider, spans: bool) -> AsyncIterator[LiveRouter]:
    async with AsyncExitStack() as stack:
        app = web.Application()
        app.router.add_post("/v1/completions", engine.serve)
        url = await stack.enter_async_context(serve(app))
        status = InstanceStatus("i1", "m", "H100-80GB", 1, Role.UNIFIED, InstanceState.READY, endpoint=url)
        yield await stack.enter_async_context(live_router(RouterCore(RouterConfig(models=["m"])), [status],
                                                          tracer_provider=provider, spans=spans))


async def stream_one(r: LiveRouter) -> list[object]:
    body = {"model": "m", "prompt": "hi", "max_tokens": 2, "stream": True}
    async with aiohttp.ClientSession() as http, http.post(f"{r.url}/v1/completions", json=body,
                                                           headers=CLIENT_TRACE) as resp:
        assert resp.status == 200
        return sse(await resp.read())


async def test_without_spans_the_clients_trace_headers_reach_the_engine_as_they_came() -> None:
    engine, provider = HeaderEngine(), setup_tracing("router", "memory")
    async with router(engine, provider, spans=False) as r:
        events = await stream_one(r)
    assert events[-1] == "[DONE]" and len(events) == 3
    assert engine.seen == [CLIENT_TRACE]
    assert provider.memory_exporter is not None and provider.memory_exporter.get_finished_spans() == ()


async def test_with_spans_the_routers_span_continues_the_clients_trace_to_the_engine() -> None:
    engine, provider = HeaderEngine(), setup_tracing("router", "memory")
    async with router(engine, provider, spans=True) as r:
        events = await stream_one(r)
    assert events[-1] == "[DONE]" and len(events) == 3
    assert provider.memory_exporter is not None
    (span,) = provider.memory_exporter.get_finished_spans()
    assert span.name == "router.request" and format(span.context.trace_id, "032x") == TRACE_ID
    # the engine's parent is the router's span, in the client's trace
    assert engine.seen[0]["traceparent"] == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"
    assert engine.seen[0]["tracestate"] == "vendor=1"


async def test_without_spans_a_trace_header_that_is_not_printable_ascii_is_dropped_not_fatal() -> None:
    engine, provider = HeaderEngine(), setup_tracing("router", "memory")
    body = {"model": "m", "prompt": "hi", "max_tokens": 2, "stream": True}
    async with router(engine, provider, spans=False) as r, aiohttp.ClientSession() as http:
        async with http.post(f"{r.url}/v1/completions", json=body,
                             headers={"traceparent": "00-\u00e9t\u00e9", "tracestate": "vendor=1"}) as resp:
            assert resp.status == 200
            assert sse(await resp.read())[-1] == "[DONE]"
    assert engine.seen == [{"tracestate": "vendor=1"}]
