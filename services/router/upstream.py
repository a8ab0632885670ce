"""The router's client to engine instances: one pooled aiohttp session, streaming completions.

Role: POST a streaming `/v1/completions` (or `/v1/chat/completions`) request to an instance's
OpenAI-compatible endpoint, either a node-agent's engine server (`.../instances/<id>`) or any
OpenAI-compatible server such as vLLM, and yield its tokens as `TokenChunk`s while the server-sent
events arrive.

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
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from opscale.runtime.live.openai_schema import SseDecoder, SseError, TokenChunk

__all__ = ["UpstreamClient", "UpstreamConfig", "UpstreamError", "UpstreamErrorKind", "completion_url"]

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
        """Stream one completion from an instance; see the module docstring for the failure modes.

        `body` is an OpenAI request body (`ParsedRequest.upstream_body()`); `stream` is forced on.
        `headers` carries trace context and `x-request-id`. Chunks are numbered from 0 in `index`.
        """
        if self._session is None:
            raise RuntimeError("UpstreamClient.stream_completion called before start()")
        session = self._session
        cfg = self.config
        url = completion_url(endpoint_url, body)
        payload = dict(body)
        payload["stream"] = True
        request_headers = {"Accept": "text/event-stream", **(headers or {})}
        loop = asyncio.get_running_loop()
        first_token_deadline = loop.time() + cfg.first_token_timeout_s
        produced = 0
        completed = False
        response: aiohttp.ClientResponse | None = None

        def fail(kind: UpstreamErrorKind, message: str, status: int | None = None) -> UpstreamError:
            return UpstreamError(kind, message, before_first_token=produced == 0, status=status, endpoint=url)

        try:
            try:
                async with asyncio.timeout_at(first_token_deadline):
                    response = await session.post(url, json=payload, headers=request_headers)
            except TimeoutError as exc:
                raise fail("timeout", f"no response within {cfg.first_token_timeout_s:g} s") from exc
            except aiohttp.ClientConnectionError as exc:
                raise fail("connect", f"{type(exc).__name__}: {exc}") from exc
            if response.status != 200:
                detail = await self._error_detail(response, first_token_deadline)
                raise fail("status", f"HTTP {response.status}: {detail}", status=response.status)

            decoder = SseDecoder(cfg.max_event_bytes)
            finished = False
            while not completed:
                try:
                    if produced == 0:
                        async with asyncio.timeout_at(first_token_deadline):
                            data = await response.content.readany()
                    else:
                        async with asyncio.timeout(cfg.idle_timeout_s):
                            data = await response.content.readany()
                except TimeoutError as exc:
                    waited = cfg.first_token_timeout_s if produced == 0 else cfg.idle_timeout_s
                    what = "first token" if produced == 0 else "next token"
                    raise fail("timeout", f"no {what} within {waited:g} s") from exc
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                    raise fail("protocol", f"stream broken: {type(exc).__name__}: {exc}") from exc
                if not data:
                    if finished and not decoder.pending:
                        completed = True  # a server that closes after the last chunk without [DONE]
                        break
                    raise fail("protocol", f"stream ended before [DONE] after {produced} chunks")
                try:
                    events = decoder.feed(data)
                except SseError as exc:
                    raise fail("protocol", str(exc)) from exc
                for event in events:
                    if event == "[DONE]":
                        completed = True
                        break
                    decoded = _decode_event(event)
                    if isinstance(decoded, tuple):
                        text, finish_reason = decoded
                        finished = finished or finish_reason is not None
                        yield TokenChunk(text, produced, finish_reason)
                        produced += 1
                    elif decoded is not None:
                        raise fail(decoded.kind, decoded.message)
        finally:
            if response is not None:
                if completed:
                    response.release()  # fully read: the connection goes back to the pool
                else:
                    response.close()  # abandoned or broken: drop it, so the engine sees the disconnect

    async def _error_detail(self, response: aiohttp.ClientResponse, deadline: float) -> str:
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


@dataclass(frozen=True, slots=True)
class _EventFailure:
    """A failure found in one event."""

    kind: UpstreamErrorKind
    message: str


def _decode_event(data: str) -> tuple[str, str | None] | _EventFailure | None:
    """(text, finish_reason) of a token event, None for an event without output (a chat role-only
    delta, a usage chunk), or the failure it reports."""
    try:
        obj = json.loads(data)
    except json.JSONDecodeError:
        return _EventFailure("protocol", f"event is not JSON: {data[:200]!r}")
    if not isinstance(obj, dict):
        return _EventFailure("protocol", f"event is not a JSON object: {data[:200]!r}")
    error = obj.get("error")
    if error is not None:
        message = error.get("message") if isinstance(error, dict) else error
        return _EventFailure("status", f"engine reported an error mid-stream: {message}")
    choices = obj.get("choices")
    if not choices:
        return None
    if not isinstance(choices, list) or not isinstance(choices[0], dict):
        return _EventFailure("protocol", f"malformed choices: {data[:200]!r}")
    choice = choices[0]
    text = choice.get("text")
    if text is None:
        delta = choice.get("delta")
        text = (delta.get("content") if isinstance(delta, dict) else None) or ""
    finish_reason = choice.get("finish_reason")
    if not isinstance(text, str) or not (finish_reason is None or isinstance(finish_reason, str)):
        return _EventFailure("protocol", f"malformed choice: {data[:200]!r}")
    if not text and finish_reason is None:
        return None
    return text, finish_reason
