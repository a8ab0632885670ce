"""The one writer of OpenAI server-sent event streams (the router's API and the node-agent's engine
server both write through it), and reading an engine's usage block."""

from __future__ import annotations

import json
from typing import Any

import pytest

from opscale.openai.schema import ParsedRequest, error_for_status, parse_completion
from opscale.openai.stream import EngineUsage, OpenAIStreamWriter, engine_usage, error_events

pytestmark = pytest.mark.unit


def _request(kind: str, **body: Any) -> ParsedRequest:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]} if kind == "chat" else \
        {"model": "m", "prompt": "abcdefgh"}
    parsed = parse_completion(json.dumps({**base, "stream": True, **body}).encode(), kind)
    assert isinstance(parsed, ParsedRequest), parsed
    return parsed


def _events(raw: bytes) -> list[Any]:
    assert raw.endswith(b"\n\n")
    out: list[Any] = []
    for event in raw.decode().split("\n\n")[:-1]:
        assert event.startswith("data: ") and "\n" not in event, event
        data = event[len("data: "):]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_a_chat_stream_that_stops_early_is_closed_with_stop_then_usage_then_done() -> None:
    req = _request("chat", max_tokens=5, stream_options={"include_usage": True})
    writer = OpenAIStreamWriter(req, created_s=42)
    raw = writer.chunk(" a") + writer.chunk(" b") + writer.end()
    first, second, closing, usage, done = _events(raw)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": " a"}
    assert second["choices"][0]["delta"] == {"content": " b"}
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == req.request_id and e["created"] == 42
               and e["usage"] is None for e in (first, second, closing))
    assert closing["choices"][0] == {"index": 0, "delta": {"content": ""}, "logprobs": None,
                                     "finish_reason": "stop"}
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": req.prompt_tokens, "completion_tokens": 2, "total_tokens": req.prompt_tokens + 2}
    assert done == "[DONE]" and writer.tokens == 2


def test_a_stream_that_said_why_it_ended_gets_no_closing_chunk_and_no_usage_unasked() -> None:
    req = _request("completion", max_tokens=2)
    writer = OpenAIStreamWriter(req, created_s=1)
    events = _events(writer.chunk(" a") + writer.chunk(" b", "length") + writer.end())
    assert [e["choices"][0]["text"] for e in events[:-1]] == [" a", " b"]
    assert [e["choices"][0]["finish_reason"] for e in events[:-1]] == [None, "length"]
    assert all("usage" not in e for e in events[:-1]) and events[-1] == "[DONE]"


def test_an_engines_counts_win_in_the_usage_chunk_and_decide_the_closing_reason() -> None:
    req = _request("completion", max_tokens=3, stream_options={"include_usage": True})
    writer = OpenAIStreamWriter(req, created_s=1)
    # two chunks reached the writer, but the engine counted three tokens: the limit was reached
    events = _events(writer.chunk(" a") + writer.chunk(" bc") + writer.end(EngineUsage(41, 3)))
    assert events[2]["choices"][0]["finish_reason"] == "length"
    assert events[3]["usage"] == {"prompt_tokens": 41, "completion_tokens": 3, "total_tokens": 44}
    only_prompt = OpenAIStreamWriter(req, created_s=1)
    usage = _events(only_prompt.chunk(" a") + only_prompt.end(EngineUsage(41, None)))[-2]
    assert usage["usage"] == {"prompt_tokens": 41, "completion_tokens": 1, "total_tokens": 42}


def test_an_empty_stream_still_opens_the_chat_role_on_its_closing_chunk() -> None:
    req = _request("chat", max_tokens=4)
    closing, done = _events(OpenAIStreamWriter(req, created_s=1).end())
    assert closing["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert closing["choices"][0]["finish_reason"] == "stop" and done == "[DONE]"


def test_a_failure_is_an_error_event_then_done() -> None:
    error = error_for_status(503, "instance stopped", code="instance_not_accepting")
    event, done = _events(error_events(error))
    assert event == error.body() and done == "[DONE]"


@pytest.mark.parametrize(("chunk", "expected"), [
    ({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}},
     EngineUsage(9, 4)),
    ({"usage": {"prompt_tokens": 9}}, EngineUsage(9, None)),
    ({"usage": {"prompt_tokens": True, "completion_tokens": -1}}, None),  # not counts
    ({"usage": {"prompt_tokens": "9", "completion_tokens": 4.0}}, None),
    ({"choices": [{"text": "a"}], "usage": None}, None),  # vLLM's chunks before the usage chunk
    ({"choices": []}, None),
])
def test_engine_usage_reads_only_whole_non_negative_counts(chunk: dict[str, Any],
                                                          expected: EngineUsage | None) -> None:
    assert engine_usage(chunk) == expected
