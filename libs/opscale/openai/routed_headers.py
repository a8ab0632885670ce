"""What the router tells an engine server about each request it forwards, in HTTP request headers.

Role: one definition of the header names and their rules, imported by the router (which sets them on
the upstream request) and by the node-agent's engine servers (which read and validate them). They carry
the facts the router owns, so that no later hop works them out again, differently:

- `x-request-id`: the router's request id; a direct client that sends none gets a fresh id.
- `x-opscale-tier`: the request's tier (the router read the body's `opscale_tier`); without it, the
  body's `opscale_tier`, else `interactive`.
- `x-opscale-region`: the origin region, the same header a client may send the router (which otherwise
  uses its own region); without it, the node-agent's region.
- `x-opscale-prompt-tokens`: the router's prompt-token estimate; without it, the engine server's own.

A header with a bad value is a 400 whose message and `param` name the header. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from opscale.model import Request
from opscale.openai.schema import REGION_HEADER, ApiError, invalid_request, name_header

__all__ = [
    "PROMPT_TOKENS_HEADER", "REGION_HEADER", "REQUEST_ID_HEADER", "TIER_HEADER", "RoutedFacts",
    "parse_routed_headers", "routed_headers",
]

REQUEST_ID_HEADER = "x-request-id"
TIER_HEADER = "x-opscale-tier"
PROMPT_TOKENS_HEADER = "x-opscale-prompt-tokens"

# Request ids appear in logs, span attributes and engine request ids: a safe alphabet, a bounded length.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Up to 9 digits: beyond any context window, and never a number too large to handle.
_TOKENS_RE = re.compile(r"^[0-9]{1,9}$")


@dataclass(frozen=True, slots=True)
class RoutedFacts:
    """The facts the router fixed for a request, as an engine server read them; None where the
    request came without that header (a direct client)."""

    request_id: str | None = None
    tier: str | None = None
    region: str | None = None
    prompt_tokens: int | None = None


def routed_headers(request: Request) -> dict[str, str]:
    """The headers the router sets on the upstream request for `request`."""
    return {
        REQUEST_ID_HEADER: request.request_id,
        TIER_HEADER: request.tier,
        REGION_HEADER: request.region,
        PROMPT_TOKENS_HEADER: str(request.prompt_tokens),
    }


def parse_routed_headers(headers: Mapping[str, str]) -> RoutedFacts | ApiError:
    """Read and check the routed headers. `headers` is any case-insensitive mapping (aiohttp's
    `request.headers`); a plain dict must use lower-case keys. Never raises on bad input."""
    request_id = headers.get(REQUEST_ID_HEADER)
    if request_id is not None and not _REQUEST_ID_RE.match(request_id):
        return invalid_request(
            f"header {REQUEST_ID_HEADER}: must be 1-128 characters of letters, digits, '.', '_', ':' or '-', "
            f"got {request_id[:80]!r}", param=REQUEST_ID_HEADER)
    tier = name_header(headers, TIER_HEADER)
    if isinstance(tier, ApiError):
        return tier
    region = name_header(headers, REGION_HEADER)
    if isinstance(region, ApiError):
        return region
    raw_tokens = headers.get(PROMPT_TOKENS_HEADER)
    prompt_tokens = None
    if raw_tokens is not None:
        if not _TOKENS_RE.match(raw_tokens) or int(raw_tokens) < 1:
            return invalid_request(
                f"header {PROMPT_TOKENS_HEADER}: must be a whole number of tokens from 1 to 999999999, "
                f"got {raw_tokens[:80]!r}", param=PROMPT_TOKENS_HEADER)
        prompt_tokens = int(raw_tokens)
    return RoutedFacts(request_id, tier, region, prompt_tokens)
