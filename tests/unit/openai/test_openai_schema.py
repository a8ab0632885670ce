"""The OpenAI wire format: request validation, error bodies, response builders, SSE encoding and decoding."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opscale.openai.schema import (
    DEFAULT_CHAT_MAX_TOKENS,
    DEFAULT_COMPLETION_MAX_TOKENS,
    ApiError,
    ParsedRequest,
    RequestKind,
    TokenChunk,
    body_too_large,
    completion_response,
    error_for_status,
    estimate_tokens,
    model_not_found,
    parse_completion,
    read_limited,
    stream_chunk,
    usage_chunk,
)
from opscale.openai.sse import SSE_DONE, SseDecoder, SseError, sse_event

pytestmark = pytest.mark.unit


def _parse(body: object, kind: str = "completion", headers: dict[str, str] | None = None) -> ParsedRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    result = parse_completion(raw, kind, headers=headers)
    assert isinstance(result, ParsedRequest), result
    return result


def _error(body: object, kind: str = "completion", headers: dict[str, str] | None = None) -> ApiError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    result = parse_completion(raw, kind, headers=headers)
    assert isinstance(result, ApiError), result
    return result


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "m", "prompt": "hello"}

# (kind, body, expected param, fragment of the message)
BAD_BODIES: list[tuple[str, object, str | None, str]] = [
    ("completion", b"{not json", None, "could not parse the JSON body"),
    ("completion", b"", None, "could not parse the JSON body"),
    ("completion", b"\xff\xfe", None, "not valid UTF-8"),
    ("completion", b"[1, 2]", None, "must be a JSON object, got a JSON array"),
    ("completion", b"null", None, "got a JSON null"),
    ("completion", {"prompt": "x"}, "model", "model: Field required"),
    ("completion", {"model": "m"}, "prompt", "prompt: Field required"),
    ("completion", {"model": 7, "prompt": "x"}, "model", "model: Input should be a valid string, got 7"),
    ("completion", {"model": "", "prompt": "x"}, "model", "model: String should have at least 1 character"),
    ("completion", {**COMPLETION, "max_tokens": -1}, "max_tokens", "greater than or equal to 1, got -1"),
    ("completion", {**COMPLETION, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ("completion", {**COMPLETION, "max_tokens": "16"}, "max_tokens", "valid integer"),
    ("completion", {**COMPLETION, "max_tokens": 1.5}, "max_tokens", "valid integer"),
    ("completion", {**COMPLETION, "max_tokens": 10**9}, "max_tokens", "less than or equal to"),
    ("completion", {**COMPLETION, "stream": "yes"}, "stream", 'valid boolean, got "yes"'),
    ("completion", {**COMPLETION, "n": 2}, "n", "only n=1 is supported"),
    ("completion", {**COMPLETION, "temperature": 3}, "temperature", "less than or equal to 2"),
    ("completion", b'{"model": "m", "prompt": "x", "temperature": NaN}', "temperature", "finite number"),
    ("completion", {**COMPLETION, "top_p": -0.1}, "top_p", "greater than or equal to 0"),
    ("completion", {**COMPLETION, "stop": ["a", 1]}, "stop[1]", "stop[1]: Input should be a valid string"),
    ("completion", {**COMPLETION, "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 stop sequences"),
    ("completion", {**COMPLETION, "stream_options": {"include_usage": "y"}}, "stream_options.include_usage",
     "valid boolean"),
    ("completion", {"model": "m", "prompt": ["a", "b"]}, "prompt", "only a single prompt per request"),
    ("completion", {"model": "m", "prompt": []}, "prompt", "must not be an empty list"),
    ("completion", {"model": "m", "prompt": 5}, "prompt", "must be a string or a list holding one string"),
    ("completion", {"model": "m", "prompt": [-1, 2]}, "prompt", "token ids must be >= 0"),
    ("completion", {**COMPLETION, "opscale_tier": "a.b"}, "opscale_tier", "tier must be 1-64 characters"),
    ("completion", {**COMPLETION, "opscale_tier": 3}, "opscale_tier", "valid string"),
    ("chat", {"model": "m"}, "messages", "messages: Field required"),
    ("chat", {"model": "m", "messages": []}, "messages", "at least 1 item"),
    ("chat", {"model": "m", "messages": "hi"}, "messages", "valid list"),
    ("chat", {"model": "m", "messages": [{"role": "user", "content": 123}]}, "messages[0].content",
     "messages[0].content: Input should be a valid string"),
    ("chat", {"model": "m", "messages": [{"role": "user"}]}, "messages[0].content",
     "messages[0].content: Field required"),
    ("chat", {"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role",
     "messages[0].role: Input should be"),
    ("chat", {"model": "m", "messages": [CHAT["messages"][0], {"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[1].content", "only text parts"),
    ("chat", {**CHAT, "max_completion_tokens": 0}, "max_completion_tokens", "greater than or equal to 1"),
    ("chat", {**CHAT, "max_tokens": -5}, "max_tokens", "greater than or equal to 1, got -5"),
]


@pytest.mark.parametrize(("kind", "body", "param", "fragment"), BAD_BODIES)
def test_bad_bodies_are_400_naming_the_field(kind: str, body: object, param: str | None, fragment: str) -> None:
    error = _error(body, kind)
    assert error.status == 400
    assert error.type == "invalid_request_error"
    assert error.param == param
    assert fragment in error.message
    assert set(error.body()) == {"error"}
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}


def test_several_errors_report_the_first_and_count_the_rest() -> None:
    error = _error({"model": 1, "prompt": 2, "max_tokens": -1})
    assert error.param == "model"
    assert error.message.endswith("(and 2 more errors)")


def test_region_header_is_validated_and_named() -> None:
    error = _error(COMPLETION, headers={"x-opscale-region": "eu west"})
    assert (error.status, error.param) == (400, "x-opscale-region")
    assert "header x-opscale-region" in error.message
    assert _parse(COMPLETION, headers={"x-opscale-region": "eu-west"}).region == "eu-west"
    assert _parse(COMPLETION, headers={}).region is None


def test_completion_defaults_and_fields() -> None:
    req = _parse(COMPLETION)
    assert req.kind is RequestKind.COMPLETION
    assert req.request_id.startswith("cmpl-")
    assert (req.model, req.max_tokens, req.stream, req.include_usage, req.tier) == (
        "m", DEFAULT_COMPLETION_MAX_TOKENS, False, False, "interactive")
    assert req.prompt_tokens == 2  # "hello": 5 characters -> ceil(5 / 4)


def test_completion_prompt_forms() -> None:
    assert _parse({"model": "m", "prompt": ["abcdefgh"]}).prompt_tokens == 2
    assert _parse({"model": "m", "prompt": [1, 2, 3]}).prompt_tokens == 3
    assert _parse({"model": "m", "prompt": [[4, 5]]}).prompt_tokens == 2
    assert _parse({"model": "m", "prompt": ""}).prompt_tokens == 1  # never below 1


def test_chat_fields_and_token_estimate() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},  # 8 chars -> 2 tokens
            {"role": "user", "content": [{"type": "text", "text": "abcd"}, {"type": "text", "text": "e"}]},  # 5 -> 2
            {"role": "assistant", "content": None},
        ],
        "max_tokens": 40,
        "max_completion_tokens": 30,
        "stream": True,
        "stream_options": {"include_usage": True},
        "opscale_tier": "batch",
    }
    req = _parse(body, "chat", headers={"x-opscale-region": "us-east"})
    assert req.request_id.startswith("chatcmpl-")
    assert req.max_tokens == 30  # max_completion_tokens wins
    assert (req.stream, req.include_usage, req.tier, req.region) == (True, True, "batch", "us-east")
    assert req.prompt_tokens == 3 + 3 * 4 + 2 + 2
    assert _parse(CHAT, "chat").max_tokens == DEFAULT_CHAT_MAX_TOKENS


def test_upstream_body_forwards_client_fields_without_opscale_extensions() -> None:
    req = _parse({**COMPLETION, "opscale_tier": "batch", "logit_bias": {"1": 2}, "stream_options": {}, "seed": 3})
    body = req.upstream_body(model="served-name")
    assert body == {"model": "served-name", "prompt": "hello", "logit_bias": {"1": 2}, "seed": 3, "stream": True,
                    "max_tokens": DEFAULT_COMPLETION_MAX_TOKENS}
    assert "stream" not in req.body  # the parsed request itself is unchanged


def test_as_request_uses_max_tokens_as_output_bound_and_default_region() -> None:
    request = _parse({**COMPLETION, "max_tokens": 7}).as_request(arrival_s=12.5, default_region="eu-west")
    assert (request.output_tokens, request.region, request.arrival_s, request.tier) == (7, "eu-west", 12.5,
                                                                                      "interactive")


def test_given_request_id_is_kept() -> None:
    result = parse_completion(json.dumps(COMPLETION).encode(), "completion", request_id="abc")
    assert isinstance(result, ParsedRequest) and result.request_id == "abc"


def test_estimate_tokens() -> None:
    assert [estimate_tokens(s) for s in ("", "a", "abcd", "abcde", "x" * 400)] == [1, 1, 1, 2, 100]


def test_error_types_follow_status() -> None:
    assert error_for_status(429, "slow down", retry_after_s=2.2).type == "rate_limit_error"
    assert error_for_status(429, "slow down", retry_after_s=2.2).headers() == {"Retry-After": "3"}
    assert error_for_status(503, "none").type == "server_error"
    assert error_for_status(405, "no").type == "invalid_request_error"
    assert error_for_status(400, "x").headers() == {}
    assert model_not_found("llama").body() == {"error": {
        "message": "The model 'llama' does not exist", "type": "invalid_request_error", "param": "model",
        "code": "model_not_found"}}
    assert body_too_large(10).status == 413


def test_completion_and_chat_response_bodies() -> None:
    req = _parse({**COMPLETION, "prompt": "abcdefghi"})  # 9 chars -> 3 tokens
    body = completion_response(req, " a b", "length", 2, created_s=100)
    assert body["object"] == "text_completion" and body["created"] == 100 and body["id"] == req.request_id
    assert body["choices"] == [{"index": 0, "text": " a b", "logprobs": None, "finish_reason": "length"}]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}

    chat = _parse(CHAT, "chat")
    body = completion_response(chat, "hey", "stop", 1, created_s=5)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hey"}


def test_a_given_prompt_count_is_taken_as_is_and_an_engines_count_wins_in_usage() -> None:
    raw = json.dumps({**COMPLETION, "prompt": "x" * 400}).encode()  # estimated alone: 100 tokens
    carried = parse_completion(raw, "completion", prompt_tokens=7)
    assert isinstance(carried, ParsedRequest) and carried.prompt_tokens == 7
    chat = parse_completion(json.dumps(CHAT).encode(), "chat", prompt_tokens=9)
    assert isinstance(chat, ParsedRequest) and chat.prompt_tokens == 9
    assert completion_response(carried, "a", "stop", 1, 0)["usage"]["prompt_tokens"] == 7
    assert completion_response(carried, "a", "stop", 1, 0, prompt_tokens=31)["usage"] == {
        "prompt_tokens": 31, "completion_tokens": 1, "total_tokens": 32}
    assert usage_chunk(carried, 4, 0, prompt_tokens=31)["usage"]["prompt_tokens"] == 31


def test_stream_chunks_and_usage_chunk() -> None:
    chat = _parse({**CHAT, "stream": True, "stream_options": {"include_usage": True}}, "chat")
    first = stream_chunk(chat, "a", None, 1, first=True)
    later = stream_chunk(chat, "b", "stop", 1)
    assert first["object"] == "chat.completion.chunk" and first["usage"] is None
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
    assert later["choices"][0]["delta"] == {"content": "b"} and later["choices"][0]["finish_reason"] == "stop"
    usage = usage_chunk(chat, 2, 1)
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 2

    plain = _parse({**COMPLETION, "stream": True})
    assert "usage" not in stream_chunk(plain, "a", None, 1)


def test_sse_event_is_one_data_line() -> None:
    event = sse_event({"text": "a\nb"})
    assert event.startswith(b"data: ") and event.endswith(b"\n\n") and event.count(b"\n") == 2
    assert json.loads(event[6:]) == {"text": "a\nb"}
    assert SSE_DONE == b"data: [DONE]\n\n"


def test_token_chunk_counts_tokens_not_closing_chunks() -> None:
    assert TokenChunk("a", 0).is_token
    assert TokenChunk("", 1).is_token  # a token whose text is empty (a partial character) still counts
    assert TokenChunk("a", 2, "length").is_token
    assert not TokenChunk("", 3, "stop").is_token


STREAM = b'data: {"a":1}\n\n: keep-alive\n\nevent: x\ndata: {"b":2}\n\ndata: line1\ndata: line2\n\ndata: [DONE]\n\n'
EXPECTED = ['{"a":1}', '{"b":2}', "line1\nline2", "[DONE]"]


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
def test_sse_decoder_handles_every_split_point_and_line_end(line_end: bytes) -> None:
    stream = STREAM.replace(b"\n", line_end)
    for split in range(len(stream) + 1):
        decoder = SseDecoder()
        events = decoder.feed(stream[:split]) + decoder.feed(stream[split:])
        assert events == EXPECTED, (split, line_end)
        assert not decoder.pending


def test_sse_decoder_byte_by_byte_and_pending() -> None:
    decoder = SseDecoder()
    events: list[str] = []
    for i in range(len(STREAM)):
        events += decoder.feed(STREAM[i:i + 1])
    assert events == EXPECTED
    decoder.feed(b"data: half")
    assert decoder.pending


def test_sse_decoder_bounds_event_size_and_rejects_bad_utf8() -> None:
    with pytest.raises(SseError, match="larger than 1024 bytes"):
        SseDecoder(max_event_bytes=1024).feed(b"data: " + b"x" * 2000)
    with pytest.raises(SseError, match="UTF-8"):
        SseDecoder().feed(b"data: \xff\n\n")


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_read_limited() -> None:
    assert await read_limited(_chunks(b"ab", b"cd"), None, 4) == b"abcd"
    too_big = await read_limited(_chunks(b"ab", b"cde"), None, 4)
    assert isinstance(too_big, ApiError) and too_big.status == 413
    declared = await read_limited(_chunks(), 10, 4)  # refused on Content-Length before reading
    assert isinstance(declared, ApiError) and declared.status == 413


@pytest.mark.parametrize("body", [
    b'{"model": "m", "prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}",  # found by fuzzing (tests/fuzz)
    b'{"model": "m", "prompt": ' + b"[" * 100_000 + b"}",
])
def test_json_the_parser_refuses_is_a_400_not_a_traceback(body: bytes) -> None:
    error = parse_completion(body, "completion")
    assert isinstance(error, ApiError) and error.status == 400
    assert error.message.startswith("We could not parse the JSON body of your request: ")
    assert "set_int_max_str_digits" not in error.message  # Python's hint is no advice to an API client


# -- property: any JSON body is parsed or refused with a 4xx, never raised on -----------------------

_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
            | st.sampled_from([0, -1, 2**63, 10**4300 - 1]) | st.floats(allow_nan=True, allow_infinity=True)
            | st.text(max_size=20) | st.sampled_from(["", "\ud800", "\u0000", "Llama-3-8B", "é" * 300, "\n"]))
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_FIELDS = ("model", "prompt", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options",
           "temperature", "top_p", "n", "stop", "user", "seed", "presence_penalty", "frequency_penalty",
           "opscale_tier")
_VALID = {"model": "m", "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=st.dictionaries(st.sampled_from(_FIELDS), _JSON, max_size=6), keep_valid=st.booleans(),
       kind=st.sampled_from(["completion", "chat"]), ascii_only=st.booleans(),
       region=st.none() | st.text(max_size=70))
def test_any_json_body_is_parsed_or_refused_with_an_openai_4xx(fields: dict[str, object], keep_valid: bool,
                                                                kind: str, ascii_only: bool,
                                                                region: str | None) -> None:
    """Random JSON in every field (wrong types, huge and non-finite numbers, unpaired surrogates, deep
    values), over a valid body or alone, with any region header."""
    body = {**_VALID, **fields} if keep_valid else fields
    raw = json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", errors="surrogatepass")
    headers = {} if region is None else {"x-opscale-region": region}
    result = parse_completion(raw, kind, headers=headers)
    if isinstance(result, ApiError):
        assert 400 <= result.status < 500
        error = result.body()["error"]
        assert error["message"] and error["type"] == "invalid_request_error"
        assert result.param is None or isinstance(result.param, str)
        json.dumps(result.body())
    else:
        assert result.model == body["model"] and result.max_tokens >= 1 and result.prompt_tokens >= 1
        json.dumps(result.upstream_body()).encode()  # what the router forwards


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_bytes_are_parsed_or_refused_with_a_400(raw: bytes) -> None:
    result = parse_completion(raw, "completion")
    assert not isinstance(result, ApiError) or result.status == 400


# -- property: the plain-body fast path reads every body as the full validation does ---------------

_EDGE_VALUES = {
    "model": st.sampled_from(["m", "", "x" * 256, "x" * 257, "é" * 256]),
    "prompt": st.sampled_from(["", "hello", "x" * 41, [1, 2], ["one"]]),
    "messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "developer", "assistant", "tool", "bot", 1, None]),
         "content": st.sampled_from(["", "hi", None, 3, [{"type": "text", "text": "a"}]])},
        optional={"name": st.sampled_from([None, "n", 1]), "extra": st.just(1)}), max_size=3),
    "max_tokens": st.sampled_from([None, 0, 1, 16, 262_144, 262_145, True, 1.0, -1]),
    "max_completion_tokens": st.sampled_from([None, 0, 1, 8, 262_145, False]),
    "stream": st.sampled_from([True, False, None, 1, "true"]),
    "stream_options": st.sampled_from([None, {}, {"include_usage": True}, {"include_usage": False},
                                       {"include_usage": 1}, {"include_usage": True, "other": 1}, [], "x"]),
    "temperature": st.sampled_from([None, 0, 1, 2, 2.0, 2.5, -0.1, 0.7, True, "1", float("inf")]),
    "top_p": st.sampled_from([None, 0, 1, 1.0, 1.5, 0.9, False]),
    "user": st.sampled_from([None, "u", 1, ""]),
}

# values both readings accept (bounds included), so that many bodies take the fast path
_PLAIN_VALUES = {
    "model": st.sampled_from(["m", "x" * 256, "é" * 256]),
    "prompt": st.sampled_from(["", "hello", "x" * 41]),
    "messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "developer", "assistant", "tool"]),
         "content": st.sampled_from(["", "hi", None, "x" * 9])},
        optional={"name": st.sampled_from([None, "n"]), "extra": st.just(1)}), min_size=1, max_size=3),
    "max_tokens": st.sampled_from([None, 1, 16, 262_144]),
    "max_completion_tokens": st.sampled_from([None, 1, 8, 262_144]),
    "stream": st.booleans(),
    "stream_options": st.sampled_from([None, {}, {"include_usage": True}, {"include_usage": False}]),
    "temperature": st.sampled_from([None, 0, 2, 2.0, 0.7]),
    "top_p": st.sampled_from([None, 0, 1, 1.0, 0.9]),
    "user": st.sampled_from([None, "u", ""]),
}


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["completion", "chat"]), keep_valid=st.booleans(), data=st.data())
def test_the_plain_body_fast_path_reads_every_body_as_the_full_validation(kind: str, keep_valid: bool,
                                                                           data: st.DataObject) -> None:
    """parse_completion reads a body of a few plain fields without pydantic (schema._plain_fields): whatever
    it accepts, the full validation accepts with the same result, and what it does not take is validated
    in full (so refused alike). Bodies: the kind's plain fields at values both accept (about half), at edge
    values, and random JSON in any field."""
    import opscale.openai.schema as schema

    other = {"messages", "max_completion_tokens"} if kind == "completion" else {"prompt"}
    plain = {name: values for name, values in _PLAIN_VALUES.items() if name not in other}
    valid = {"model": "m", "prompt": "hi"} if kind == "completion" else {"model": "m", "messages": [
        {"role": "user", "content": "hi"}]}
    body = {**(valid if keep_valid else {}), **data.draw(st.fixed_dictionaries({}, optional=plain))}
    if data.draw(st.booleans()):
        body.update(data.draw(st.fixed_dictionaries({}, optional=_EDGE_VALUES)))
    if data.draw(st.integers(0, 3)) == 0:
        body.update(data.draw(st.dictionaries(st.sampled_from(_FIELDS), _JSON, max_size=3)))
    raw = json.dumps(body).encode("utf-8", errors="surrogatepass")
    fast = parse_completion(raw, kind, request_id="r-1", default_tier="batch", tenant="t")
    read_plain = schema._plain_fields
    schema._plain_fields = lambda obj, kind: None  # type: ignore[assignment]
    try:
        full = parse_completion(raw, kind, request_id="r-1", default_tier="batch", tenant="t")
    finally:
        schema._plain_fields = read_plain
    assert fast == full


def test_the_plain_body_fast_path_takes_the_common_bodies() -> None:
    """The bodies OpenAI's SDKs send most (a prompt or messages, max_tokens, stream, usage, sampling
    temperature) are read without the full validation, and read as it reads them."""
    import opscale.openai.schema as schema

    completion = {"model": "m", "prompt": "hello", "max_tokens": 16, "stream": True, "temperature": 0.7}
    chat = {"model": "m", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "max_completion_tokens": 32, "stream": True, "stream_options": {"include_usage": True}, "user": "u"}
    assert schema._plain_fields(completion, RequestKind.COMPLETION) == ("m", 16, True, False, None, 2)
    assert schema._plain_fields(chat, RequestKind.CHAT) == ("m", 32, True, True, "u", 3 + 4 + 2 + 4 + 1)
    parsed = _parse(chat, "chat")
    assert (parsed.max_tokens, parsed.prompt_tokens, parsed.include_usage, parsed.tier) == (32, 14, True, "interactive")
    assert parsed.body == chat
    # an opscale field, or any other, takes the full validation
    assert schema._plain_fields({**completion, "opscale_tier": "batch"}, RequestKind.COMPLETION) is None
    assert schema._plain_fields({**completion, "seed": 1}, RequestKind.COMPLETION) is None
