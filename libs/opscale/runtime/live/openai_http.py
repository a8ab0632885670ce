"""aiohttp plumbing of opscale's OpenAI-compatible engine server (the node-agent's), and what the router's
own server (opscale_services.router.http1_server) shares with it: every error leaves as an OpenAI error
body, a client disconnect cancels its handler, event streams start with the same head (SSE_HEADERS), and
token streams are closed quietly."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from opscale.openai.routed_headers import REQUEST_ID_HEADER
from opscale.openai.schema import ApiError, error_for_status, internal_error
from opscale.openai.sse import SSE_CONTENT_TYPE

log = logging.getLogger(__name__)

# The request id, once parsed, so the error middleware can quote it in a 500 answer.
REQUEST_ID_KEY = web.RequestKey("opscale_request_id", str)


def unix_now_s() -> float:
    # OpenAI's `created` field is a Unix timestamp; this live shell is where the wall clock may be read.
    return time.time()  # noqa: TID251


def make_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """An AppRunner that cancels a handler when its client disconnects, so a request waiting for its
    next token stops (and releases its engine or upstream work) at once rather than at its next write."""
    kwargs.setdefault("handler_cancellation", True)
    return web.AppRunner(app, **kwargs)


def error_response(error: ApiError, extra_headers: Mapping[str, str] | None = None) -> web.Response:
    headers = dict(error.headers())
    if extra_headers:
        headers.update(extra_headers)
    return web.json_response(error.body(), status=error.status, headers=headers)


# never cached, never held back by a proxy such as nginx; the Content-Type given whole (aiohttp's
# content_type and charset setters each rebuild it)
SSE_HEADERS = {"Content-Type": f"{SSE_CONTENT_TYPE}; charset=utf-8", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}


def sse_response(request_id: str) -> web.StreamResponse:
    """The head of a server-sent event answer, before `prepare`, naming the request."""
    return web.StreamResponse(headers={**SSE_HEADERS, REQUEST_ID_HEADER: request_id})


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


def ran_to_end(stream: object) -> bool:
    """Whether `stream` is an async generator already run to its end: closing it would do nothing (a
    call and an awaited coroutine saved, once a request)."""
    return getattr(stream, "ag_frame", True) is None


async def aclose_quietly(stream: AsyncIterator[Any]) -> None:
    """Close an async iterator if it can be closed (async generators can); a failure while closing is
    logged, never raised over the answer already decided."""
    aclose = getattr(stream, "aclose", None)
    if aclose is None or ran_to_end(stream):
        return
    try:
        result = aclose()
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("closing a stream failed")
