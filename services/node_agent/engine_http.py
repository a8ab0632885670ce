"""The OpenAI-compatible HTTP server of the instances a node-agent hosts (aiohttp).

Role: expose each instance at `/instances/{instance_id}/v1/completions` and
`/instances/{instance_id}/v1/chat/completions` (streaming and not), so that the router reaches a
simulated engine exactly as it reaches vLLM. An instance's endpoint, as advertised in heartbeats, is
`http://<advertise_host>:<port>/instances/<instance_id>`.

The engine itself is behind `EngineHost`: it yields the running count of output tokens as the engine
produces them. The simulated engine produces no text, so each token's text is synthetic (`" tok1"`,
`" tok2"`, ...). Unknown instances answer 404 and draining or loading ones 503, with OpenAI error
bodies. When the client (the router) disconnects, the host's generator is closed (`aclose`), which is
how the engine drops the request.

The router's request id, tier, origin region and prompt-token estimate arrive in request headers
(routed_headers.py) and the engine serves the request under them; a direct client that sends none gets
a fresh id, the body's tier (default `interactive`), the node-agent's region and this server's own
estimate. A bad header value is a 400 naming the header.

Disaggregated instances serve one step each of vLLM's `kv_transfer_params` protocol
(opscale.openai.kv_transfer): a prefill instance answers a prefill step (`do_remote_decode`) with one
JSON completion whose `kv_transfer_params` say where its KV is; a decode instance serves a decode step
(`do_remote_prefill`, those parameters) like any request, streamed or not. A whole request sent to
either, or a step sent to an instance of the other role, is a 400 that says so (code `wrong_role`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from aiohttp import web

from opscale.openai.kv_transfer import KV_TRANSFER_PARAMS, KvStep, kv_step
from opscale.openai.prefix_blocks import prefix_block_hashes
from opscale.openai.routed_headers import REQUEST_ID_HEADER, parse_routed_headers
from opscale.openai.schema import (
    ApiError,
    ParsedRequest,
    RequestKind,
    completion_response,
    error_for_status,
    finish_reason_for,
    internal_error,
    parse_completion,
    read_limited,
)
from opscale.openai.stream import OpenAIStreamWriter, error_events
from opscale.runtime.live.openai_http import (
    REQUEST_ID_KEY,
    aclose_quietly,
    error_response,
    make_runner,
    openai_errors_middleware,
    sse_response,
    unix_now_s,
)

__all__ = [
    "BadKvTransfer", "EngineHost", "EngineRequest", "InstanceNotAccepting", "PrefillEngineHost", "RequestTooLarge",
    "UnknownInstance", "WrongRole", "build_engine_app", "make_runner", "token_text",
]

log = logging.getLogger(__name__)


DEFAULT_MAX_BODY_BYTES = 1 << 20
_READ_CHUNK_BYTES = 64 * 1024
# A draining or loading instance may take other work soon; clients should wait this long before retrying.
_NOT_ACCEPTING_RETRY_AFTER_S = 1.0


class UnknownInstance(Exception):
    """No instance with this id runs on this node-agent."""


class InstanceNotAccepting(Exception):
    """The instance exists but takes no new requests (loading, draining or stopping); raised
    mid-stream, the instance was stopped under the request."""


class RequestTooLarge(Exception):
    """The prompt plus `max_tokens` do not fit the instance's context window: the client's fault (400)."""


class WrongRole(Exception):
    """The request is not one this instance's role serves: a whole request to a prefill or decode
    instance, or a prefill or decode step to an instance of another role (400)."""


class BadKvTransfer(Exception):
    """A decode step whose `kv_transfer_params` cannot be read (400 naming the field)."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """One request for an engine: the router's id, tier, origin region (None: the host's own region)
    and prompt-token count, and the output bound."""

    request_id: str
    tier: str
    region: str | None
    prompt_tokens: int
    max_tokens: int
    # a decode step: the `kv_transfer_params` of the prefill instance's answer; None for a whole request
    kv_transfer: Mapping[str, Any] | None = None
    # the prompt's prefix blocks (opscale.openai.prefix_blocks), for an engine with a prefix cache
    prefix_hashes: tuple[int, ...] = ()


class EngineHost(Protocol):
    """The node-agent's engines, as this server needs them.

    `generate` is an async generator: it raises `UnknownInstance`, `InstanceNotAccepting` or
    `RequestTooLarge` before its first value, then yields the number of output tokens produced so far each time the engine
    produces some (1, 2, 3, ... or larger steps), and returns when the request is finished. Closing it
    early cancels the request in the engine.
    """

    def generate(self, instance_id: str, request: EngineRequest) -> AsyncIterator[int]: ...


@runtime_checkable
class PrefillEngineHost(EngineHost, Protocol):
    """A host that also runs prefill instances: `prefill` runs the prefill step of `request` and returns
    the `kv_transfer_params` for its decode step; it raises as `generate` does before its first value,
    and `WrongRole` when the instance is not a prefill instance."""

    async def prefill(self, instance_id: str, request: EngineRequest) -> dict[str, Any]: ...


def token_text(position: int) -> str:
    """The synthetic text of the `position`-th output token (1-based)."""
    return f" tok{position}"


def build_engine_app(
    host: EngineHost,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    wall_clock_s: Callable[[], float] = unix_now_s,
    prefix_block_tokens: int = 0,
) -> web.Application:
    """The engine server app for every instance of `host`. `prefix_block_tokens` > 0: each request's
    prompt is hashed into prefix blocks of that many tokens for the engines' prefix cache (the engines'
    EngineConfig.prefix_block_tokens; 0: engines without one)."""
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
    server = _EngineServer(host, max_body_bytes, wall_clock_s, prefix_block_tokens)
    app = web.Application(client_max_size=max_body_bytes, middlewares=[openai_errors_middleware])
    app.router.add_post("/instances/{instance_id}/v1/completions", server.completions)
    app.router.add_post("/instances/{instance_id}/v1/chat/completions", server.chat_completions)
    return app


class _EngineServer:
    """The handlers, bound to one host. One instance per app: no module-level state."""

    def __init__(self, host: EngineHost, max_body_bytes: int, wall_clock_s: Callable[[], float],
                 prefix_block_tokens: int = 0) -> None:
        self._host = host
        self._prefix_block_tokens = prefix_block_tokens
        self._max_body_bytes = max_body_bytes
        self._wall_clock_s = wall_clock_s

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, RequestKind.COMPLETION)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, RequestKind.CHAT)

    async def _generate(self, request: web.Request, kind: RequestKind) -> web.StreamResponse:
        instance_id = request.match_info["instance_id"]
        raw = await read_limited(request.content.iter_chunked(_READ_CHUNK_BYTES), request.content_length,
                                 self._max_body_bytes)
        if isinstance(raw, ApiError):
            return error_response(raw)
        routed = parse_routed_headers(request.headers)
        if isinstance(routed, ApiError):
            return error_response(routed)
        parsed = parse_completion(raw, kind, request_id=routed.request_id, prompt_tokens=routed.prompt_tokens)
        if isinstance(parsed, ApiError):
            return error_response(parsed)
        request[REQUEST_ID_KEY] = parsed.request_id
        step = kv_step(parsed.body)
        engine_request = EngineRequest(parsed.request_id, routed.tier or parsed.tier, routed.region,
                                       parsed.prompt_tokens, parsed.max_tokens,
                                       parsed.body[KV_TRANSFER_PARAMS] if step is KvStep.DECODE else None,
                                       prefix_block_hashes(parsed.body, self._prefix_block_tokens))
        if step is KvStep.PREFILL:
            return await self._prefill(instance_id, parsed, engine_request)

        counts = self._host.generate(instance_id, engine_request)
        try:
            # Wait for the first token before sending headers: an unknown or draining instance must
            # still be able to answer with its status, and the router's first-token deadline covers it.
            try:
                first = await anext(counts, None)
            except (UnknownInstance, InstanceNotAccepting, RequestTooLarge, WrongRole, BadKvTransfer) as exc:
                return error_response(_refusal(instance_id, exc))
            if parsed.stream:
                return await self._stream(request, parsed, first, counts)
            return await self._collect(parsed, first, counts)
        finally:
            await aclose_quietly(counts)

    async def _prefill(self, instance_id: str, req: ParsedRequest, engine_request: EngineRequest) -> web.Response:
        """A prefill step: one completion (the first token) that carries where the KV is."""
        host = self._host
        if not isinstance(host, PrefillEngineHost):
            return error_response(_refusal(instance_id, WrongRole("this server runs no prefill instances")))
        try:
            params = await host.prefill(instance_id, engine_request)
        except (UnknownInstance, InstanceNotAccepting, RequestTooLarge, WrongRole) as exc:
            return error_response(_refusal(instance_id, exc))
        body = completion_response(req, token_text(1), "length", 1, int(self._wall_clock_s()))
        body[KV_TRANSFER_PARAMS] = params
        return web.json_response(body, headers={REQUEST_ID_HEADER: req.request_id})

    async def _collect(self, req: ParsedRequest, first: int | None, counts: AsyncIterator[int]) -> web.Response:
        produced = 0
        count = first
        while count is not None:
            produced = max(produced, min(count, req.max_tokens))
            count = await anext(counts, None)
        text = "".join(token_text(i) for i in range(1, produced + 1))
        body = completion_response(req, text, finish_reason_for(produced, req.max_tokens), produced,
                                   int(self._wall_clock_s()))
        return web.json_response(body, headers={REQUEST_ID_HEADER: req.request_id})

    async def _stream(self, request: web.Request, req: ParsedRequest, first: int | None,
                      counts: AsyncIterator[int]) -> web.StreamResponse:
        writer = OpenAIStreamWriter(req, int(self._wall_clock_s()))
        response = sse_response(req.request_id)
        produced = 0
        try:
            await response.prepare(request)
            count = first
            while count is not None:
                # One event per token, sent as soon as it exists: the router measures time between
                # tokens on these events. The last token carries `length` when the limit is reached.
                count = min(count, req.max_tokens)  # an engine overshooting the limit is not passed on
                for position in range(produced + 1, count + 1):
                    reason = "length" if position >= req.max_tokens else None
                    await response.write(writer.chunk(token_text(position), reason))
                produced = max(produced, count)
                count = await self._next_count(req, counts, produced)
                if isinstance(count, ApiError):
                    await response.write(error_events(count))
                    await response.write_eof()
                    return response
            # An engine that stopped before the limit gets a closing chunk that says so (`stop`).
            await response.write(writer.end())
            await response.write_eof()
        except ConnectionResetError:
            log.info("client of request %s disconnected after %d tokens", req.request_id, produced)
        return response

    @staticmethod
    async def _next_count(req: ParsedRequest, counts: AsyncIterator[int], produced: int) -> int | ApiError | None:
        try:
            return await anext(counts, None)
        except (UnknownInstance, InstanceNotAccepting) as exc:
            # The instance was stopped under the request: expected during scale-in, not a bug.
            log.info("request %s ended after %d tokens: %s", req.request_id, produced, exc)
            return error_for_status(503, f"The instance stopped while serving the request: {exc}",
                                    code="instance_not_accepting")
        except Exception:
            log.exception("engine failed mid-stream on request %s after %d tokens", req.request_id, produced)
            return internal_error(req.request_id)


def _refusal(instance_id: str, exc: Exception) -> ApiError:
    """The error answer for a request the instance refuses before its first token."""
    if isinstance(exc, UnknownInstance):
        return error_for_status(404, f"No instance '{instance_id}' on this node", param="instance_id",
                                code="instance_not_found")
    if isinstance(exc, InstanceNotAccepting):
        detail = f": {exc}" if str(exc) else ""
        return error_for_status(503, f"Instance '{instance_id}' is not accepting requests{detail}",
                                code="instance_not_accepting", retry_after_s=_NOT_ACCEPTING_RETRY_AFTER_S)
    if isinstance(exc, BadKvTransfer):
        return exc.error
    if isinstance(exc, WrongRole):
        return error_for_status(400, f"Instance '{instance_id}' cannot serve this request: {exc}",
                                param=KV_TRANSFER_PARAMS, code="wrong_role")
    return error_for_status(400, f"The request does not fit instance '{instance_id}': {exc}", param="max_tokens",
                            code="context_length_exceeded")
