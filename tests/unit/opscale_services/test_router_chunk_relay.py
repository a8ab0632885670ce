"""The splice's per-token relay (chunk_relay.py): the C relay does exactly what the Python one does on any
read; with `SseForwarder.feed` taking what it declines, the client gets the same bytes and the same chunks
are counted as through `feed` alone; it writes nothing to a client that is not keeping up."""

from __future__ import annotations

import json
import shutil
import sys
import sysconfig

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opscale.openai.stream import EngineUsage

from opscale_services.router import chunk_relay
from opscale_services.router.chunk_relay import PyChunkRelay, Relay, chunk_data
from opscale_services.router.sse_passthrough import DONE_EVENT, SseForwarder

pytestmark = pytest.mark.unit

RELAYS = [pytest.param(PyChunkRelay, id="python"),
          pytest.param(chunk_relay.ChunkRelay, id="native",
                       marks=pytest.mark.skipif(not chunk_relay.NATIVE, reason="the C relay is not built here"))]


def event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def token(text: str, finish: str | None = None) -> bytes:
    return event({"id": "c", "object": "text_completion", "choices": [{"index": 0, "text": text,
                                                                       "finish_reason": finish}]})


def framed(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


ROLE = event({"id": "c", "object": "chat.completion.chunk",
              "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
USAGE = event({"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}})


class Client:
    """A client connection as a relay sees it: what was written, whether it keeps up, whether it closes."""

    def __init__(self, paused: bool = False, closing: bool = False) -> None:
        self.writing_paused = paused
        self.closing = closing
        self.written: list[bytes] = []
        self.clock = 0.0

    def is_closing(self) -> bool:
        return self.closing

    def now(self) -> float:
        self.clock += 1.0
        return self.clock

    def relay(self, kind: type[Relay], chunked: bool = True) -> Relay:
        relay = kind(self.written.append, self.is_closing, self, chunked, self.now)  # type: ignore[call-arg]
        relay.armed = True
        return relay


@pytest.mark.parametrize("kind", RELAYS)
@pytest.mark.parametrize("chunked", [True, False])
def test_a_token_chunk_is_written_as_the_answer_is_framed_and_counted(kind: type[Relay], chunked: bool) -> None:
    client = Client()
    relay = client.relay(kind, chunked)
    read = framed(token("hi"))
    assert relay(read)
    assert client.written == [read if chunked else token("hi")]
    assert relay.count == 1 and relay.last_at == 1.0
    assert relay(framed(token("there")))
    assert relay.take() == (2, framed(token("there")))
    assert relay.take() == (0, None) and relay.count == 0


@pytest.mark.parametrize("kind", RELAYS)
@pytest.mark.parametrize("declined", [
    token("a") + token("b"),  # two events in one chunk
    b"data: {}\ndata: {}\n\n", DONE_EVENT, b"event: x\n\n", b"id: {}\n\n", token("e")[:-1], b"\n\n", b": ping\n\n",
    USAGE, event({"error": {"message": "m"}}), token("c").replace(b"\n\n", b"\r\n\r\n"), b"data:}\n\n"[:-1],
])
def test_only_a_single_data_line_of_json_is_relayed(kind: type[Relay], declined: bytes) -> None:
    client = Client()
    relay = client.relay(kind)
    assert not relay(framed(declined))
    assert client.written == [] and relay.count == 0


@pytest.mark.parametrize("kind", RELAYS)
@pytest.mark.parametrize("read", [
    b"%X\r\n%b\r\n" % (len(token("x")), token("x")),  # an upper-case size
    b"0%x\r\n%b\r\n" % (len(token("x")), token("x")),  # a leading zero
    b"%x;ext=1\r\n%b\r\n" % (len(token("x")), token("x")),  # an extension
    framed(token("x")) + framed(token("y")),  # two chunks in one read
    framed(token("x"))[:-1],  # a part
    framed(token("x")) + b"0\r\n\r\n",  # the chunk and the body's end
    b"%x\r\n%b\r\n" % (len(token("x")) + 1, token("x")),  # the size does not match
    b"0\r\n\r\n", b"", b"\r\n",
    framed(token("x" * 5000)),  # four hex digits: beyond what token events need
])
def test_anything_but_one_whole_chunk_goes_to_the_parser(kind: type[Relay], read: bytes) -> None:
    client = Client()
    relay = client.relay(kind)
    assert not relay(read)
    assert client.written == []


@pytest.mark.parametrize("kind", RELAYS)
def test_nothing_is_written_unarmed_or_to_a_client_not_keeping_up(kind: type[Relay]) -> None:
    read = framed(token("x"))
    for client, armed in ((Client(), False), (Client(paused=True), True), (Client(closing=True), True)):
        relay = client.relay(kind)
        relay.armed = armed
        assert not relay(read)
        assert client.written == [] and relay.take() == (0, None)


@pytest.mark.skipif(not chunk_relay.NATIVE, reason="the C relay is not built here")
def test_the_c_relay_refuses_a_wrong_argument_and_keeps_no_stray_reference() -> None:
    client = Client()
    relay = client.relay(chunk_relay.ChunkRelay)
    for bad in ((), ("text",), (b"a", b"b")):
        with pytest.raises(TypeError):
            relay(*bad)
    read = framed(token("x"))
    before = sys.getrefcount(read)
    for _ in range(1000):
        relay(read)
    client.written.clear()
    relay.take()
    assert sys.getrefcount(read) == before


def reads_strategy() -> st.SearchStrategy[bytes]:
    """Reads as an engine's chunked body may bring them: token chunks, and everything near them."""
    texts = st.text(max_size=6)
    tokens = texts.map(lambda t: framed(token(t)))
    odd = st.one_of(
        st.sampled_from([framed(USAGE), framed(DONE_EVENT), framed(ROLE), framed(b": ping\n\n"), b"0\r\n\r\n",
                         framed(event({"error": {"message": "x"}}))]),
        st.binary(max_size=40),
        st.builds(lambda t, cut: framed(token(t))[:cut], texts, st.integers(0, 60)),
        st.builds(lambda t, i, b: (lambda r: r[:i] + bytes([b]) + r[i + 1:])(framed(token(t))), texts,
                  st.integers(0, 60), st.sampled_from(b"\r\n0Aaf:}{\"d ")),
        st.builds(lambda s, d: b"%b\r\n%b\r\n" % (s, d), st.sampled_from([b"1", b"a", b"fff", b"1000", b"01", b"F"]),
                  st.binary(max_size=20)),
    )
    return st.one_of(tokens, odd)


@given(reads=st.lists(st.tuples(reads_strategy(), st.booleans(), st.booleans(), st.booleans()), max_size=30),
       chunked=st.booleans())
def test_the_c_relay_does_what_the_python_relay_does(reads: list[tuple[bytes, bool, bool, bool]],
                                                     chunked: bool) -> None:
    if not chunk_relay.NATIVE:
        pytest.skip("the C relay is not built here")
    clients = [Client(), Client()]
    relays = [clients[0].relay(PyChunkRelay, chunked), clients[1].relay(chunk_relay.ChunkRelay, chunked)]
    for data, armed, paused, closing in reads:
        answers = []
        for client, relay in zip(clients, relays, strict=True):
            relay.armed = armed
            client.writing_paused, client.closing = paused, closing
            answers.append(relay(data))
        assert answers[0] == answers[1], data
        assert clients[0].written == clients[1].written
        assert relays[0].count == relays[1].count and relays[0].last_at == relays[1].last_at
    assert relays[0].take() == relays[1].take()


@pytest.mark.parametrize("kind", RELAYS)
@given(texts=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=12), usage=st.booleans(),
       pings=st.booleans(), failing=st.booleans(), chat=st.booleans())
def test_the_relay_and_feed_forward_and_count_as_feed_alone_does(kind: type[Relay], texts: list[str], usage: bool,
                                                                 pings: bool, failing: bool, chat: bool) -> None:
    """The splice offers each engine chunk to the relay, armed while the forwarder is steady, and takes
    `feed` where it declines: the same bytes reach the client and the same chunks are counted as through
    `feed` alone, and the events only `feed` can read are left to it: the usage, a ping, an error
    mid-stream (which fails the stream), the chat role delta before the first token, and `[DONE]`."""
    ping = b": ping\n\n" if pings else b""
    error = event({"error": {"object": "error", "message": "engine died", "type": "InternalServerError"}})
    events = ([ROLE] if chat else []) + [e for t in texts for e in (token(t), ping) if e]
    events += [error] if failing else [token("", "stop")] + ([USAGE] if usage else []) + [DONE_EVENT]
    forwarder = SseForwarder()
    client = Client()
    relay = client.relay(kind, chunked=False)
    forwarded, chunks, done, found, failure, relayed = client.written, 0, False, None, None, 0
    for data in events:
        relay.armed = forwarder.steady
        if relay(framed(data)):
            relayed += 1
            continue
        count, last = relay.take()
        if count:
            assert last is not None
            forwarder.relayed(count, last)
            chunks += count
        block = forwarder.feed(data)
        failure = block.failure or failure
        if block.out is not None:
            forwarded.append(block.out.data)
            chunks += block.out.chunks
            done = block.out.done
            found = block.out.usage or found
    # every token after the first went around `feed` (the closing one too, when the stream closes)
    assert relayed == len(texts) - 1 + (not failing)
    if failing:
        assert failure is not None and not done
        assert b"".join(forwarded) == b"".join(events[:-1]) and chunks == len(texts)
    else:
        assert failure is None and done
        assert b"".join(forwarded) == b"".join(events)
        assert chunks == forwarder.chunks == len(texts) + 1
        assert found == (EngineUsage(3, 7) if usage else None)


def test_a_stream_closed_after_relayed_tokens_ends_as_its_last_token_says() -> None:
    """`end` reads the last relayed event: a finish reason there closes the stream with `[DONE]`."""
    for finish, closes in (("stop", True), (None, False)):
        forwarder = SseForwarder()
        assert forwarder.feed(token("a")).out is not None
        forwarder.relayed(2, framed(token("c", finish)))
        end = forwarder.end()
        assert (end is not None and end.data == DONE_EVENT) == closes
        assert forwarder.chunks == 3


@pytest.mark.skipif(sysconfig.get_config_var("CC") is None or shutil.which(
    str(sysconfig.get_config_var("CC")).split()[0]) is None, reason="no C compiler: the install uses the Python relay")
def test_an_install_with_a_c_compiler_builds_the_c_relay() -> None:
    # the extension is optional (setup.py), so a build that fails is only a warning at install time: here
    # it would show as the router relaying tokens in Python, at more CPU per token
    assert chunk_relay.NATIVE and chunk_relay.ChunkRelay is not PyChunkRelay


def test_chunk_data_is_the_data_of_one_chunk() -> None:
    assert chunk_data(framed(token("x"))) == token("x")
