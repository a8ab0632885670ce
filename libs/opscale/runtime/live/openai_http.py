"""aiohttp plumbing shared by opscale's OpenAI-compatible servers (the router's API and the node-agent's
engine server): every error leaves as an OpenAI error body, a client disconnect cancels its handler,
event streams start with the same head, and token streams are closed quietly."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from aiohttp import hdrs, web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from opscale.openai.routed_headers import REQUEST_ID_HEADER
from opscale.openai.schema import ApiError, error_for_status, internal_error
from opscale.openai.sse import SSE_CONTENT_TYPE
from opscale.runtime.live.server_limits import ServerLimits

log = logging.getLogger(__name__)

# The request id, once parsed, so the error middleware can quote it in a 500 answer.
REQUEST_ID_KEY = web.RequestKey("opscale_request_id", str)


def unix_now_s() -> float:
    # OpenAI's `created` field is a Unix timestamp; this live shell is where the wall clock may be read.
    return time.time()  # noqa: TID251


def _header_too_large(exc: BaseException | None) -> bool:
    return isinstance(exc, LineTooLong) or (isinstance(exc, BadHttpMessage) and "too many headers" in str(exc).lower())


class _LimitedRequestHandler(RequestHandler):
    """aiohttp's connection handler with a deadline on the first request head and OpenAI error bodies for
    heads it cannot parse (431 for one too large)."""

    __slots__ = ("_head_timer", "_header_timeout_s")

    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._head_timer = asyncio.get_running_loop().call_later(self._header_timeout_s, self._head_deadline)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _head_deadline(self) -> None:
        self._head_timer = None
        if self._request_count == 0:  # no complete request head yet: a client that never sends one
            self.force_close()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500 and not isinstance(exc, BadHttpMessage):
            return super().handle_error(request, status, exc, message)
        if _header_too_large(exc):
            error = error_for_status(431, "Request header fields too large: a request line or header is longer "
                                     f"than {self.max_field_size} bytes, or there are more than {self.max_headers} "
                                     "headers", code="request_header_fields_too_large")
        else:
            error = error_for_status(status, f"Bad HTTP request: {message or exc}", code="bad_http_request")
        self.log_debug("refused a malformed request: %s", exc)
        response = error_response(error)
        response.force_close()
        return response


class _LimitedServer(web.Server):
    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s = header_timeout_s

    def __call__(self) -> RequestHandler:
        return _LimitedRequestHandler(self, loop=self._loop, header_timeout_s=self._header_timeout_s, **self._kwargs)


_LINGER_S = 1.0
_HANDLER_TAKES_MAX_HEADERS = "max_headers" in inspect.signature(RequestHandler.__init__).parameters


DIRECT_POST_ROUTES = web.AppKey("opscale_direct_post_routes", dict[str, Callable[[web.Request],
                                                                               Awaitable[web.StreamResponse]]])
"""An app's hot routes: path -> handler of POST requests there, served (by `make_runner`'s server) without
aiohttp's router. The handler must also be registered on the app, which serves every other request."""


def _direct_dispatch(app: web.Application, fallback: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The server's request handler: a POST to one of the app's DIRECT_POST_ROUTES goes to its handler
    wrapped in the app's middlewares, as aiohttp's router would call it, but without the route lookup and
    match info it makes per request (a share of the router's CPU per request); anything else, and a
    request that asks for `100-continue` (the router answers it), goes to the app (`fallback`). The
    direct handler's request has no match info: it must not read `match_info` or `app`."""
    routes = app.get(DIRECT_POST_ROUTES)
    if not routes:
        return fallback
    chains: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {}
    for path, handler in routes.items():
        for middleware in reversed(app.middlewares):
            handler = functools.partial(middleware, handler=handler)
        chains[path] = handler
    direct = chains.get

    async def handle(request: web.Request) -> web.StreamResponse:
        handler = direct(request.raw_path)  # the target as sent: one with a query string is the app's
        if handler is None or request.method != "POST" or hdrs.EXPECT in request.headers:
            return await fallback(request)
        return await handler(request)

    return handle


class _DirectRunner(web.AppRunner):
    """aiohttp's runner, its server calling `_direct_dispatch`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the app's start-up, and the server aiohttp would use
        server.request_handler = _direct_dispatch(self.app, server.request_handler)
        return server


class _LimitedRunner(_DirectRunner):
    def __init__(self, app: web.Application, limits: ServerLimits, **kwargs: Any) -> None:
        # lingering: after an answer that left the body unread (408, 413), aiohttp reads what the client
        # still sends for a while before closing, so the client reads the answer rather than a reset;
        # bounded here, not its 10 s, so a client that stalls is dropped soon
        if _HANDLER_TAKES_MAX_HEADERS:  # aiohttp's server takes a header-count bound in recent releases only
            kwargs["max_headers"] = limits.max_headers
        super().__init__(app, keepalive_timeout=limits.keepalive_timeout_s, max_line_size=limits.max_header_bytes,
                         max_field_size=limits.max_header_bytes,
                         lingering_time=min(_LINGER_S, limits.body_timeout_s), **kwargs)
        self._header_timeout_s = limits.header_timeout_s

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _LimitedServer(server.request_handler, request_factory=server.request_factory,
                              handler_cancellation=server.handler_cancellation, loop=server._loop,
                              header_timeout_s=self._header_timeout_s, **server._kwargs)


def make_runner(app: web.Application, limits: ServerLimits | None = None, **kwargs: Any) -> web.AppRunner:
    """An AppRunner that cancels a handler when its client disconnects, so a request waiting for its
    next token stops (and releases its engine or upstream work) at once rather than at its next write.
    With `limits`, a public server's bounds on slow and oversized requests (see ServerLimits)."""
    kwargs.setdefault("handler_cancellation", True)
    if limits is not None:
        return _LimitedRunner(app, limits, **kwargs)
    return _DirectRunner(app, **kwargs)


async def stop_accepting(runner: web.AppRunner) -> None:
    """Close every listening socket of `runner` at once, so a replacement on this host can bind its ports,
    while the connections already accepted go on; `runner.cleanup()` then drains them, cancelling what
    still runs at its `shutdown_timeout`. Idempotent."""
    for site in list(runner.sites):
        await site.stop()


def error_response(error: ApiError, extra_headers: Mapping[str, str] | None = None) -> web.Response:
    headers = dict(error.headers())
    if extra_headers:
        headers.update(extra_headers)
    return web.json_response(error.body(), status=error.status, headers=headers)


# never cached, never held back by a proxy such as nginx; the Content-Type given whole (aiohttp's
# content_type and charset setters each rebuild it)
_SSE_HEADERS = {"Content-Type": f"{SSE_CONTENT_TYPE}; charset=utf-8", "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no"}
_SSE_HEAD_START = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in _SSE_HEADERS.items())


def sse_response(request_id: str) -> web.StreamResponse:
    """The head of a server-sent event answer, before `prepare`, naming the request."""
    return web.StreamResponse(headers={**_SSE_HEADERS, REQUEST_ID_HEADER: request_id})


def sse_head(request_id: str) -> bytes:
    """The status line and head of `sse_response` as aiohttp sends it to an HTTP/1.1 client that keeps its
    connection (chunked, with the date and server): for a handler that writes its answer on the
    connection itself."""
    if "\r" in request_id or "\n" in request_id:
        raise ValueError(f"a request id with a line break: {request_id!r}")
    return (f"{_SSE_HEAD_START}{REQUEST_ID_HEADER}: {request_id}\r\nTransfer-Encoding: chunked\r\n"
            f"Date: {rfc822_formatted_time()}\r\nServer: {SERVER_SOFTWARE}\r\n\r\n").encode()


@web.middleware
async def openai_errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error leaves as an OpenAI error body: aiohttp's own (404 path, 405 method, 413) and any
    unexpected exception, which is logged and answered 500 without internals."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        message = f"{exc.reason}: {request.method} {request.path}"
        return error_response(error_for_status(exc.status, message), headers)
    except Exception:
        request_id = request.get(REQUEST_ID_KEY)
        log.exception("unhandled error serving %s %s (request id %s)", request.method, request.path, request_id)
        return error_response(internal_error(request_id))


async def aclose_quietly(stream: AsyncIterator[Any]) -> None:
    """Close an async iterator if it can be closed (async generators can); a failure while closing is
    logged, never raised over the answer already decided."""
    aclose = getattr(stream, "aclose", None)
    if aclose is None:
        return
    try:
        result = aclose()
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("closing a stream failed")
