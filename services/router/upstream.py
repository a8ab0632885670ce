"""The router's client to engine instances: one connection pool (http1.py), streaming completions.

Role: POST a streaming `/v1/completions` (or `/v1/chat/completions`) request to an instance's
OpenAI-compatible endpoint, either a node-agent's engine server (`.../instances/<id>`) or any
OpenAI-compatible server such as vLLM, and yield what arrives: decoded `TokenChunk`s and the engine's
usage (`stream_completion`, for answers the router assembles itself) or the engine's own events as bytes
(`stream_sse`, the streaming hot path, which forwards them without decoding each token).

Every wait is bounded (a router without upstream timeouts hangs on one stalled engine): connecting,
the first token (an absolute deadline that covers the connection pool, the response headers and the
engine's queue and prefill), and each gap between later reads. A disaggregated request's first step,
the prefill, is one JSON answer (`prefill`) whose KV hand-off parameters the decode step carries. Every failure is an `UpstreamError` that
says what failed and whether a token had already been produced, so the router retries another instance
only when the client has seen nothing yet. Closing the generator (`aclose`) closes the connection,
which is how the engine learns that the request was abandoned.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from opscale.openai.json_codec import dumps_json
from opscale.openai.kv_transfer import KV_TRANSFER_PARAMS, handoff_params
from opscale.openai.schema import RequestKind, TokenChunk
from opscale.openai.sse import SseDecoder, SseError
from opscale.openai.stream import EngineUsage
from opscale.runtime.live.redact import redact_url

from opscale_services.router.chunk_relay import Relay
from opscale_services.router.http1 import (
    ConnectionFailed,
    ConnectionLost,
    Endpoint,
    Http1Connection,
    Http1Pool,
    ProtocolViolation,
    encode_request,
)
from opscale_services.router.sse_passthrough import (
    EventFailure,
    SseBytes,
    SseForwarder,
    SseSink,
    decode_event,
    event_usage,
)

__all__ = ["SseBytes", "SseSink", "UpstreamClient", "UpstreamConfig", "UpstreamError", "UpstreamErrorKind", "completion_url"]

UpstreamErrorKind = Literal["connect", "status", "timeout", "protocol"]

# Statuses after which the same request may go to another instance: the instance is gone (404),
# busy (429, 503) or broken (5xx). A 400 is the request's own fault and fails everywhere.
_RETRYABLE_STATUSES = frozenset({404, 408, 429, 500, 502, 503, 504})


class UpstreamError(Exception):
    """An engine request failed.

    kind: `connect` (never reached the engine or it dropped the connection before answering),
    `status` (it answered an error status, or an error event mid-stream), `timeout` (the first token
    or a later read took too long), `protocol` (the stream was cut or malformed).
    """

    def __init__(self, kind: UpstreamErrorKind, message: str, *, before_first_token: bool,
                 status: int | None = None, endpoint: str = "", error: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{kind}: {message}" + (f" ({redact_url(endpoint)})" if endpoint else ""))
        self.kind: UpstreamErrorKind = kind
        self.message = message
        self.before_first_token = before_first_token
        self.status = status
        self.endpoint = endpoint
        # the engine's OpenAI error object (`{"message", "type", "param", "code"}`) when it sent one
        self.error = error

    @property
    def request_fault(self) -> bool:
        """True when the engine refused the request itself (a 4xx such as 400 for a prompt beyond the
        context window): the client's error, to pass on with its status, never retried elsewhere."""
        return (self.kind == "status" and self.status is not None and 400 <= self.status < 500
                and self.status not in _RETRYABLE_STATUSES)

    @property
    def retryable(self) -> bool:
        """True when another instance may serve the request: nothing reached the client yet and the
        failure is the instance's, not the request's."""
        if not self.before_first_token:
            return False
        # an error event mid-stream has no status: the engine failed, not the request
        return self.kind != "status" or self.status is None or self.status in _RETRYABLE_STATUSES


class UpstreamConfig(BaseModel):
    """Pool limits and timeouts of the router's engine client."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    connect_timeout_s: float = Field(3.0, gt=0, description="TCP connect to an instance")
    first_token_timeout_s: float = Field(
        120.0, gt=0, description="From sending the request to the first token: pool wait, headers, queue, prefill")
    idle_timeout_s: float = Field(30.0, gt=0, description="Longest gap between reads once tokens flow")
    max_connections: int = Field(1024, ge=1, description="Open connections in the pool, all instances together")
    max_connections_per_host: int = Field(256, ge=0, description="Per instance host:port; 0 is unlimited")
    keepalive_s: float = Field(30.0, gt=0, description="How long an idle pooled connection is kept")
    max_event_bytes: int = Field(1 << 20, ge=1024, description="Largest SSE event accepted from an engine")
    max_error_body_bytes: int = Field(64 * 1024, ge=256, description="How much of an error body is read")


def completion_url(endpoint_url: str, kind: RequestKind) -> str:
    """The URL to POST to. `endpoint_url` is an instance's OpenAI base (`http://h:p/instances/i-1`,
    `http://vllm:8000`, with or without `/v1`) or already a full completions URL. The endpoint follows
    the client's route (`kind`), never the body's keys: a completion body may carry any extra field."""
    base = endpoint_url.rstrip("/")
    if base.endswith(("/v1/completions", "/v1/chat/completions")):
        return base
    path = "chat/completions" if kind is RequestKind.CHAT else "completions"
    return f"{base}/{path}" if base.endswith("/v1") else f"{base}/v1/{path}"


class UpstreamClient:
    """One pooled HTTP session to every engine instance. Use `async with UpstreamClient(...)`, or
    `start()` and `close()` around its use; the session is bound to the running event loop."""

    def __init__(self, config: UpstreamConfig | None = None) -> None:
        self.config = config or UpstreamConfig()
        self._pool: Http1Pool | None = None
        # the loop it was started on, kept: asyncio.get_running_loop() costs a getpid() system call a time
        self.loop: asyncio.AbstractEventLoop | None = None
        # an instance's endpoint and the client's route -> the URL to POST to, parsed: one or two per instance
        self._endpoints: dict[tuple[str, RequestKind], tuple[str, Endpoint]] = {}
        self._deadlines: _DeadlineWatch | None = None  # the timeouts of every exchange in flight (one timer)

    async def start(self) -> None:
        if self._pool is not None:
            return
        cfg = self.config
        self.loop = asyncio.get_running_loop()
        self._deadlines = _DeadlineWatch(self.loop, min(cfg.first_token_timeout_s, cfg.idle_timeout_s))
        # No total or read timeout on a connection: a stream lasts as long as its tokens flow; the
        # per-exchange deadlines below bound every wait instead.
        self._pool = Http1Pool(max_connections=cfg.max_connections, max_per_host=cfg.max_connections_per_host,
                               keepalive_s=cfg.keepalive_s, connect_timeout_s=cfg.connect_timeout_s)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if self._deadlines is not None:
            self._deadlines.stop()
            self._deadlines = None
        if pool is not None:
            await pool.close()

    async def __aenter__(self) -> UpstreamClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def stream_completion(self, endpoint_url: str, body: Mapping[str, Any],
                                headers: Mapping[str, str] | None = None,
                                kind: RequestKind = RequestKind.COMPLETION,
                                ) -> AsyncIterator[TokenChunk | EngineUsage]:
        """Stream one completion from an instance as decoded tokens; see the module docstring for the
        failure modes.

        `body` is an OpenAI request body (`ParsedRequest.upstream_body()`); `stream` is forced on.
        `headers` carries trace context and the routed headers (routed_headers.py). Chunks are
        numbered from 0 in `index`. When the engine reports usage (the body asked with
        `stream_options.include_usage`), its counts come as an `EngineUsage`, after the last chunk.
        `kind` is the client's route, which names the engine's endpoint (see `completion_url`).
        """
        exchange = self._exchange(endpoint_url, body, headers, kind)
        decoder = SseDecoder(self.config.max_event_bytes)
        finished = False
        try:
            await exchange.open()
            while not exchange.completed:
                data = await exchange.read()
                if not data:
                    if finished and not decoder.pending:
                        exchange.completed = True  # a server that closes after the last chunk without [DONE]
                        break
                    raise exchange.fail("protocol", f"stream ended before [DONE] after {exchange.produced} chunks")
                try:
                    events = decoder.feed(data)
                except SseError as exc:
                    raise exchange.fail("protocol", str(exc)) from exc
                for event in events:
                    if event == "[DONE]":
                        exchange.completed = True
                        break
                    decoded = decode_event(event)
                    if isinstance(decoded, tuple):
                        text, finish_reason = decoded
                        finished = finished or finish_reason is not None
                        yield TokenChunk(text, exchange.produced, finish_reason)
                        exchange.produced += 1
                    elif decoded is not None:
                        raise exchange.fail(decoded.kind, decoded.message)  # type: ignore[arg-type]
                    elif '"usage"' in event and (usage := event_usage(event)) is not None:
                        yield usage
        finally:
            exchange.finish()

    async def stream_sse(self, endpoint_url: str, body: Mapping[str, Any],
                         headers: Mapping[str, str] | None = None, kind: RequestKind = RequestKind.COMPLETION,
                         ) -> AsyncGenerator[SseBytes, SseSink | None]:
        """Stream one completion from an instance as the engine's own server-sent events, whole events
        at a time, for the router to forward unchanged (see sse_passthrough). Failures, timeouts and
        `before_first_token` are as in `stream_completion`; nothing is yielded before the first output
        chunk, and the last block yielded ends with `[DONE]` (also when the events before it went through a
        sink: the caller writes it with the end of its own answer).

        Splicing: a caller that sends an `SseSink` into the generator (`asend(sink)`, after a block)
        has the following events written to it straight from the connection's read callback, with no
        task switch per engine read; the next block it receives then counts them, and its `data` is
        what is still to write: events held back while the client was not keeping up, and the closing
        `[DONE]`. `anext` (or `asend(None)`) keeps the plain block-by-block path."""
        exchange = self._exchange(endpoint_url, body, headers, kind)
        forwarder = SseForwarder(self.config.max_event_bytes)
        try:
            await exchange.open()
            sink: SseSink | None = None
            while not exchange.completed:
                if sink is not None:
                    spliced, failure = await exchange.splice(forwarder, sink)
                    exchange.completed = spliced.done
                    sink = yield spliced
                    if failure is not None:
                        raise exchange.fail(failure.kind, failure.message)  # type: ignore[arg-type]
                    continue
                data = await exchange.read()
                if not data:
                    closing = forwarder.end()
                    if closing is None:
                        raise exchange.fail("protocol", f"stream ended before [DONE] after {forwarder.chunks} chunks")
                    exchange.completed = True  # a server that closes after the last chunk without [DONE]
                    yield closing
                    break
                try:
                    block = forwarder.feed(data)
                except SseError as exc:
                    raise exchange.fail("protocol", str(exc)) from exc
                if block.out is not None:
                    exchange.completed = block.out.done
                    exchange.produced = forwarder.chunks
                    sink = yield block.out
                if block.failure is not None:
                    exchange.produced = forwarder.chunks
                    raise exchange.fail(block.failure.kind, block.failure.message)  # type: ignore[arg-type]
        finally:
            exchange.finish()

    async def prefill(self, endpoint_url: str, body: Mapping[str, Any],
                      headers: Mapping[str, str] | None = None,
                      kind: RequestKind = RequestKind.COMPLETION) -> dict[str, Any]:
        """Step 1 of a disaggregated request (opscale.openai.kv_transfer): POST `body` (a prefill body,
        not streamed) to a prefill instance and return its answer's `kv_transfer_params`, for the decode
        instance. The whole exchange is bounded by the first-token deadline (the prefill is the first
        token's work); an answer of more than `max_event_bytes`, not JSON, or without the parameters is
        a `protocol` error. Every failure is before the first token: another pair may serve it."""
        exchange = self._exchange(endpoint_url, body, headers, kind, stream=False)
        limit = self.config.max_event_bytes
        parts: list[bytes] = []
        size = 0
        try:
            await exchange.open()
            while data := await exchange.read():
                size += len(data)
                if size > limit:
                    raise exchange.fail("protocol", f"prefill answer larger than {limit} bytes")
                parts.append(data)
            exchange.completed = True
        finally:
            exchange.finish()
        try:
            answer = json.loads(b"".join(parts))
        except (ValueError, RecursionError) as exc:  # not UTF-8 or JSON, a number too long, nested too deep
            raise exchange.fail("protocol", f"prefill answer is not JSON: {exc}") from exc
        params = handoff_params(answer)
        if params is None:
            raise exchange.fail("protocol", f"prefill answer has no {KV_TRANSFER_PARAMS}: is the instance a "
                                "prefill instance with a KV connector?")
        return params

    def _exchange(self, endpoint_url: str, body: Mapping[str, Any], headers: Mapping[str, str] | None,
                  kind: RequestKind, *, stream: bool = True) -> _Exchange:
        if self._pool is None:
            raise RuntimeError("UpstreamClient.stream_completion called before start()")
        payload = dict(body)
        payload["stream"] = stream
        target = self._endpoints.get((endpoint_url, kind))
        if target is None:
            if len(self._endpoints) >= _MAX_CACHED_ENDPOINTS:
                self._endpoints.clear()  # instances come and go: never let the cache grow with them
            url = completion_url(endpoint_url, kind)
            target = self._endpoints[endpoint_url, kind] = (url, Endpoint.parse(url))
        url, endpoint = target
        request = encode_request("POST", endpoint, {"Content-Type": "application/json",
                                                    "Accept": "text/event-stream" if stream else "application/json",
                                                    **(headers or {})},
                                 dumps_json(payload))
        assert self._deadlines is not None  # made by start(), as the pool is
        return _Exchange(self, self._pool, self._deadlines, endpoint, url, request)

    async def error_detail(self, conn: Http1Connection, reason: str, deadline: float
                           ) -> tuple[str, dict[str, Any] | None]:
        """The message of an error answer (OpenAI body or plain text), bounded in size and time, and the
        OpenAI error object when the body is one (its fields kept as strings or None)."""
        limit = self.config.max_error_body_bytes
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout_at(deadline):
                while size < limit:
                    data = await conn.read()
                    if not data:
                        break
                    parts.append(data)
                    size += len(data)
        except (TimeoutError, ConnectionLost, ProtocolViolation):
            return reason or "no body", None
        text = b"".join(parts)[:limit].decode("utf-8", errors="replace")
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            return text.strip()[:500] or (reason or "no body"), None
        # OpenAI's shape {"error": {...}}, or vLLM's older flat one {"object": "error", "message": ...}
        fields = obj.get("error") if isinstance(obj, dict) else None
        if not isinstance(fields, dict) and isinstance(obj, dict) and obj.get("object") == "error":
            fields = obj
        if isinstance(fields, dict):
            error = {name: (str(fields[name])[:500] if fields.get(name) is not None else None)
                     for name in ("message", "type", "param", "code")}
            return error["message"] or "", error
        return text[:500], None


_MAX_CACHED_ENDPOINTS = 4096
class _Splice:
    """What one splice saw: output chunks forwarded, the engine's usage count, events held for a slow
    client, the end, a failure."""

    __slots__ = ("chunks", "done", "failure", "held", "usage")

    def __init__(self) -> None:
        self.chunks = 0
        self.usage: EngineUsage | None = None
        self.held: list[bytes] = []
        self.done = False
        self.failure: EventFailure | None = None


class _DeadlineWatch:
    """The first-token deadline and the idle timeout of every exchange in flight, kept by one timer.

    A timer per exchange (two: one per timeout) was made and cancelled on every request, a share of the
    router's CPU per request; here an exchange only joins a dict when it opens and leaves it when it
    finishes. The timer fires at the earliest deadline in force, and never later than `shortest_s` (the
    shorter timeout) after it was armed: an exchange that opens, or starts waiting, later has no deadline
    sooner than that, so none is missed. Each firing fails the exchanges past their deadline (see
    `_Exchange.due`) and arms the next one; with nothing in flight it stops until an exchange opens."""

    __slots__ = ("_active", "_loop", "_shortest_s", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, shortest_s: float) -> None:
        self._loop = loop
        self._shortest_s = shortest_s
        self._active: dict[_Exchange, None] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, exchange: _Exchange) -> None:
        self._active[exchange] = None
        if self._timer is None:
            self._timer = self._loop.call_at(self._loop.time() + self._shortest_s, self._fire)

    def discard(self, exchange: _Exchange) -> None:
        self._active.pop(exchange, None)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._active.clear()

    def _fire(self) -> None:
        self._timer = None
        if not self._active:
            return
        now = self._loop.time()
        next_at = now + self._shortest_s
        for exchange in list(self._active):
            due = exchange.due()
            if due is None:
                continue
            if due <= now:
                exchange.expire()
            elif due < next_at:
                next_at = due
        if self._active:
            self._timer = self._loop.call_at(next_at, self._fire)


class _FirstTokenTimeout(TimeoutError):
    """Raised into a read still waiting for the first token at the first-token deadline (the head's, an
    error body's, or the body's)."""


class _IdleTimeout(Exception):
    """Raised into a read that waited `idle_timeout_s` for the next bytes (see _Exchange.due)."""


class _Exchange:
    """One request to an instance: sending it, bounded reads, and the connection's fate at the end.

    `produced` is how many output chunks reached the caller (a failure with none is retryable);
    `completed` is set once the stream was read to its end, so the connection is reused."""

    __slots__ = ("_client", "_conn", "_deadlines", "_endpoint", "_first_token_deadline", "_idle_timeout_s", "_loop",
                 "_pool", "_relay", "_request", "_waiting_since", "completed", "produced", "url")

    def __init__(self, client: UpstreamClient, pool: Http1Pool, deadlines: _DeadlineWatch, endpoint: Endpoint,
                 url: str, request: bytes) -> None:
        self._client = client
        self._pool = pool
        self._deadlines = deadlines
        self._endpoint = endpoint
        self.url = url
        self._request = request
        self._conn: Http1Connection | None = None
        assert client.loop is not None  # set by start(), as the pool is
        self._loop = client.loop
        self._first_token_deadline = self._loop.time() + client.config.first_token_timeout_s
        self._idle_timeout_s = client.config.idle_timeout_s
        # Both timeouts are kept by the client's one timer (_DeadlineWatch), which asks `due`: until the
        # first token, the first-token deadline (from the request's sending on: the head's wait, then the
        # body's); then the idle timeout, counted from `_waiting_since`, when the read in progress began
        # (None between reads, while the caller is busy). Neither is a timeout context per read (~10 us
        # each, a share of the router's CPU per token).
        self._waiting_since: float | None = None
        self._relay: Relay | None = None  # while splicing: relayed tokens are progress too
        self.produced = 0
        self.completed = False

    def fail(self, kind: UpstreamErrorKind, message: str, status: int | None = None,
             error: Mapping[str, Any] | None = None) -> UpstreamError:
        return UpstreamError(kind, message, before_first_token=self.produced == 0, status=status, endpoint=self.url,
                             error=error)

    async def open(self) -> None:
        """Send the request and check the answer's status (an error answer raises with its message)."""
        cfg = self._client.config
        # The first-token deadline bounds the wait for the response head and then for the first token (the
        # watch aborts the connection); the pool's own wait (for a place, or a new connection) is bounded by
        # it too, apart (see Http1Pool.exchange_head).
        self._deadlines.add(self)
        try:
            # the head and the body's first bytes in one wake-up: every caller reads the body next
            self._conn, head = await self._pool.exchange_head(self._endpoint, self._request,
                                                              self._first_token_deadline, self._on_connection,
                                                              until_body=True)
        except TimeoutError as exc:  # the pool's wait, or the first-token deadline (_FirstTokenTimeout)
            raise self.fail("timeout", f"no response within {cfg.first_token_timeout_s:g} s") from exc
        except (ConnectionFailed, ConnectionLost) as exc:
            raise self.fail("connect", f"{type(exc).__name__}: {exc}") from exc
        except ProtocolViolation as exc:
            raise self.fail("protocol", f"bad response: {exc}") from exc
        if head.status != 200:
            detail, error = await self._client.error_detail(self._conn, head.reason, self._first_token_deadline)
            raise self.fail("status", f"HTTP {head.status}: {detail}", status=head.status, error=error)

    async def read(self) -> bytes:
        """The bytes that arrived (b"" at the end), within the first-token deadline or the idle timeout."""
        conn = self._conn
        assert conn is not None
        cfg = self._client.config
        try:
            if self.produced == 0:
                return await conn.read()  # bounded by the first-token deadline (the watch)
            self._waiting_since = self._loop.time()
            try:
                return await conn.read()
            finally:
                self._waiting_since = None
        except (_FirstTokenTimeout, _IdleTimeout) as exc:
            waited = cfg.first_token_timeout_s if self.produced == 0 else cfg.idle_timeout_s
            what = "first token" if self.produced == 0 else "next token"
            raise self.fail("timeout", f"no {what} within {waited:g} s") from exc
        except (ConnectionLost, ProtocolViolation) as exc:
            raise self.fail("protocol", f"stream broken: {type(exc).__name__}: {exc}") from exc

    async def splice(self, forwarder: SseForwarder, sink: SseSink) -> tuple[SseBytes, EventFailure | None]:
        """Forward the engine's events to `sink` from the connection's read callback until the stream
        ends, fails, or the client stops keeping up (then reading pauses and the events are held).

        Returns one block for the caller: `chunks` counts every output chunk forwarded or held, `data`
        holds what the sink did not take (held events, a closing `[DONE]`), `done` says the stream
        ended; and the failure the engine reported, if any, to raise once that block is delivered."""
        conn = self._conn
        assert conn is not None
        loop = self._loop
        state = _Splice()
        # called once per engine read: what it calls is bound here, not looked up each time
        now, feed_steady, write = loop.time, forwarder.feed_steady, sink.write

        def on_parsed(data: bytes) -> None:
            if state.failure is not None or state.done:
                return  # nothing is forwarded after a failure or the end
            self._waiting_since = now()  # progress: the idle clock restarts
            if not state.held and (events := feed_steady(data)) >= 0:
                # tokens flowing: written as they came
                state.chunks += events
                if not write(data):
                    state.held.append(data)  # the client is not keeping up: the task takes over and waits
                    conn.pause()
                    conn.wake()
                return
            try:
                block = forwarder.feed(data)
            except SseError as exc:
                state.failure = EventFailure("protocol", str(exc))
                conn.wake()
                return
            out = block.out
            if out is not None:
                state.chunks += out.chunks
                if out.usage is not None:
                    state.usage = out.usage
                if out.done:
                    # the last events go back to the caller, to leave with the end of the client's body
                    # in one write; reading goes on, so the engine's own end keeps the connection
                    state.held.append(out.data)
                    state.done = True
                    conn.wake()
                elif state.held or not sink.write(out.data):
                    state.held.append(out.data)  # the client is not keeping up: the task takes over and waits
                    conn.pause()
                    conn.wake()
            if block.failure is not None:
                state.failure = block.failure
                conn.wake()

        # The steady state's tokens, each a whole chunk, go around the parser and `on_parsed`: the relay
        # (chunk_relay.py) writes them from the read callback, armed only while nothing is held or failed
        # and the forwarder is steady; what it counted is taken back before any other read is handled.
        relay = sink.relay(now)
        self._relay = relay

        def take_relayed() -> None:
            count, last = relay.take()
            if count:
                assert last is not None
                forwarder.relayed(count, last)
                state.chunks += count

        def on_body(data: bytes) -> None:
            take_relayed()
            on_parsed(data)
            relay.armed = state.failure is None and not state.done and not state.held and forwarder.steady

        cfg = self._client.config
        pending = conn.take_buffered()
        conn.on_body = on_body
        conn.relay = relay
        try:
            if pending:
                on_body(pending)
            else:
                relay.armed = forwarder.steady
            while state.failure is None and not state.done and not state.held:
                self._waiting_since = loop.time()
                ended = await conn.wait_signal()
                if ended and state.failure is None and not state.done and not state.held:
                    take_relayed()  # the relayed tokens' count, and the last for `end`
                    closing = forwarder.end()  # the body ended without [DONE]
                    if closing is None:
                        raise self.fail("protocol", f"stream ended before [DONE] after {forwarder.chunks} chunks")
                    state.held.append(closing.data)
                    state.done = True
        except _IdleTimeout as exc:
            raise self.fail("timeout", f"no next token within {cfg.idle_timeout_s:g} s") from exc
        except (ConnectionLost, ProtocolViolation) as exc:
            raise self.fail("protocol", f"stream broken: {type(exc).__name__}: {exc}") from exc
        finally:
            conn.on_body = conn.relay = None
            self._relay = None
            relay.armed = False
            take_relayed()
            self._waiting_since = None
        self.produced = forwarder.chunks
        return SseBytes(b"".join(state.held), state.chunks, state.usage, state.done), state.failure

    def due(self) -> float | None:
        """When this exchange fails unless something arrives (the watch's question): the first-token
        deadline until the first token, then `idle_timeout_s` after the read in progress began; None while
        no read waits (the caller is busy writing) or before a connection carries the request (the pool
        bounds that wait)."""
        if self._conn is None:
            return None
        if self.produced == 0:
            return self._first_token_deadline
        since = self._waiting_since
        if since is None:
            return None
        relay = self._relay
        if relay is not None and relay.last_at > since:
            since = relay.last_at  # a token relayed since the read began: progress
        return since + self._idle_timeout_s

    def expire(self) -> None:
        """Past `due`: the waiting read (or the next one) fails with the timeout."""
        conn = self._conn
        if conn is not None:
            conn.abort(_FirstTokenTimeout() if self.produced == 0 else _IdleTimeout())
        self._deadlines.discard(self)

    def _on_connection(self, conn: Http1Connection) -> None:
        self._conn = conn  # the connection the watch aborts at the first-token deadline

    def finish(self) -> None:
        self._deadlines.discard(self)
        conn, self._conn = self._conn, None
        if conn is not None:
            # read to its end: the connection goes back to the pool (once the engine's closing bytes
            # arrive); abandoned or broken: it is closed, so the engine sees the disconnect
            self._pool.release(conn, body_consumed=self.completed)
