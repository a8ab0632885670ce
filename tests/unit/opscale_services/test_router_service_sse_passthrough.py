"""The router's SSE forwarding: whole engine events pass through unchanged however the reads split them,
output chunks are counted without decoding each event, nothing reaches the client before the first token,
and failures, usage counts, `\\r` framing and a close without `[DONE]` are handled as the decoded path does."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opscale.openai.sse import SseError
from opscale.openai.stream import EngineUsage

from opscale_services.router.sse_passthrough import DONE_EVENT, SseBytes, SseForwarder

pytestmark = pytest.mark.unit


def event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def token(text: str, finish: str | None = None) -> bytes:
    return event({"id": "c", "object": "text_completion", "choices": [{"index": 0, "text": text,
                                                                       "finish_reason": finish}]})


ROLE = event({"id": "c", "object": "chat.completion.chunk",
              "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
USAGE = event({"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}})


def feed_all(forwarder: SseForwarder, reads: list[bytes]) -> list[SseBytes]:
    out: list[SseBytes] = []
    for data in reads:
        block = forwarder.feed(data)
        assert block.failure is None
        if block.out is not None:
            out.append(block.out)
    return out


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in zip(points, points[1:], strict=False)]


@given(texts=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=12),
       cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=20))
def test_any_split_forwards_the_stream_unchanged_in_whole_events_and_counts_every_token(
        texts: list[str], cuts: list[int]) -> None:
    stream = b"".join(token(t) for t in texts) + token("", "stop") + DONE_EVENT
    forwarder = SseForwarder()
    out = feed_all(forwarder, split(stream, cuts))
    assert b"".join(o.data for o in out) == stream
    assert all(o.data.endswith(b"\n\n") for o in out)  # never half an event
    assert out[-1].done and not any(o.done for o in out[:-1])
    assert sum(o.chunks for o in out) == forwarder.chunks == len(texts) + 1  # the closing chunk counts, as decoded
    assert out[0].chunks >= 1  # nothing is released before the first token


@given(texts=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=12),
       cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=20), usage=st.booleans(),
       pings=st.booleans())
def test_the_splices_steady_path_forwards_and_counts_as_feed_does(texts: list[str], cuts: list[int],
                                                                  usage: bool, pings: bool) -> None:
    """The splice tries `feed_steady` on every read and takes `feed` where it answers -1: the same bytes
    reach the client, and the same chunks and end are counted, as through `feed` alone; also where reads end
    with an event that is no JSON object (a comment, as a keep-alive ping), which the steady path leaves."""
    ping = b": ping\n\n" if pings else b""
    stream = (b"".join(token(t) + ping for t in texts) + token("", "stop") + (USAGE if usage else b"")
              + DONE_EVENT)
    forwarder = SseForwarder()
    forwarded, chunks, done, found = [], 0, False, None
    for data in split(stream, cuts):
        if (events := forwarder.feed_steady(data)) >= 0:
            forwarded.append(data)
            chunks += events
            continue
        block = forwarder.feed(data)
        assert block.failure is None
        if block.out is not None:
            forwarded.append(block.out.data)
            chunks += block.out.chunks
            done = block.out.done
            found = block.out.usage or found
    assert b"".join(forwarded) == stream and done
    assert chunks == forwarder.chunks == len(texts) + 1
    assert found == (EngineUsage(3, 7) if usage else None)


def test_a_chat_role_delta_waits_for_the_first_token() -> None:
    forwarder = SseForwarder()
    assert forwarder.feed(ROLE).out is None
    first = forwarder.feed(token("hi")).out
    assert first is not None and first.data == ROLE + token("hi") and first.chunks == 1


def test_an_error_before_the_first_token_releases_nothing() -> None:
    forwarder = SseForwarder()
    assert forwarder.feed(ROLE).out is None
    block = forwarder.feed(event({"error": {"message": "out of memory"}}))
    assert block.out is None and block.failure is not None
    assert block.failure.kind == "status" and "out of memory" in block.failure.message
    assert forwarder.chunks == 0


def test_an_error_mid_stream_forwards_the_events_before_it_then_fails() -> None:
    forwarder = SseForwarder()
    feed_all(forwarder, [token("a")])
    block = forwarder.feed(token("b") + event({"error": "engine died"}) + DONE_EVENT)
    assert block.out is not None and block.out.data == token("b") and block.out.chunks == 1
    assert block.failure is not None and "engine died" in block.failure.message


def test_a_malformed_event_before_the_first_token_is_a_protocol_failure() -> None:
    block = SseForwarder().feed(b"data: {not json\n\n")
    assert block.out is None and block.failure is not None and block.failure.kind == "protocol"


def test_the_engines_usage_chunk_gives_the_exact_count_and_is_not_an_output_chunk() -> None:
    forwarder = SseForwarder()
    out = feed_all(forwarder, [token("a"), token("b", "length") + USAGE + DONE_EVENT])
    assert out[-1].usage == EngineUsage(3, 7) and out[-1].chunks == 1 and out[-1].done
    assert forwarder.chunks == 2


def test_crlf_framing_is_decoded_and_reframed() -> None:
    crlf = token("a").replace(b"\n", b"\r\n") + token("b", "stop").replace(b"\n", b"\r\n") + b"data: [DONE]\r\n\r\n"
    forwarder = SseForwarder()
    out = feed_all(forwarder, split(crlf, [7, 30, 61]))
    assert b"".join(o.data for o in out) == token("a") + token("b", "stop") + DONE_EVENT
    assert forwarder.chunks == 2 and out[-1].done


def test_a_close_without_done_after_a_finish_reason_is_completed_and_otherwise_broken() -> None:
    finished = SseForwarder()
    feed_all(finished, [token("a"), token("b"), token("", "stop")])
    closing = finished.end()
    assert closing is not None and closing.data == DONE_EVENT and closing.done

    cut = SseForwarder()
    feed_all(cut, [token("a"), token("b")])
    assert cut.end() is None
    half = SseForwarder()
    feed_all(half, [token("a") + token("b", "stop")[:10]])
    assert half.end() is None  # an unfinished event is buffered


def test_an_event_over_the_size_bound_is_refused() -> None:
    forwarder = SseForwarder(max_event_bytes=1024)
    feed_all(forwarder, [token("a")])
    with pytest.raises(SseError, match="larger than 1024 bytes"):
        forwarder.feed(b"data: " + b"x" * 2000)


def test_a_whole_stream_in_the_first_read_is_decoded_only_up_to_its_first_token() -> None:
    # a router that fell behind reads everything at once: the same bytes, counts and usage come out
    stream = ROLE + token("a") + token("b") + token("c", "length") + USAGE + DONE_EVENT
    forwarder = SseForwarder()
    [out] = feed_all(forwarder, [stream])
    assert out.data == stream and out.chunks == 3 and out.usage == EngineUsage(3, 7) and out.done
    assert forwarder.chunks == 3
    # and an error event anywhere in that read still fails the stream after the events before it
    failing = SseForwarder().feed(token("a") + event({"error": {"message": "boom"}}))
    assert failing.failure is not None and failing.out is not None and failing.out.chunks == 1


def test_a_first_read_that_opens_with_its_first_token_decodes_that_event_alone() -> None:
    # the usual read of a router behind by a token or two: the first event is the first token
    stream = token("a") + token("b", "length") + USAGE + DONE_EVENT
    forwarder = SseForwarder()
    [out] = feed_all(forwarder, [stream])
    assert out.data == stream and out.chunks == 2 and out.usage == EngineUsage(3, 7) and out.done
    # its finish reason counts when the engine then closes without [DONE]: the stream was complete
    closing = SseForwarder()
    [first] = feed_all(closing, [token("a", "stop") + USAGE])
    assert first.chunks == 1 and closing.end() == SseBytes(DONE_EVENT, 0, done=True)


@pytest.mark.parametrize("tail", [b"dat)data: [DONE]\n\n", b"xdata: [DONE]\n\n"])
def test_done_inside_another_field_does_not_end_the_stream(tail: bytes) -> None:
    """Found by atheris (tests/fuzz): a line `dat)data: [DONE]` is a field named `dat)data`; the byte scan
    took it for the end of the stream and counted -1 output chunks for it."""
    forwarder = SseForwarder()
    (first,) = feed_all(forwarder, [token("a")])
    block = forwarder.feed(token("b") + tail)
    assert block.out is not None and not block.out.done
    assert block.out.chunks == 1 and forwarder.chunks == 2
    assert forwarder.feed(DONE_EVENT).out == SseBytes(DONE_EVENT, 0, None, True)


@pytest.mark.parametrize("after", [b"", token(" there")], ids=["token last", "more after"])
def test_a_chat_streams_first_events_are_each_decoded_once(after: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    from opscale_services.router import sse_passthrough

    decoded: list[str] = []
    decode = sse_passthrough.decode_event

    def counted(data: str) -> object:
        decoded.append(data)
        return decode(data)

    monkeypatch.setattr(sse_passthrough, "decode_event", counted)
    block = SseForwarder().feed(ROLE + token("hi") + after)
    assert block.out is not None and block.out.data == ROLE + token("hi") + after
    assert block.out.chunks == 1 + bool(after)
    assert len(decoded) == 2  # the role delta and the first token, once each; what follows is scanned
