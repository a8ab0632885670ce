"""The router's OpenAI-compatible HTTP API (aiohttp): `/v1/completions`, `/v1/chat/completions`, `/v1/models`.

Role: validate the request (opscale.openai.schema), hand it to a `RouterBackend`, which
picks an instance and streams tokens from it, and turn those tokens into server-sent events or one JSON
body. It decides nothing about routing: admission, instance choice and retries belong to the back end,
which refuses by raising `RouteRejected`.

Every answer that is not a success is an OpenAI error body `{"error": {...}}`: bad input is a 4xx that
names the field, an unexpected exception is a logged 500 without a traceback, and the app keeps serving.
When the client goes away mid-request the back end's iterator is closed (`aclose`), which cancels the
upstream request; serve the app with `make_runner` so that a client disconnect also cancels a handler
that is waiting for a token rather than writing one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Protocol

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import HttpVersion11
from aiohttp.web_request import BaseRequest

from opscale.openai.routed_headers import REQUEST_ID_HEADER
from opscale.openai.schema import (
    ApiError,
    ParsedRequest,
    RequestKind,
    TokenChunk,
    body_too_large,
    completion_response,
    error_for_status,
    finish_reason_for,
    internal_error,
    model_not_found,
    model_object,
    models_response,
    parse_completion,
    read_limited,
)
from opscale.openai.stream import EngineUsage, OpenAIStreamWriter, error_events
from opscale.routing.tenants import Tenant
from opscale.runtime.live.openai_http import (
    DIRECT_POST_ROUTES,
    REQUEST_ID_KEY,
    aclose_quietly,
    error_response,
    make_runner,
    openai_errors_middleware,
    sse_head,
    sse_response,
    unix_now_s,
)
from opscale.runtime.live.server_limits import ServerLimits

from opscale_services.router.auth import TENANT_KEY, TenantGate
from opscale_services.router.metrics import RouterMetrics
from opscale_services.router.upstream import SseBytes, UpstreamError

__all__ = [
    "DEFAULT_MAX_BODY_BYTES", "TRACE_HEADERS", "RouteRejected", "RouterBackend", "TokenChunk",
    "build_router_app", "make_runner",
]

log = logging.getLogger(__name__)


DEFAULT_MAX_BODY_BYTES: int = ServerLimits.model_fields["max_body_bytes"].default
# W3C trace context and baggage: what the back end needs to continue the client's trace upstream.
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")
_READ_CHUNK_BYTES = 64 * 1024
_DEFAULT_REJECT_CODES = {404: "model_not_found", 429: "rate_limit_exceeded", 503: "no_capacity"}


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
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    wall_clock_s: Callable[[], float] = unix_now_s,
    gate: TenantGate | None = None,
    metrics: RouterMetrics | None = None,
    body_timeout_s: float | None = None,
) -> web.Application:
    """The router's public HTTP app. `wall_clock_s` gives Unix seconds for the `created` fields. With a
    `gate`, every request but `/health` needs an API key, and each key's models and limits apply;
    `metrics`, when given, counts every completion answer by model and status; `body_timeout_s`, when
    given, bounds the wait for a request's body (408 after it). Serve it with `make_runner(app, limits)`
    for the connection-level limits (ServerLimits)."""
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
    api = _RouterApi(backend, max_body_bytes, wall_clock_s, gate, metrics, body_timeout_s)
    # client_max_size guards any handler that would call request.read(); ours read with read_limited.
    middlewares = [openai_errors_middleware] if gate is None else [openai_errors_middleware, gate.middleware]
    app = web.Application(client_max_size=max_body_bytes, middlewares=middlewares)
    app.router.add_post("/v1/completions", api.completions)
    app.router.add_post("/v1/chat/completions", api.chat_completions)
    # served without aiohttp's route lookup by make_runner's server; the handlers read no match info
    app[DIRECT_POST_ROUTES] = {"/v1/completions": api.completions, "/v1/chat/completions": api.chat_completions}
    app.router.add_get("/v1/models", api.list_models)
    app.router.add_get("/v1/models/{model:.+}", api.retrieve_model)  # ids may hold '/' (org/name)
    # vLLM's liveness path on the API port: clients (GuideLLM, vllm-router, gateways) probe it before
    # sending work. Readiness with details stays on the ops server (/readyz).
    app.router.add_get("/health", api.health)
    return app


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


class _ClientSink:
    """Writes spliced events straight to the client's connection, framed as HTTP chunks, without a
    writer's per-write work (`of` returns None unless an aiohttp response is chunked and uncompressed).
    While the connection is paused (the client's buffer is full) or closing it writes nothing and says
    so, and the events go through the stream's writer (_DirectSse, _AiohttpSse), which waits."""

    __slots__ = ("_protocol", "_transport")

    def __init__(self, transport: asyncio.Transport, protocol: BaseProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    @classmethod
    def of(cls, request: web.Request, response: web.StreamResponse) -> _ClientSink | None:
        transport, protocol = request.transport, request.protocol
        if (transport is None or not isinstance(protocol, BaseProtocol) or response.compression
                or response.headers.get(hdrs.TRANSFER_ENCODING) != "chunked"):
            return None
        return cls(transport, protocol)  # type: ignore[arg-type]

    def write(self, data: bytes) -> bool:
        if self._protocol.writing_paused or self._transport.is_closing():
            return False
        self._transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        return True


class _WrittenResponse(web.StreamResponse):
    """A 200 answer its handler wrote on the connection itself (see _DirectSse): aiohttp's `prepare` and
    `write_eof`, which it calls after the handler, have nothing left to write, and the connection is kept."""

    async def prepare(self, request: BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None

    @property
    def keep_alive(self) -> bool:
        return True


class _DirectSse:
    """A forwarded event stream written on the connection by the handler, for an HTTP/1.1 client that keeps
    its connection: the head (sse_head) with the first events, each block as one HTTP chunk, the last
    with the chunked end, all through the request's writer, which waits while the client is slow as
    aiohttp's response does. aiohttp's response machinery (its header object, the head's serialisation,
    the chunked writer's state) is a share of the router's CPU per request, and a streamed answer needs none
    of it. `of` is None for any other client, whose answer goes through aiohttp (_AiohttpSse)."""

    __slots__ = ("_head", "_sink", "_writer", "response")

    def __init__(self, writer: AbstractStreamWriter, sink: _ClientSink, head: bytes) -> None:
        self._writer = writer
        self._sink = sink
        self._head = head  # sent with the first write
        self.response = _WrittenResponse()

    @classmethod
    def of(cls, request: web.Request, request_id: str) -> _DirectSse | None:
        transport, protocol = request.transport, request.protocol
        if (request.version != HttpVersion11 or not request.keep_alive or transport is None
                or not isinstance(protocol, BaseProtocol)):
            return None
        return cls(request.writer, _ClientSink(transport, protocol), sse_head(request_id))  # type: ignore[arg-type]

    async def start(self) -> None:
        return None

    async def write(self, data: bytes) -> None:
        head, self._head = self._head, b""
        await self._writer.write(b"%b%x\r\n%b\r\n" % (head, len(data), data))

    async def end(self, data: bytes = b"") -> None:
        head, self._head = self._head, b""
        await self._writer.write(b"%b%x\r\n%b\r\n0\r\n\r\n" % (head, len(data), data) if data else head + b"0\r\n\r\n")

    def sink(self) -> _ClientSink:
        return self._sink


class _AiohttpSse:
    """A forwarded event stream written through aiohttp's response (a client on HTTP/1.0, or one that
    closes its connection after the answer)."""

    __slots__ = ("_request", "response")

    def __init__(self, request: web.Request, request_id: str) -> None:
        self._request = request
        self.response = sse_response(request_id)
        # the head waits for the first events and leaves with them in one write (aiohttp >= 3.12 reads
        # this; older releases send it at `prepare`, a write more per request)
        self.response._send_headers_immediately = False

    async def start(self) -> None:
        await self.response.prepare(self._request)

    async def write(self, data: bytes) -> None:
        await self.response.write(data)

    async def end(self, data: bytes = b"") -> None:
        await self.response.write_eof(data)

    def sink(self) -> _ClientSink | None:
        return _ClientSink.of(self._request, self.response)


class _RouterApi:
    """The handlers, bound to one back end. One instance per app: no module-level state."""

    def __init__(self, backend: RouterBackend, max_body_bytes: int, wall_clock_s: Callable[[], float],
                 gate: TenantGate | None = None, metrics: RouterMetrics | None = None,
                 body_timeout_s: float | None = None) -> None:
        self._backend = backend
        self._max_body_bytes = max_body_bytes
        self._wall_clock_s = wall_clock_s
        self._gate = gate
        self._metrics = metrics
        self._body_timeout_s = body_timeout_s

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def list_models(self, request: web.Request) -> web.Response:
        models = self._backend.models()
        if self._gate is not None:
            models = self._gate.visible_models(request, models)
        return web.json_response(models_response(models, int(self._wall_clock_s())))

    async def retrieve_model(self, request: web.Request) -> web.Response:
        """The SDK's `models.retrieve`. Ids match exactly, as OpenAI's do: `llama-3-8b` is not `Llama-3-8B`."""
        model = request.match_info["model"]
        models = self._backend.models()
        if self._gate is not None:
            models = self._gate.visible_models(request, models)  # a key sees only the models it may use
        if model not in models:
            return error_response(model_not_found(model))
        return web.json_response(model_object(model, int(self._wall_clock_s())))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._counted(request, RequestKind.COMPLETION)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._counted(request, RequestKind.CHAT)

    async def _counted(self, request: web.Request, kind: RequestKind) -> web.StreamResponse:
        tenant = request.get(TENANT_KEY)  # set by the gate's middleware before the handler runs
        metrics = self._metrics
        if metrics is None:
            return await self._generate(request, kind, tenant)
        key_id = tenant.key_id if tenant is not None else ""
        model = [""]  # the parsed request's model, once the body parsed
        try:
            response = await self._generate(request, kind, tenant, model)
        except asyncio.CancelledError:
            metrics.answered(model[0], 499, key_id)  # the client went away before the answer
            raise
        except Exception:
            metrics.answered(model[0], 500, key_id)  # the error middleware answers it
            raise
        # an unknown model (404) is counted under "": a client's random names make no series
        metrics.answered(model[0] if response.status != 404 else "", response.status, key_id)
        return response

    async def _read_body(self, request: web.Request) -> bytes | ApiError:
        length = request.content_length
        if length is not None and length <= self._max_body_bytes:
            # the usual case, a declared length within the bound: one read (aiohttp's parser holds the
            # body to that length), not a chunk iterator
            content = request.content
            if content.is_eof():
                # all of it arrived with the head: taken as it lies, without aiohttp's read loop
                raw = content.read_nowait()
                return raw if len(raw) <= self._max_body_bytes else body_too_large(self._max_body_bytes)
            return await request.read()
        return await read_limited(request.content.iter_chunked(_READ_CHUNK_BYTES), length, self._max_body_bytes)

    async def _generate(self, request: web.Request, kind: RequestKind, tenant: Tenant | None,
                        model: list[str] | None = None) -> web.StreamResponse:
        """The answer to one completion request. `tenant`: the key's, from the gate; `model`, when
        given, receives the parsed request's model (for the request counter)."""
        if self._body_timeout_s is None or request.content.is_eof():
            raw = await self._read_body(request)  # no bound, or the body is all here already: no timer
        else:
            try:
                async with asyncio.timeout(self._body_timeout_s):
                    raw = await self._read_body(request)
            except TimeoutError:
                response = error_response(error_for_status(
                    408, f"The request body did not arrive within {self._body_timeout_s:g} s", code="request_timeout"))
                response.force_close()  # the rest of the body may still come: the connection cannot be reused
                return response
        if isinstance(raw, ApiError):
            return error_response(raw)
        if tenant is None:
            parsed = parse_completion(raw, kind, headers=request.headers)
        else:
            parsed = parse_completion(raw, kind, headers=request.headers, default_tier=tenant.default_tier,
                                      tenant=tenant.key_id)
        if isinstance(parsed, ApiError):
            return error_response(parsed)
        request[REQUEST_ID_KEY] = parsed.request_id
        if model is not None:
            model[0] = parsed.model
        # Names first: a request for an unknown model or tier costs its key nothing and leaves no state
        if (refused := self._backend.check(parsed)) is not None:
            return error_response(refused)
        if tenant is not None and self._gate is not None and (refused := self._gate.admit(tenant, parsed)):
            return error_response(refused)

        trace_headers = {h: request.headers[h] for h in TRACE_HEADERS if h in request.headers}
        chunks = self._backend.generate(parsed, trace_headers)
        try:
            # The first chunk is awaited before any header is sent, so a refusal still gets its status.
            try:
                first: TokenChunk | EngineUsage | SseBytes | None = await anext(chunks)
            except StopAsyncIteration:
                first = None
            except RouteRejected as exc:
                return error_response(exc.to_api_error())
            except UpstreamError as exc:
                log.warning("request %s failed before its first token: %s", parsed.request_id, exc)
                return error_response(upstream_api_error(exc))
            if parsed.stream:
                if isinstance(first, SseBytes):
                    return await self._forward(request, parsed, first, chunks)
                return await self._stream(request, parsed, first, chunks)  # type: ignore[arg-type]
            return await self._collect(parsed, first, chunks)  # type: ignore[arg-type]
        finally:
            await aclose_quietly(chunks)

    async def _collect(self, req: ParsedRequest, first: TokenChunk | EngineUsage | None,
                       chunks: AsyncIterator[TokenChunk | EngineUsage]) -> web.Response:
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
            return error_response(exc.to_api_error())
        except UpstreamError as exc:
            log.warning("request %s failed after %d tokens: %s", req.request_id, tokens, exc)
            return error_response(upstream_api_error(exc))
        prompt_tokens = None
        if usage is not None:  # the engine's counts are exact; the router's are an estimate and a chunk count
            prompt_tokens = usage.prompt_tokens
            tokens = usage.completion_tokens if usage.completion_tokens is not None else tokens
        body = completion_response(req, "".join(texts), finish or finish_reason_for(tokens, req.max_tokens),
                                   tokens, int(self._wall_clock_s()), prompt_tokens=prompt_tokens)
        return web.json_response(body, headers={REQUEST_ID_HEADER: req.request_id})

    async def _forward(self, request: web.Request, req: ParsedRequest, first: SseBytes,
                       chunks: AsyncIterator[TokenChunk | EngineUsage | SseBytes]) -> web.StreamResponse:
        """The engine's events written as they come; the back end's blocks end with `[DONE]`.

        After the first block, a back end that is an async generator is sent a sink for the rest
        (`asend`): the upstream client then writes the engine's events to this client's connection
        from its read callback (see UpstreamClient.stream_sse), and the blocks that come back only
        count them, or carry what the sink could not take."""
        out: _DirectSse | _AiohttpSse = _DirectSse.of(request, req.request_id) or _AiohttpSse(request, req.request_id)
        chunk_count = 0
        try:
            await out.start()
            block: TokenChunk | EngineUsage | SseBytes | ApiError | None = first
            sink: _ClientSink | None = None
            ended = False  # `[DONE]` and the body's end are written: nothing more is
            while isinstance(block, SseBytes):
                chunk_count += block.chunks
                if ended:
                    pass  # a back end that yields after `[DONE]` (none does): nothing after the end
                elif block.done:
                    # the last events and the body's end in one write; the back end is still read to
                    # its end below, which is where it records the request as served
                    await out.end(block.data)
                    ended = True
                elif block.data:
                    await out.write(block.data)  # waits while the client is slow
                    if sink is None:
                        sink = out.sink()  # the head is sent with the first write
                block = await self._next_chunk(req, chunks, chunk_count, sink)
            if isinstance(block, ApiError) and not ended:
                # as in _stream: the status line is sent, so the failure is an error event
                await out.write(error_events(block))
            elif block is not None:
                raise TypeError("a back end mixed decoded tokens into a forwarded event stream")
            if not ended:
                await out.end()
        except ConnectionResetError:
            log.info("client of request %s disconnected after %d chunks", req.request_id, chunk_count)
        return out.response

    async def _stream(self, request: web.Request, req: ParsedRequest, first: TokenChunk | EngineUsage | None,
                      chunks: AsyncIterator[TokenChunk | EngineUsage]) -> web.StreamResponse:
        writer = OpenAIStreamWriter(req, int(self._wall_clock_s()))
        response = sse_response(req.request_id)
        usage: EngineUsage | None = None
        try:
            await response.prepare(request)
            chunk = first
            while chunk is not None:
                if isinstance(chunk, EngineUsage):
                    usage = chunk
                else:
                    await response.write(writer.chunk(chunk.text, chunk.finish_reason))
                following = await self._next_chunk(req, chunks, writer.tokens)
                if isinstance(following, ApiError):
                    # The status line is already sent: report the failure as an error event, as
                    # OpenAI and vLLM do, and end the stream normally.
                    await response.write(error_events(following))
                    await response.write_eof()
                    return response
                if isinstance(following, SseBytes):
                    raise TypeError("a back end mixed forwarded events into a decoded token stream")
                chunk = following
            # The writer closes the choice if the back end ended without a reason, as OpenAI clients expect.
            await response.write(writer.end(usage))
            await response.write_eof()
        except ConnectionResetError:
            # The client went away; the caller's finally closes the back end's stream.
            log.info("client of request %s disconnected after %d tokens", req.request_id, writer.tokens)
        return response

    @staticmethod
    async def _next_chunk(req: ParsedRequest, chunks: AsyncIterator[TokenChunk | EngineUsage | SseBytes],
                          tokens: int, sink: _ClientSink | None = None
                          ) -> TokenChunk | EngineUsage | SseBytes | ApiError | None:
        """The next chunk, None at the end, or the error to report when the back end fails mid-stream.
        `sink` goes to a back end that is an async generator (see _forward)."""
        try:
            if sink is not None and isinstance(chunks, AsyncGenerator):
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
