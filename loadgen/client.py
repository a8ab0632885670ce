"""Sending one trace request to an OpenAI-compatible endpoint and measuring it (aiohttp).

`send_request` posts the streaming body, stamps the send, the first token, every later token and the
end on the replay clock, and returns a `LatencyRecord` whatever happens: every failure becomes an
error class (`RequestStatus`), never an exception, so the replay's accounting is exact. Before an answer
arrives a lost connection is a `connect_error`; after the status line it is a `stream_cut`.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from opscale.model import Request
from opscale.openai.schema import REGION_HEADER
from opscale.openai.sse import SSE_CONTENT_TYPE, SseDecoder, SseError
from opscale.reporting.latency_report import LatencyRecord, RequestStatus
from opscale.traces.reading import UNLABELLED

from opscale_loadgen.clock import ReplayClock
from opscale_loadgen.prompts import ApiKind, request_body
from opscale_loadgen.stream import StreamProblem, StreamTally

# An error body longer than this is cut in the report: the message, not the whole page, is wanted.
_ERROR_BODY_BYTES = 2048
_ERROR_TEXT_CHARS = 200
# Region names the router accepts in its header; others are not sent (the router would answer 400).
_REGION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class EndpointError(ValueError):
    """A base URL that is not an http(s) endpoint."""


def endpoint_base(url: str) -> str:
    """`http://host:port` (plus any path prefix) from a user's URL; a trailing `/v1` is dropped, since the
    API paths add it. Raises EndpointError naming what is wrong."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise EndpointError(f"--url {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise EndpointError(f"--url {url!r}: expected an http:// or https:// URL, e.g. http://127.0.0.1:8000")
    if not parts.hostname:
        raise EndpointError(f"--url {url!r}: no host name")
    if parts.query or parts.fragment:
        raise EndpointError(f"--url {url!r}: a base URL takes no query or fragment")
    path = parts.path.rstrip("/").removesuffix("/v1")
    return f"{parts.scheme}://{parts.netloc}{path}"


@dataclass(frozen=True, slots=True)
class SendOptions:
    """How each request is sent. `model` replaces every trace model when set; `extras` adds what opscale
    and vLLM accept (tier, region header, ignore_eos); `timeout_s` bounds a request from send to end."""

    base_url: str
    api: ApiKind = ApiKind.CHAT
    model: str | None = None
    extras: bool = True
    timeout_s: float = 300.0


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_TEXT_CHARS else text[: _ERROR_TEXT_CHARS - 3] + "..."


async def send_request(session: aiohttp.ClientSession, request: Request, scheduled_s: float, clock: ReplayClock,
                       options: SendOptions) -> LatencyRecord:
    """Send `request` now and measure it; `scheduled_s` is when the trace clock wanted it sent."""
    body = request_body(request, options.api, model=options.model, extras=options.extras)
    headers = {}
    # a trace that names no region (UNLABELLED) sends none: the router's own region is the origin
    if options.extras and request.region != UNLABELLED and _REGION_RE.match(request.region):
        headers[REGION_HEADER] = request.region
    tally = StreamTally()
    decoder = SseDecoder()
    answered = False
    http_status: int | None = None
    sent_s = clock.now()

    def record(status: RequestStatus, error: str = "", finish_s: float | None = None) -> LatencyRecord:
        return LatencyRecord(
            request_id=request.request_id, tier=request.tier, arrival_s=sent_s,
            first_token_s=tally.first_token_s, finish_s=finish_s, output_tokens=tally.output_tokens,
            status=status, model=body["model"], prompt_tokens=request.prompt_tokens,
            requested_tokens=request.output_tokens, scheduled_s=scheduled_s, http_status=http_status,
            error=error, token_gaps_s=tuple(tally.gaps_s))

    try:
        async with asyncio.timeout(options.timeout_s):
            async with session.post(options.base_url + options.api.path, json=body, headers=headers) as resp:
                answered = True
                http_status = resp.status
                if resp.status != 200:
                    text = (await resp.content.read(_ERROR_BODY_BYTES)).decode("utf-8", "replace")
                    status = RequestStatus.HTTP_5XX if resp.status >= 500 else (
                        RequestStatus.HTTP_4XX if resp.status >= 400 else RequestStatus.PROTOCOL_ERROR)
                    return record(status, _cut(text))
                if not resp.content_type.startswith(SSE_CONTENT_TYPE):
                    return record(RequestStatus.PROTOCOL_ERROR,
                                  f"expected a {SSE_CONTENT_TYPE} stream, got {resp.content_type or 'no type'}")
                async for chunk in resp.content.iter_any():
                    at_s = clock.now()
                    for data in decoder.feed(chunk):
                        tally.feed(data, at_s)
                    if tally.ended:
                        break
    except TimeoutError:
        return record(RequestStatus.TIMEOUT, f"no complete answer within {options.timeout_s:g} s")
    except (StreamProblem, SseError) as exc:
        return record(RequestStatus.PROTOCOL_ERROR, _cut(str(exc)))
    except aiohttp.ClientError as exc:
        status = RequestStatus.STREAM_CUT if answered else RequestStatus.CONNECT_ERROR
        return record(status, _cut(f"{type(exc).__name__}: {exc}"))
    end_s = clock.now()
    if tally.error is not None:
        return record(RequestStatus.STREAM_ERROR, _cut(tally.error))
    if not tally.done:
        return record(RequestStatus.STREAM_CUT, "the stream ended without data: [DONE]")
    return record(RequestStatus.OK, finish_s=end_s)
