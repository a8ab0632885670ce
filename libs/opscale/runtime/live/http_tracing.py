"""A server span per HTTP request, continuing the caller's W3C trace context (aiohttp middleware).

The node-agent's engine server uses it, so a trace started at the router (or the client) continues
through the engine that produced the tokens.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from opscale.openai.routed_headers import REQUEST_ID_HEADER
from opscale.runtime.live import telemetry

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def tracing_middleware(provider: trace.TracerProvider | None, name: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    tracer = telemetry.tracer(provider, name)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        parent = telemetry.extract_headers(request.headers)
        attributes = {"http.request.method": request.method, "url.path": request.path}
        request_id = request.headers.get(REQUEST_ID_HEADER)
        if request_id:
            attributes["opscale.request_id"] = request_id
        with tracer.start_as_current_span(f"{request.method} {request.path}", context=parent, kind=SpanKind.SERVER,
                                          attributes=attributes) as span:
            response = await handler(request)
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return response

    return middleware
