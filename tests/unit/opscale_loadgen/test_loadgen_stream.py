"""Parsing a streamed answer (`StreamTally` fed by the shared `SseDecoder`): tokens of both endpoints,
the role and closing chunks that are not tokens, the usage chunk's count, [DONE], an error event
mid-stream, events split across reads, and malformed events. Also the synthetic prompt's length."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opscale.model import Request
from opscale.openai.schema import estimate_tokens, parse_completion
from opscale.openai.sse import SseDecoder

from opscale_loadgen.prompts import ApiKind, prompt_text, request_body
from opscale_loadgen.stream import StreamProblem, StreamTally

pytestmark = pytest.mark.unit


def _chat(content: str | None, finish: str | None = None, role: bool = False) -> str:
    delta: dict = {"role": "assistant"} if role else {}
    if content is not None:
        delta["content"] = content
    return json.dumps({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta,
                                                                        "finish_reason": finish}]})


def _feed(tally: StreamTally, events: list[tuple[str, float]]) -> StreamTally:
    for data, at_s in events:
        tally.feed(data, at_s)
    return tally


def test_chat_stream_with_role_chunk_closing_chunk_usage_and_done() -> None:
    tally = _feed(StreamTally(), [
        (_chat("", role=True), 0.1),  # vLLM's first chunk: the role, no text
        (_chat(" Hello"), 0.3),
        (_chat(" world"), 0.35),
        (_chat("!"), 0.45),
        (_chat(None, finish="length"), 0.46),  # closing chunk: not a token
        (json.dumps({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}), 0.47),
        ("[DONE]", 0.48),
        (_chat(" late"), 0.5),  # after [DONE]: ignored
    ])
    assert tally.done and tally.error is None
    assert tally.first_token_s == 0.3 and tally.last_token_s == 0.45
    assert tally.gaps_s == pytest.approx([0.05, 0.1])
    assert tally.token_chunks == 3 and tally.output_tokens == 4  # the server's usage count wins


def test_completions_stream_without_usage_counts_chunks() -> None:
    events = [(json.dumps({"choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}]}), i * 0.1)
              for i in range(1, 4)]
    tally = _feed(StreamTally(), [*events, ("[DONE]", 0.5)])
    assert tally.done and tally.output_tokens == 3 and tally.first_token_s == 0.1


def test_an_error_event_mid_stream_ends_it_as_an_error() -> None:
    error = {"error": {"message": "The instance stopped", "type": "server_error", "code": "instance_not_accepting"}}
    tally = _feed(StreamTally(), [(_chat(" a"), 0.1), (json.dumps(error), 0.2), ("[DONE]", 0.3)])
    assert tally.error == "instance_not_accepting: The instance stopped"
    assert not tally.done and tally.ended and tally.output_tokens == 1


@pytest.mark.parametrize(("data", "words"), [
    ("{not json", "not JSON"), ("[1, 2]", "not a JSON object"), ('{"id": "x"}', "no 'choices'"),
    ('{"choices": ["x"]}', "choice is not a JSON object"),
])
def test_malformed_events_are_named(data: str, words: str) -> None:
    with pytest.raises(StreamProblem, match=words):
        StreamTally().feed(data, 0.0)


@given(cuts=st.lists(st.integers(1, 400), max_size=10))
def test_events_split_across_any_reads_give_the_same_tally(cuts: list[int]) -> None:
    raw = b"".join(f"data: {e}\n\n".encode() for e in (_chat(" a"), _chat(" b"), _chat(" c"))) + b"data: [DONE]\n\n"
    decoder, tally = SseDecoder(), StreamTally()
    start = 0
    for cut in sorted({min(c, len(raw)) for c in cuts}) + [len(raw)]:
        for data in decoder.feed(raw[start:cut]):
            tally.feed(data, 1.0)
        start = cut
    assert tally.done and tally.token_chunks == 3


@given(tokens=st.integers(1, 5000), request_id=st.text(min_size=1, max_size=20))
def test_prompt_text_is_the_requested_tokens_to_opscales_estimate(tokens: int, request_id: str) -> None:
    text = prompt_text(request_id, tokens)
    assert estimate_tokens(text) == tokens and len(text.split()) == tokens
    assert prompt_text(request_id, tokens) == text  # repeatable


def test_prompts_of_different_requests_do_not_share_a_prefix_block() -> None:
    a, b = prompt_text("r1", 64).split(), prompt_text("r2", 64).split()
    assert a[:16] != b[:16]  # a 16-token KV block: a prefix cache cannot serve one from the other


@pytest.mark.parametrize("api", list(ApiKind))
def test_request_body_parses_as_the_trace_request(api: ApiKind) -> None:
    request = Request("r9", "Llama-3-8B", "batch", "eu-west", 0.0, prompt_tokens=300, output_tokens=42)
    body = request_body(request, api)
    parsed = parse_completion(json.dumps(body).encode(), "chat" if api is ApiKind.CHAT else "completion")
    assert not hasattr(parsed, "status"), parsed
    assert (parsed.prompt_tokens, parsed.max_tokens, parsed.tier, parsed.stream, parsed.include_usage) == \
        (300, 42, "batch", True, True)
    assert body["ignore_eos"] is True
    plain = request_body(request, api, model="other", extras=False)
    assert plain["model"] == "other" and "ignore_eos" not in plain and "opscale_tier" not in plain
