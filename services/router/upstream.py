"""The router's client to engine instances: one pooled aiohttp session, streaming completions.

Role: POST a streaming `/v1/completions` (or `/v1/chat/completions`) request to an instance's
OpenAI-compatible endpoint, either a node-agent's engine server (`.../instances/<id>`) or any
OpenAI-compatible server such as vLLM, and yield what arrives: decoded `TokenChunk`s
(`stream_completion`, for answers the router assembles itself) or the engine's own events as bytes
(`stream_sse`, the streaming hot path, which forwards them without decoding each token).

Every wait is bounded (a router without upstream timeouts hangs on one stalled engine): connecting,
the first token (an absolute deadline that covers the connection pool, the response headers and the
engine's queue and prefill), and each gap between later reads. Every failure is an `UpstreamError` that
says what failed and whether a token had already been produced, so the router retries another instance
only when the client has seen nothing yet. Closing the generator (`aclose`) closes the connection,
which is how the engine learns that the request was abandoned.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from opscale.runtime.live.openai_schema import SseDecoder, SseError, TokenChunk

from opscale_services.router.sse_passthrough import SseBytes, SseForwarder, decode_event

__all__ = ["SseBytes", "UpstreamClient", "UpstreamConfig", "UpstreamError", "UpstreamErrorKind", "completion_url"]

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
                 status: int | None = None, endpoint: str = "") -> None:
        super().__init__(f"{kind}: {message}" + (f" ({endpoint})" if endpoint else ""))
        self.kind: UpstreamErrorKind = kind
        self.message = message
        self.before_first_token = before_first_token
        self.status = status
        self.endpoint = endpoint

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


def completion_url(endpoint_url: str, body: Mapping[str, Any]) -> str:
    """The URL to POST to. `endpoint_url` is an instance's OpenAI base (`http://h:p/instances/i-1`,
    `http://vllm:8000`, with or without `/v1`) or already a full completions URL."""
    base = endpoint_url.rstrip("/")
    if base.endswith(("/v1/completions", "/v1/chat/completions")):
        return base
    path = "chat/completions" if "messages" in body else "completions"
    return f"{base}/{path}" if base.endswith("/v1") else f"{base}/v1/{path}"


class UpstreamClient:
    """One pooled HTTP session to every engine instance. Use `async with UpstreamClient(...)`, or
    `start()` and `close()` around its use; the session is bound to the running event loop."""

    def __init__(self, config: UpstreamConfig | None = None) -> None:
        self.config = config or UpstreamConfig()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        cfg = self.config
        connector = aiohttp.TCPConnector(limit=cfg.max_connections, limit_per_host=cfg.max_connections_per_host,
                                         keepalive_timeout=cfg.keepalive_s)
        # No total or read timeout here: a stream lasts as long as its tokens flow; the per-read
        # deadlines in stream_completion bound every wait instead.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout_s)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> UpstreamClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def stream_completion(self, endpoint_url: str, body: Mapping[str, Any],
                                headers: Mapping[str, str] | None = None) -> AsyncIterator[TokenChunk]:
        """Stream one completion from an instance as decoded tokens; see the module docstring for the
        failure modes.

        `body` is an OpenAI request body (`ParsedRequest.upstream_body()`); `stream` is forced on.
        `headers` carries trace context and `x-request-id`. Chunks are numbered from 0 in `index`.
        """
        exchange = self._exchange(endpoint_url, body, headers)
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
        finally:
            exchange.finish()

    async def stream_sse(self, endpoint_url: str, body: Mapping[str, Any],
                         headers: Mapping[str, str] | None = None) -> AsyncIterator[SseBytes]:
        """Stream one completion from an instance as the engine's own server-sent events, whole events
        at a time, for the router to forward unchanged (see sse_passthrough). Failures, timeouts and
        `before_first_token` are as in `stream_completion`; nothing is yielded before the first output
        chunk, and the last block yielded ends with `[DONE]`."""
        exchange = self._exchange(endpoint_url, body, headers)
        forwarder = SseForwarder(self.config.max_event_bytes)
        try:
            await exchange.open()
            while not exchange.completed:
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
                    yield block.out
                if block.failure is not None:
                    exchange.produced = forwarder.chunks
                    raise exchange.fail(block.failure.kind, block.failure.message)  # type: ignore[arg-type]
        finally:
            exchange.finish()

    def _exchange(self, endpoint_url: str, body: Mapping[str, Any],
                  headers: Mapping[str, str] | None) -> _Exchange:
        if self._session is None:
            raise RuntimeError("UpstreamClient.stream_completion called before start()")
        payload = dict(body)
        payload["stream"] = True
        return _Exchange(self, self._session, completion_url(endpoint_url, body), payload,
                         {"Accept": "text/event-stream", **(headers or {})})

    async def error_detail(self, response: aiohttp.ClientResponse, deadline: float) -> str:
        """The message of an error answer (OpenAI body or plain text), bounded in size and time."""
        try:
            async with asyncio.timeout_at(deadline):
                raw = await response.content.read(self.config.max_error_body_bytes)
        except (TimeoutError, aiohttp.ClientError):
            return response.reason or "no body"
        text = raw.decode("utf-8", errors="replace")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return text.strip()[:500] or (response.reason or "no body")
        if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
            return str(obj["error"].get("message", ""))[:500]
        return text[:500]


class _Exchange:
    """One request to an instance: the POST, bounded reads, and the connection's fate at the end.

    `produced` is how many output chunks reached the caller (a failure with none is retryable);
    `completed` is set once the stream was read to its end, so the connection is reused."""

    __slots__ = ("_client", "_first_token_deadline", "_headers", "_payload", "_response", "_session",
                 "completed", "produced", "url")

    def __init__(self, client: UpstreamClient, session: aiohttp.ClientSession, url: str,
                 payload: dict[str, Any], headers: dict[str, str]) -> None:
        self._client = client
        self._session = session
        self.url = url
        self._payload = payload
        self._headers = headers
        self._response: aiohttp.ClientResponse | None = None
        self._first_token_deadline = asyncio.get_running_loop().time() + client.config.first_token_timeout_s
        self.produced = 0
        self.completed = False

    def fail(self, kind: UpstreamErrorKind, message: str, status: int | None = None) -> UpstreamError:
        return UpstreamError(kind, message, before_first_token=self.produced == 0, status=status, endpoint=self.url)

    async def open(self) -> None:
        """Send the request and check the answer's status (an error answer raises with its message)."""
        cfg = self._client.config
        try:
            async with asyncio.timeout_at(self._first_token_deadline):
                self._response = await self._session.post(self.url, json=self._payload, headers=self._headers)
        except TimeoutError as exc:
            raise self.fail("timeout", f"no response within {cfg.first_token_timeout_s:g} s") from exc
        except aiohttp.ClientConnectionError as exc:
            raise self.fail("connect", f"{type(exc).__name__}: {exc}") from exc
        if self._response.status != 200:
            detail = await self._client.error_detail(self._response, self._first_token_deadline)
            raise self.fail("status", f"HTTP {self._response.status}: {detail}", status=self._response.status)

    async def read(self) -> bytes:
        """The bytes that arrived (b"" at the end), within the first-token deadline or the idle timeout."""
        assert self._response is not None
        cfg = self._client.config
        try:
            if self.produced == 0:
                async with asyncio.timeout_at(self._first_token_deadline):
                    return await self._response.content.readany()
            async with asyncio.timeout(cfg.idle_timeout_s):
                return await self._response.content.readany()
        except TimeoutError as exc:
            waited = cfg.first_token_timeout_s if self.produced == 0 else cfg.idle_timeout_s
            what = "first token" if self.produced == 0 else "next token"
            raise self.fail("timeout", f"no {what} within {waited:g} s") from exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise self.fail("protocol", f"stream broken: {type(exc).__name__}: {exc}") from exc

    def finish(self) -> None:
        if self._response is None:
            return
        if self.completed:
            self._response.release()  # fully read: the connection goes back to the pool
        else:
            self._response.close()  # abandoned or broken: drop it, so the engine sees the disconnect
