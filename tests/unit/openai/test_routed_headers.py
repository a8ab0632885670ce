"""The headers that carry the router's request id, tier, origin region and prompt-token count to an
engine server: what the router sets reads back the same, absent headers leave the defaults to the
server, and a bad value is a 400 that names the header."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from opscale.model import Request
from opscale.openai.routed_headers import (
    PROMPT_TOKENS_HEADER,
    REGION_HEADER,
    REQUEST_ID_HEADER,
    TIER_HEADER,
    RoutedFacts,
    parse_routed_headers,
    routed_headers,
)
from opscale.openai.schema import ApiError

pytestmark = pytest.mark.unit


def test_what_the_router_sets_reads_back_unchanged_whatever_the_header_case() -> None:
    request = Request("chatcmpl-0af7", "llama", "batch", "us-east", 12.5, 321, 64)
    sent = routed_headers(request)
    assert set(sent) == {REQUEST_ID_HEADER, TIER_HEADER, REGION_HEADER, PROMPT_TOKENS_HEADER}
    as_received = CIMultiDict((name.title(), value) for name, value in sent.items())  # X-Opscale-Tier, ...
    assert parse_routed_headers(as_received) == RoutedFacts("chatcmpl-0af7", "batch", "us-east", 321)


def test_a_direct_client_without_the_headers_leaves_every_fact_to_the_server() -> None:
    assert parse_routed_headers({"content-type": "application/json"}) == RoutedFacts()


@pytest.mark.parametrize(("header", "value"), [
    (REQUEST_ID_HEADER, "id with spaces"),
    (REQUEST_ID_HEADER, "x" * 129),
    (TIER_HEADER, "batch.low"),
    (TIER_HEADER, ""),
    (REGION_HEADER, "eu west"),
    (PROMPT_TOKENS_HEADER, "0"),
    (PROMPT_TOKENS_HEADER, "-3"),
    (PROMPT_TOKENS_HEADER, "12.5"),
    (PROMPT_TOKENS_HEADER, "1234567890"),
])
def test_a_bad_value_is_a_400_naming_the_header_and_the_value(header: str, value: str) -> None:
    error = parse_routed_headers({header: value})
    assert isinstance(error, ApiError)
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", header)
    assert error.message.startswith(f"header {header}: ") and repr(value[:80]) in error.message
