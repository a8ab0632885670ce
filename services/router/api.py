"""The router's OpenAI-compatible HTTP API: `/v1/completions`, `/v1/chat/completions`, `/v1/models`,
`/v1/models/{id}` and `/health`, served by the router's own HTTP/1.1 server (http1_server.py).

Role: validate the request (opscale.openai.schema), hand it to a `RouterBackend`, which
picks an instance and streams tokens from it, and turn those tokens into server-sent events or one JSON
body. It decides nothing about routing: admission, instance choice and retries belong to the back end,
which refuses by raising `RouteRejected`.

Every answer that is not a success is an OpenAI error body `{"error": {...}}`: bad input is a 4xx that
names the field, an unknown path 404 and a wrong method 405, an unexpected exception a logged 500
without a traceback, and the server keeps serving. When the client goes away mid-request its handler is
cancelled (the server does it), and the back end's iterator is closed (`aclose`), which cancels the
upstream request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from types import AsyncGeneratorType
from typing import Protocol
from urllib.parse import unquote

from opscale.openai.json_codec import dumps_json
from opscale.openai.routed_headers import REQUEST_ID_HEADER
from opscale.openai.schema import (
    ApiError,
    ParsedRequest,
    RequestKind,
    TokenChunk,
    completion_response,
    error_for_status,
    finish_reason_for,
    internal_error,
    model_not_found,
    model_object,
    models_response,
    parse_completion,
)
from opscale.openai.stream import EngineUsage, OpenAIStreamWriter, error_events
from opscale.routing.tenants import Tenant
from opscale.runtime.live.openai_http import SSE_HEADERS, aclose_quietly, unix_now_s
from opscale.runtime.live.server_limits import ServerLimits

from opscale_services.router.auth import CHALLENGE, OPEN_PATHS, TenantGate
from opscale_services.router.http1_server import (
    ClientSink,
    HeadRefusal,
    Http1Exchange,
    Http1Request,
    Http1Server,
    header_lines,
)
from opscale_services.router.metrics import RouterMetrics
from opscale_services.router.upstream import SseBytes, UpstreamError

__all__ = ["TRACE_HEADERS", "RouteRejected", "RouterApi", "RouterBackend", "TokenChunk", "build_router_app",
           "serve_router"]

log = logging.getLogger(__name__)
access_log = logging.getLogger("opscale.router.access")

# W3C trace context and baggage: what the back end needs to continue the client's trace upstream.
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")
_DEFAULT_REJECT_CODES = {404: "model_not_found", 429: "rate_limit_exceeded", 503: "no_capacity"}
_SSE_FIELDS = "".join(f"{name}: {value}\r\n" for name, value in SSE_HEADERS.items()).encode()
_COMPLETION_PATHS = {"/v1/completions": RequestKind.COMPLETION, "/v1/chat/completions": RequestKind.CHAT}
_MODELS_PATH = "/v1/models"
_HEALTH_PATH = "/health"


class RouteRejected(Exception):
    """The router refused a request: unknown model (404), unknown tier (400), overload (429), no
    instance (503).

    `retry_after_s` becomes a `Retry-After` header. `code` defaults by status (404 `model_not_found`,
    429 `rate_limit_exceeded`, 503 `no_capacity`); `param` names the field at fault (`model` for a
    model_not_found).
    """

    def __init__(self, status: int, message: str, retry_after_s: float | None = None,
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s
        self.code = code if code is not None else _DEFAULT_REJECT_CODES.get(status)
        self.param = param if param is not None else ("model" if self.code == "model_not_found" else None)

    def to_api_error(self) -> ApiError:
        return error_for_status(self.status, self.message, param=self.param, code=self.code,
                                retry_after_s=self.retry_after_s)


class RouterBackend(Protocol):
    """What the API needs from the router: the served models and a token stream per request.

    `generate` is an async generator (`async def ... yield TokenChunk(...)`), which may also yield the
    engine's `EngineUsage`: the answer's usage then reports the engine's counts rather than the
    router's. For a streaming request it may instead yield `SseBytes`, whole server-sent events written
    to the client unchanged and ending with `[DONE]` (the engine's own events, forwarded without
    re-encoding). It raises `RouteRejected`
    before its first chunk when the request cannot be served, and `UpstreamError` when the engine fails
    after retries are exhausted. The API always closes it (`aclose`), also when the client disconnects;
    its `finally` is where in-flight accounting is released and upstream work cancelled.
    """

    def models(self) -> list[str]: ...

    def check(self, req: ParsedRequest) -> ApiError | None:
        """The refusal of a request the router cannot take whatever the load (an unknown model or tier),
        before anything counts it; None to go on."""
        ...

    def generate(self, req: ParsedRequest,
                 trace_headers: dict[str, str]) -> AsyncIterator[TokenChunk | EngineUsage | SseBytes]: ...


def build_router_app(
    backend: RouterBackend,
    *,
    wall_clock_s: Callable[[], float] = unix_now_s,
    gate: TenantGate | None = None,
    metrics: RouterMetrics | None = None,
) -> RouterApi:
    """The router's public HTTP API. `wall_clock_s` gives Unix seconds for the `created` fields. With a
    `gate`, every request but `/health` needs an API key, and each key's models and limits apply;
    `metrics`, when given, counts every completion answer by model and status. Serve it with
    `serve_router`, whose ServerLimits bound slow and oversized requests."""
    return RouterApi(backend, wall_clock_s, gate, metrics)


async def serve_router(app: RouterApi, limits: ServerLimits | None = None, host: str = "127.0.0.1", port: int = 0,
                       *, shutdown_timeout_s: float = 60.0, reuse_port: bool | None = None,
                       access_log: bool = False) -> Http1Server:
    """Serve `app` on `host:port` (SO_REUSEPORT when `reuse_port`, for workers sharing the port); the
    server's `close` drains it, bounded by `shutdown_timeout_s`. `access_log`: a log line per answer
    (`opscale.router.access`); off by default, since the records and /metrics count every request."""
    handler = app.handle_logged if access_log else app.handle
    server = Http1Server(handler, limits, shutdown_timeout_s=shutdown_timeout_s, on_refused=app.refused,
                         on_head=app.check_head if app.gated else None)
    await server.start(host, port, reuse_port=reuse_port)
    return server


def upstream_api_error(exc: UpstreamError) -> ApiError:
    """An engine failure the back end could not hide: the engine's own 4xx when it refused the request
    itself (a prompt beyond the context window is the client's 400, which OpenAI's SDK does not retry),
    504 for a timeout, 502 otherwise (a transport failure or the engine's 5xx)."""
    if exc.request_fault and exc.status is not None:
        error = exc.error or {}
        code = error.get("code")
        return error_for_status(exc.status, error.get("message") or exc.message, param=error.get("param"),
                                code=None if code is None or code.isdigit() else code)
    if exc.kind == "timeout":
        return error_for_status(504, "The model instance did not answer in time", code="upstream_timeout")
    return error_for_status(502, f"The model instance failed ({exc.kind})", code="upstream_error")


class _Seen:
    """What the handler learnt of a request, for the counter and an error's message."""

    __slots__ = ("model", "request_id")

    def __init__(self) -> None:
        self.model = ""
        self.request_id = ""


class RouterApi:
    """The handler of every request on the API port, bound to one back end. One per server: no
    module-level state."""

    def __init__(self, backend: RouterBackend, wall_clock_s: Callable[[], float],
                 gate: TenantGate | None = None, metrics: RouterMetrics | None = None) -> None:
        self._backend = backend
        self._wall_clock_s = wall_clock_s
        self._gate = gate
        self._metrics = metrics

    async def handle_logged(self, request: Http1Request, exchange: Http1Exchange) -> None:
        try:
            await self.handle(request, exchange)
        finally:
            access_log.info('"%s %s HTTP/%s" %d', request.method, request.path, request.version, exchange.status)

    @property
    def gated(self) -> bool:
        """Whether requests need a key (`check_head` then names their tenant)."""
        return self._gate is not None

    def check_head(self, path: str, headers: dict[str, str]) -> Tenant | HeadRefusal | None:
        """The server's head check: the key's tenant (all but /health), or a 401 refusal answered before
        the body is read (or asked for with `100 Continue`), as a key-less client expects."""
        if self._gate is None or path in OPEN_PATHS:
            return None
        authenticated = self._gate.authenticate(headers)
        if isinstance(authenticated, ApiError):
            return HeadRefusal(authenticated, CHALLENGE)
        return authenticated

    async def handle(self, request: Http1Request, exchange: Http1Exchange) -> None:
        """Answer one request: its key first (all but /health; the server's head check authenticated it),
        then its route."""
        path = request.path
        tenant: Tenant | None = None
        if self._gate is not None and path not in OPEN_PATHS:
            authenticated = request.auth
            if not isinstance(authenticated, Tenant):  # a server without the head check
                authenticated = self.check_head(path, request.headers)
                if isinstance(authenticated, HeadRefusal):
                    exchange.respond_error(authenticated.error, authenticated.headers)
                    return
            tenant = authenticated
        kind = _COMPLETION_PATHS.get(path)
        if kind is not None:
            if request.method != "POST":
                self._not_allowed(request, exchange, "POST")
            elif self._metrics is None:
                await self._answer(request, exchange, kind, tenant, _Seen())
            else:
                await self._counted(request, exchange, kind, tenant, self._metrics)
        elif path == _MODELS_PATH or path.startswith("/v1/models/"):
            if request.method != "GET":
                self._not_allowed(request, exchange, "GET")
            elif path == _MODELS_PATH:
                self._list_models(exchange, tenant)
            else:
                self._retrieve_model(exchange, tenant, unquote(path[len(_MODELS_PATH) + 1:]))
        elif path == _HEALTH_PATH:
            if request.method != "GET":
                self._not_allowed(request, exchange, "GET")
            else:
                exchange.respond(200, b"", b"text/plain")
        else:
            exchange.respond_error(error_for_status(404, f"Not Found: {request.method} {path}"))

    def refused(self, status: int, tenant: object = None) -> None:
        """A request the server refused before it reached a handler (408 body too slow, 413 too large):
        counted as the handlers' answers are, without a model, under its key's tenant (known from its head)."""
        if self._metrics is not None and status in (408, 413):
            self._metrics.answered("", status, tenant.key_id if isinstance(tenant, Tenant) else "")

    @staticmethod
    def _not_allowed(request: Http1Request, exchange: Http1Exchange, allow: str) -> None:
        exchange.respond_error(error_for_status(405, f"Method Not Allowed: {request.method} {request.path}"),
                               {"Allow": allow})

    def _list_models(self, exchange: Http1Exchange, tenant: Tenant | None) -> None:
        models = TenantGate.visible_models(tenant, self._backend.models())
        exchange.respond(200, dumps_json(models_response(models, int(self._wall_clock_s()))))

    def _retrieve_model(self, exchange: Http1Exchange, tenant: Tenant | None, model: str) -> None:
        """The SDK's `models.retrieve`. Ids match exactly, as OpenAI's do: `llama-3-8b` is not `Llama-3-8B`;
        an id may hold '/' (org/name). A key sees only the models it may use."""
        if model not in TenantGate.visible_models(tenant, self._backend.models()):
            exchange.respond_error(model_not_found(model))
            return
        exchange.respond(200, dumps_json(model_object(model, int(self._wall_clock_s()))))

    async def _counted(self, request: Http1Request, exchange: Http1Exchange, kind: RequestKind,
                       tenant: Tenant | None, metrics: RouterMetrics) -> None:
        key_id = tenant.key_id if tenant is not None else ""
        seen = _Seen()
        try:
            await self._answer(request, exchange, kind, tenant, seen)
        except (asyncio.CancelledError, ConnectionResetError):
            metrics.answered(seen.model, 499, key_id)  # the client went away before the answer
            raise
        # an unknown model (404) is counted under "": a client's random names make no series
        status = exchange.status
        metrics.answered(seen.model if status != 404 else "", status, key_id)

    async def _answer(self, request: Http1Request, exchange: Http1Exchange, kind: RequestKind,
                      tenant: Tenant | None, seen: _Seen) -> None:
        """`_generate`, and an unexpected failure answered 500 without internals (logged, with the request
        id to quote) when nothing was sent yet; a stream already started is cut."""
        try:
            await self._generate(request, exchange, kind, tenant, seen)
        except ConnectionResetError:
            # the client went away (its answer could not be written): a disconnect, not the server's error
            log.info("client of request %s disconnected before its answer", seen.request_id)
            raise
        except Exception:
            log.exception("unhandled error serving %s %s (request id %s)", request.method, request.path,
                          seen.request_id)
            if not exchange.status:
                exchange.respond_error(internal_error(seen.request_id or None))
            # else a stream was cut: not finished, so the server closes the connection

    async def _generate(self, request: Http1Request, exchange: Http1Exchange, kind: RequestKind,
                        tenant: Tenant | None, seen: _Seen) -> None:
        """The answer to one completion request. `tenant`: the key's; `seen` receives the parsed request's
        model and id (for the request counter and an error's message)."""
        headers = request.headers
        if tenant is None:
            parsed = parse_completion(request.body, kind, headers=headers)
        else:
            parsed = parse_completion(request.body, kind, headers=headers, default_tier=tenant.default_tier,
                                      tenant=tenant.key_id)
        if isinstance(parsed, ApiError):
            exchange.respond_error(parsed)
            return
        seen.request_id = parsed.request_id
        seen.model = parsed.model
        # Names first: a request for an unknown model or tier costs its key nothing and leaves no state
        if (refused := self._backend.check(parsed)) is not None:
            exchange.respond_error(refused)
            return
        if tenant is not None and self._gate is not None and (refused := self._gate.admit(tenant, parsed)):
            exchange.respond_error(refused)
            return

        trace_headers = {h: headers[h] for h in TRACE_HEADERS if h in headers}
        chunks = self._backend.generate(parsed, trace_headers)
        try:
            # The first chunk is awaited before any header is sent, so a refusal still gets its status.
            try:
                first: TokenChunk | EngineUsage | SseBytes | None = await anext(chunks)
            except StopAsyncIteration:
                first = None
            except RouteRejected as exc:
                exchange.respond_error(exc.to_api_error())
                return
            except UpstreamError as exc:
                log.warning("request %s failed before its first token: %s", parsed.request_id, exc)
                exchange.respond_error(upstream_api_error(exc))
                return
            if not parsed.stream:
                await self._collect(exchange, parsed, first, chunks)  # type: ignore[arg-type]
            elif isinstance(first, SseBytes):
                await self._forward(exchange, parsed, first, chunks)
            else:
                await self._stream(exchange, parsed, first, chunks)  # type: ignore[arg-type]
        finally:
            await aclose_quietly(chunks)

    async def _collect(self, exchange: Http1Exchange, req: ParsedRequest, first: TokenChunk | EngineUsage | None,
                       chunks: AsyncIterator[TokenChunk | EngineUsage]) -> None:
        texts: list[str] = []
        tokens = 0
        finish: str | None = None
        usage: EngineUsage | None = None
        chunk = first
        try:
            while chunk is not None:
                if isinstance(chunk, EngineUsage):
                    usage = chunk
                else:
                    texts.append(chunk.text)
                    tokens += chunk.is_token
                    finish = chunk.finish_reason or finish
                chunk = await anext(chunks, None)
        except RouteRejected as exc:
            exchange.respond_error(exc.to_api_error())
            return
        except UpstreamError as exc:
            log.warning("request %s failed after %d tokens: %s", req.request_id, tokens, exc)
            exchange.respond_error(upstream_api_error(exc))
            return
        prompt_tokens = None
        if usage is not None:  # the engine's counts are exact; the router's are an estimate and a chunk count
            prompt_tokens = usage.prompt_tokens
            tokens = usage.completion_tokens if usage.completion_tokens is not None else tokens
        body = completion_response(req, "".join(texts), finish or finish_reason_for(tokens, req.max_tokens),
                                   tokens, int(self._wall_clock_s()), prompt_tokens=prompt_tokens)
        exchange.respond(200, dumps_json(body), headers={REQUEST_ID_HEADER: req.request_id})

    @staticmethod
    def _sse_head(exchange: Http1Exchange, req: ParsedRequest) -> bytes:
        """The head of an event stream naming the request, sent with the stream's first events."""
        return exchange.chunked_head(200, _SSE_FIELDS + header_lines({REQUEST_ID_HEADER: req.request_id}))

    async def _forward(self, exchange: Http1Exchange, req: ParsedRequest, first: SseBytes,
                       chunks: AsyncIterator[TokenChunk | EngineUsage | SseBytes]) -> None:
        """The engine's events written as they come; the back end's blocks end with `[DONE]`.

        After the first block, a back end that is an async generator is sent a sink for the rest
        (`asend`): the upstream client then writes the engine's events to this client's connection
        from its read callback (see UpstreamClient.stream_sse), and the blocks that come back only
        count them, or carry what the sink could not take (the exchange's writes wait for a slow client)."""
        head = self._sse_head(exchange, req)  # leaves with the first events, in one write
        chunk_count = 0
        try:
            block: TokenChunk | EngineUsage | SseBytes | ApiError | None = first
            sink: ClientSink | None = None
            ended = False  # `[DONE]` and the body's end are written: nothing more is
            while isinstance(block, SseBytes):
                chunk_count += block.chunks
                if ended:
                    pass  # a back end that yields after `[DONE]` (none does): nothing after the end
                elif block.done:
                    # the last events and the body's end in one write; the back end is still read to
                    # its end below, which is where it records the request as served
                    await exchange.end(block.data, head)
                    head, ended = b"", True
                elif block.data:
                    await exchange.write(block.data, head)  # waits while the client is slow
                    head = b""
                    if sink is None:
                        sink = exchange.sink()
                block = await self._next_chunk(req, chunks, chunk_count, sink)
            if isinstance(block, ApiError) and not ended:
                # as in _stream: the status line is sent, so the failure is an error event
                await exchange.write(error_events(block), head)
                head = b""
            elif block is not None:
                raise TypeError("a back end mixed decoded tokens into a forwarded event stream")
            if not ended:
                await exchange.end(b"", head)
        except ConnectionResetError:
            log.info("client of request %s disconnected after %d chunks", req.request_id, chunk_count)

    async def _stream(self, exchange: Http1Exchange, req: ParsedRequest, first: TokenChunk | EngineUsage | None,
                      chunks: AsyncIterator[TokenChunk | EngineUsage]) -> None:
        writer = OpenAIStreamWriter(req, int(self._wall_clock_s()))
        head = self._sse_head(exchange, req)
        usage: EngineUsage | None = None
        try:
            await exchange.write(b"", head)
            chunk = first
            while chunk is not None:
                if isinstance(chunk, EngineUsage):
                    usage = chunk
                else:
                    await exchange.write(writer.chunk(chunk.text, chunk.finish_reason))
                following = await self._next_chunk(req, chunks, writer.tokens)
                if isinstance(following, ApiError):
                    # The status line is already sent: report the failure as an error event, as
                    # OpenAI and vLLM do, and end the stream normally.
                    await exchange.end(error_events(following))
                    return
                if isinstance(following, SseBytes):
                    raise TypeError("a back end mixed forwarded events into a decoded token stream")
                chunk = following
            # The writer closes the choice if the back end ended without a reason, as OpenAI clients expect.
            await exchange.end(writer.end(usage))
        except ConnectionResetError:
            # The client went away; the caller's finally closes the back end's stream.
            log.info("client of request %s disconnected after %d tokens", req.request_id, writer.tokens)

    @staticmethod
    async def _next_chunk(req: ParsedRequest, chunks: AsyncIterator[TokenChunk | EngineUsage | SseBytes],
                          tokens: int, sink: ClientSink | None = None
                          ) -> TokenChunk | EngineUsage | SseBytes | ApiError | None:
        """The next chunk, None at the end, or the error to report when the back end fails mid-stream.
        `sink` goes to a back end that is an async generator (see _forward)."""
        try:
            if sink is not None and type(chunks) is AsyncGeneratorType:  # (not the ABC: its check is slower)
                try:
                    return await chunks.asend(sink)
                except StopAsyncIteration:
                    return None
            return await anext(chunks, None)
        except ConnectionResetError:
            raise  # the client is gone: the caller's disconnect path
        except RouteRejected as exc:
            return exc.to_api_error()
        except UpstreamError as exc:
            log.warning("request %s failed after %d tokens: %s", req.request_id, tokens, exc)
            return upstream_api_error(exc)
        except Exception:
            log.exception("back end failed mid-stream on request %s after %d tokens", req.request_id, tokens)
            return internal_error(req.request_id)
