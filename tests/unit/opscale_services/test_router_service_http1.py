"""The router's HTTP/1.1 engine client (services/router/http1.py): response framing however the reads
split it, keep-alive reuse and its limits, the stale-connection resend, and the end of a response that
arrives after the caller stopped reading; and splicing (UpstreamClient.stream_sse writing events to a
sink from the read callback). Loopback servers only (raw asyncio), so these are unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opscale_services.router.chunk_relay import PyChunkRelay
from opscale_services.router.http1 import (
    ConnectionFailed,
    ConnectionLost,
    Endpoint,
    HeadTimeout,
    Http1Connection,
    Http1Pool,
    ProtocolViolation,
    encode_request,
)
from opscale_services.router.upstream import SseBytes, UpstreamClient, UpstreamConfig, UpstreamError

pytestmark = pytest.mark.unit

GUARD_S = 10.0  # hang guard only, never a performance threshold


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


class _FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False
        self.reading = True

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def _pool() -> Http1Pool:
    return Http1Pool(max_connections=8, max_per_host=0, keepalive_s=30.0, connect_timeout_s=2.0)


async def _read_all(conn: Http1Connection) -> bytes:
    out = b""
    while data := await conn.read():
        out += data
    return out


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=6),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
async def test_a_chunked_body_is_the_same_however_the_reads_split_it(pieces: list[bytes], cuts: list[int]) -> None:
    conn = Http1Connection(_pool(), ("http", "h", 1))
    conn.connection_made(_FakeTransport())
    conn.send(b"GET / HTTP/1.1\r\n\r\n")
    for data in split(CHUNKED_HEAD + chunked(*pieces), cuts):
        conn.data_received(data)
    head = await conn.read_head()
    assert head.status == 200
    assert await _read_all(conn) == b"".join(pieces)
    assert conn.complete  # read to its end on a keep-alive connection: reusable


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=8),
       cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=12), whole=st.booleans(),
       takes=st.lists(st.booleans(), max_size=10))
async def test_a_spliced_chunked_body_is_the_same_whether_its_chunks_skip_the_parser_or_not(
        pieces: list[bytes], cuts: list[int], whole: bool, takes: list[bool]) -> None:
    """While splicing, a read that starts at a chunk goes to the relay first, and what it declines to the
    parser (and `on_body`): however the reads split the body, and whichever chunks the relay declines, the
    body comes out whole, in order, once, and the parser still ends the response."""
    conn = Http1Connection(_pool(), ("http", "h", 1))
    conn.connection_made(_FakeTransport())
    conn.send(b"GET / HTTP/1.1\r\n\r\n")
    conn.data_received(CHUNKED_HEAD)
    out: list[bytes] = []
    framed: list[bytes] = []
    answers = iter(takes)

    def relay(data: bytes) -> bool:
        # takes a read that is one whole chunk (by its length), unless told to decline it
        size_line, _, rest = data.partition(b"\r\n")
        try:
            size = int(size_line, 16)
        except ValueError:
            return False
        if size == 0 or len(rest) != size + 2 or not rest.endswith(b"\r\n") or not next(answers, True):
            return False  # declined: the parser reads it
        framed.append(data)
        out.append(rest[:-2])
        return True

    conn.on_body, conn.relay = out.append, relay
    body = chunked(*pieces)
    reads = [chunked(p)[:-5] for p in pieces] + [b"0\r\n\r\n"] if whole else split(body, cuts)
    for data in reads:
        conn.data_received(data)
    assert b"".join(out) == b"".join(pieces)
    assert conn.complete
    if whole and all(takes):
        # one chunk a read: each went to the relay, whatever its data holds
        assert len(framed) == len(pieces)


def _connection() -> tuple[Http1Connection, _FakeTransport]:
    """A connection on a fake transport with a request sent: the test feeds the answer."""
    conn = Http1Connection(_pool(), ("http", "h", 1))
    transport = _FakeTransport()
    conn.connection_made(transport)
    conn.send(b"x")
    return conn, transport


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(min_size=1, max_size=200), cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=12))
async def test_a_content_length_body_is_the_same_however_the_reads_split_it(body: bytes, cuts: list[int]) -> None:
    conn, _ = _connection()
    for data in split(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body, cuts):
        conn.data_received(data)
    assert (await conn.read_head()).status == 200
    assert await _read_all(conn) == body
    assert conn.complete


async def test_read_head_until_body_returns_once_the_first_body_bytes_are_in() -> None:
    """`until_body`: the head alone does not end the wait (one wake-up for the head and the first token);
    the body's first bytes do, and so does an empty body's end."""
    conn, _ = _connection()
    waiting = asyncio.ensure_future(conn.read_head(until_body=True))
    conn.data_received(CHUNKED_HEAD)
    await asyncio.sleep(0)  # noqa: TID251 - the waiting read's turn
    assert not waiting.done()
    conn.data_received(b"5\r\nhello\r\n")
    assert (await asyncio.wait_for(waiting, GUARD_S)).status == 200
    assert await conn.read() == b"hello"

    conn, _ = _connection()
    waiting = asyncio.ensure_future(conn.read_head(until_body=True))
    conn.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert (await asyncio.wait_for(waiting, GUARD_S)).status == 204
    assert await conn.read() == b""


async def test_read_head_until_body_leaves_a_failure_after_the_head_to_the_read() -> None:
    """A connection lost after the head, before any body byte: the head is returned and the read after it
    raises, as when the head and the body were awaited apart (a failure mid-response, not a connect one)."""
    conn, _ = _connection()
    waiting = asyncio.ensure_future(conn.read_head(until_body=True))
    conn.data_received(CHUNKED_HEAD)
    await asyncio.sleep(0)  # noqa: TID251 - the waiting read's turn
    conn.connection_lost(None)
    assert (await asyncio.wait_for(waiting, GUARD_S)).status == 200
    with pytest.raises(ConnectionLost, match="mid-response"):
        await conn.read()


async def test_a_content_length_body_ends_at_its_length() -> None:
    conn, _ = _connection()
    conn.data_received(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbu")
    conn.data_received(b"sy")
    head = await conn.read_head()
    assert (head.status, head.reason) == (503, "Service Unavailable")
    assert await _read_all(conn) == b"busy"
    assert conn.complete


async def test_a_status_line_split_mid_reason_keeps_the_whole_reason() -> None:
    conn, _ = _connection()
    conn.data_received(b"HTTP/1.1 429 Too Many")
    conn.data_received(b" Requests\r\nContent-Length: 0\r\n\r\n")
    assert await conn.read_head() == (429, "Too Many Requests")
    assert await conn.read() == b""
    assert conn.complete


async def test_an_interim_answer_is_skipped_for_the_final_one() -> None:
    conn, _ = _connection()
    conn.data_received(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert await conn.read_head() == (200, "OK")
    assert await _read_all(conn) == b"ok"
    assert conn.complete


async def test_a_no_content_answer_has_an_empty_body_and_keeps_the_connection() -> None:
    conn, _ = _connection()
    conn.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert (await conn.read_head()).status == 204
    assert await conn.read() == b""
    assert conn.complete


async def test_a_close_delimited_body_ends_at_the_close_and_is_not_reused() -> None:
    conn, _ = _connection()
    conn.data_received(b"HTTP/1.0 200 OK\r\n\r\nsome")
    conn.data_received(b" text")
    conn.connection_lost(None)
    assert await _read_all(conn) == b"some text"
    assert not conn.complete


async def test_a_transfer_coding_other_than_chunked_runs_to_the_close() -> None:
    conn, _ = _connection()
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nab")
    assert not conn.may_complete  # no framing: only the close ends it
    conn.connection_lost(None)
    assert await _read_all(conn) == b"ab"


@pytest.mark.parametrize(("answer", "reusable"), [
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n", False),  # bytes after it
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokjunk", False),
])
async def test_a_connection_is_reused_only_when_the_answer_allows_it(answer: bytes, reusable: bool) -> None:
    conn, _ = _connection()
    conn.data_received(answer)
    await conn.read_head()
    assert await _read_all(conn) == b"ok"
    assert conn.complete is reusable


async def test_bytes_arriving_after_the_response_make_the_connection_unusable() -> None:
    conn, _ = _connection()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await conn.read_head()
    assert await _read_all(conn) == b"ok"
    conn.data_received(b"HTTP/1.1 200 OK\r\n")
    assert not conn.complete


async def test_a_connection_lost_mid_body_fails_the_read() -> None:
    conn, _ = _connection()
    conn.data_received(CHUNKED_HEAD + b"5\r\nhello\r\n")
    await conn.read_head()
    assert await conn.read() == b"hello"
    conn.connection_lost(ConnectionResetError("reset"))
    with pytest.raises(ConnectionLost) as caught:
        await conn.read()
    assert caught.value.response_started


async def test_a_content_length_body_cut_short_by_the_close_fails_the_read() -> None:
    conn, _ = _connection()
    conn.data_received(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 10\r\n\r\nhalf")
    await conn.read_head()
    assert await conn.read() == b"half"
    conn.connection_lost(None)
    with pytest.raises(ConnectionLost, match="mid-response"):
        await conn.read()


async def test_a_connection_lost_before_the_answer_says_so() -> None:
    conn, _ = _connection()
    conn.connection_lost(None)
    with pytest.raises(ConnectionLost, match="before the response") as caught:
        await conn.read_head()
    assert not caught.value.response_started


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 abc\r\n\r\n",
    b"SPDY/3 200 OK\r\n\r\n",
    b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    CHUNKED_HEAD + b"zz\r\nhello\r\n",
    CHUNKED_HEAD + b"3\r\nhello\r\n",  # chunk data longer than its size
    CHUNKED_HEAD + b"ffffffffffffffffffff\r\n",  # chunk size overflow
])
async def test_a_malformed_answer_is_a_protocol_violation(answer: bytes) -> None:
    conn, transport = _connection()
    conn.data_received(answer)
    with pytest.raises(ProtocolViolation):
        await conn.read_head()
        await _read_all(conn)  # the body bytes before the fault, then the fault
    assert transport.closing
    assert not conn.complete


async def test_a_response_head_beyond_the_bound_is_a_protocol_violation() -> None:
    conn, transport = _connection()
    conn.data_received(b"HTTP/1.1 200 OK\r\n")
    for _ in range(80):
        conn.data_received(b"x-filler: " + b"a" * 1000 + b"\r\n")
    with pytest.raises(ProtocolViolation, match="head too large"):
        await conn.read_head()
    assert transport.closing


async def test_a_reader_not_keeping_up_pauses_the_socket_until_it_reads() -> None:
    conn, transport = _connection()
    piece = b"a" * 65536
    conn.data_received(CHUNKED_HEAD)
    await conn.read_head()
    for _ in range(20):  # 1.25 MiB unread: above the buffer bound
        conn.data_received(b"%x\r\n" % len(piece) + piece + b"\r\n")
    assert not transport.reading
    assert len(await conn.read()) == 20 * len(piece)
    assert transport.reading


async def test_a_failing_body_hook_fails_the_read_callback_as_without_the_parser() -> None:
    conn, _ = _connection()
    conn.data_received(CHUNKED_HEAD)
    await conn.read_head()

    def broken_hook(data: bytes) -> None:
        raise RuntimeError("hook failed")

    conn.on_body = broken_hook
    with pytest.raises(RuntimeError, match="hook failed"):
        conn.data_received(b"2\r\nok\r\n")


async def test_abort_wakes_a_waiting_read_with_the_given_error() -> None:
    conn = Http1Connection(_pool(), ("http", "h", 1))
    conn.connection_made(_FakeTransport())
    conn.send(b"x")
    conn.data_received(CHUNKED_HEAD)
    await conn.read_head()
    reading = asyncio.ensure_future(conn.read())
    await asyncio.sleep(0)  # noqa: TID251 - let the read start waiting
    conn.abort(TimeoutError("idle"))
    with pytest.raises(TimeoutError, match="idle"):
        await asyncio.wait_for(reading, GUARD_S)


def test_header_values_with_line_breaks_are_refused() -> None:
    endpoint = Endpoint.parse("http://127.0.0.1:8000/v1/completions")
    request = encode_request("POST", endpoint, {"x-request-id": "r1"}, b"{}")
    assert request.startswith(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Length: 2\r\n")
    assert request.endswith(b"x-request-id: r1\r\n\r\n{}")
    assert encode_request("GET", endpoint, {}, b"") == (b"GET /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
                                                         b"Content-Length: 0\r\n\r\n")
    two = encode_request("POST", endpoint, {"a": "1", "b": "2"}, b"{}")
    assert two.endswith(b"Content-Length: 2\r\na: 1\r\nb: 2\r\n\r\n{}")
    for bad in ({"x-request-id": "r1\r\nx-evil: 1"}, {"a": "1", "x-request-id": "r1\nx-evil: 1"},
                {"x-request-id": "r1\r"}, {"x-evil: 1\r\nx-request-id": "r1"}, {"a": "1", "x:y": "2"}):
        with pytest.raises(ValueError, match="line break or a colon"):
            encode_request("POST", endpoint, bad, b"{}")


def test_endpoints_parse_default_ports_and_refuse_other_schemes() -> None:
    assert Endpoint.parse("https://engine.example/v1/chat/completions?x=1") == Endpoint(
        "https", "engine.example", 443, "/v1/chat/completions?x=1", "engine.example")
    assert Endpoint.parse("http://[::1]:9000/v1").host_header == "[::1]:9000"
    with pytest.raises(ValueError, match="not an http"):
        Endpoint.parse("ftp://host/x")


# -- the pool, against a raw loopback server ----------------------------------------------------------


@asynccontextmanager
async def raw_server(answer: bytes | list[bytes], *, close_after: bool = False,
                     hold_s: float = 0.0) -> AsyncIterator[tuple[Endpoint, list[int]]]:
    """Answers every request with `answer` (a list: written piece by piece); yields the endpoint and the
    number of requests each accepted connection carried."""
    per_connection: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(per_connection)
        per_connection.append(0)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                per_connection[index] += 1
                for piece in answer if isinstance(answer, list) else [answer]:
                    writer.write(piece)
                    await writer.drain()
                    if hold_s:
                        await asyncio.sleep(hold_s)  # noqa: TID251 - the server's pacing
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Endpoint.parse(f"http://127.0.0.1:{port}/v1/completions"), per_connection
    finally:
        server.close()
        await server.wait_closed()


async def _one(pool: Http1Pool, endpoint: Endpoint, *, consumed_at: bytes | None = None) -> bytes:
    conn, head = await pool.exchange_head(endpoint, encode_request("POST", endpoint, {}, b"{}"))
    body = b""
    try:
        while data := await conn.read():
            body += data
            if consumed_at is not None and body.endswith(consumed_at):
                break
    finally:
        pool.release(conn, body_consumed=consumed_at is not None and body.endswith(consumed_at))
    assert head.status == 200
    return body


async def test_a_keep_alive_connection_carries_the_next_request() -> None:
    async with raw_server(CHUNKED_HEAD + chunked(b"data: x\n\n")) as (endpoint, per_connection):
        pool = _pool()
        try:
            for _ in range(3):
                assert await asyncio.wait_for(_one(pool, endpoint), GUARD_S) == b"data: x\n\n"
        finally:
            await pool.close()
    assert per_connection == [3]


async def test_a_response_that_ends_after_the_caller_stopped_reading_keeps_its_connection() -> None:
    # the [DONE] event first, the chunked terminator a moment later: the connection waits for it
    answer = [CHUNKED_HEAD + b"e\r\ndata: [DONE]\n\n\r\n", b"0\r\n\r\n"]
    async with raw_server(answer, hold_s=0.05) as (endpoint, per_connection):
        pool = _pool()
        try:
            for _ in range(2):
                body = await asyncio.wait_for(_one(pool, endpoint, consumed_at=b"[DONE]\n\n"), GUARD_S)
                assert body == b"data: [DONE]\n\n"
                await asyncio.sleep(0.2)  # noqa: TID251 - let the terminator arrive
        finally:
            await pool.close()
    assert per_connection == [2]


async def test_a_connection_the_server_closed_while_idle_is_replaced_without_failing_the_request() -> None:
    async with raw_server(CHUNKED_HEAD + chunked(b"ok"), close_after=True) as (endpoint, per_connection):
        pool = _pool()
        try:
            assert await asyncio.wait_for(_one(pool, endpoint), GUARD_S) == b"ok"
            await asyncio.sleep(0.05)  # noqa: TID251 - the server's close reaches the idle connection
            assert await asyncio.wait_for(_one(pool, endpoint), GUARD_S) == b"ok"
        finally:
            await pool.close()
    assert per_connection == [1, 1]


async def test_the_connection_limit_makes_a_request_wait_for_a_free_connection() -> None:
    async with raw_server([CHUNKED_HEAD, chunked(b"ok")], hold_s=0.05) as (endpoint, per_connection):
        pool = Http1Pool(max_connections=1, max_per_host=1, keepalive_s=30.0, connect_timeout_s=2.0)
        try:
            bodies = await asyncio.wait_for(asyncio.gather(*(_one(pool, endpoint) for _ in range(3))), GUARD_S)
        finally:
            await pool.close()
    assert bodies == [b"ok"] * 3
    assert per_connection == [3]  # one connection, used in turn


async def test_a_refused_connection_is_a_connection_failure() -> None:
    async with raw_server(b"") as (endpoint, _):
        pass  # the server is gone: its port refuses
    pool = _pool()
    try:
        with pytest.raises(ConnectionFailed):
            await asyncio.wait_for(pool.exchange_head(endpoint, b"GET / HTTP/1.1\r\n\r\n"), GUARD_S)
    finally:
        await pool.close()


async def test_a_head_that_misses_its_deadline_times_out_and_its_connection_is_closed() -> None:
    async with raw_server([]) as (endpoint, per_connection):  # reads the request, never answers
        pool = _pool()
        try:
            deadline = asyncio.get_running_loop().time() + 0.2
            with pytest.raises(HeadTimeout):
                await asyncio.wait_for(pool.exchange_head(endpoint, encode_request("POST", endpoint, {}, b"{}"),
                                                          deadline), GUARD_S)
            assert pool._open_total == 0  # closed, not kept: the engine sees the disconnect
        finally:
            await pool.close()
    assert per_connection == [1]


async def test_a_head_in_time_leaves_no_deadline_behind_on_its_connection() -> None:
    # each answer comes 0.3 s after its request: the second request is still waiting for its head when
    # the first one's deadline passes
    async with raw_server([b"", CHUNKED_HEAD + chunked(b"ok")], hold_s=0.3) as (endpoint, per_connection):
        pool = _pool()
        try:
            request = encode_request("POST", endpoint, {}, b"{}")
            conn, head = await asyncio.wait_for(
                pool.exchange_head(endpoint, request, asyncio.get_running_loop().time() + 0.8), GUARD_S)
            while await conn.read():
                pass
            pool.release(conn)
            # the same connection, no deadline: the first one's timer must not end this exchange
            assert await asyncio.wait_for(_one(pool, endpoint), GUARD_S) == b"ok"
        finally:
            await pool.close()
    assert head.status == 200
    assert per_connection == [2]


# -- splicing: UpstreamClient.stream_sse writing events to a sink from the read callback ----------------


def token_event(i: int, finish: str | None = None) -> bytes:
    finish_json = "null" if finish is None else f'"{finish}"'
    return (b'data: {"choices":[{"index":0,"text":" t%d","finish_reason":%b}]}\n\n' % (i, finish_json.encode()))


class RecordingSink:
    """A client connection that takes `accept` writes, then reports that it is not keeping up. Its relay is
    the Python one (chunk_relay.py), writing each relayed chunk's data."""

    def __init__(self, accept: int = 1_000_000) -> None:
        self.accept = accept
        self.written: list[bytes] = []

    @property
    def writing_paused(self) -> bool:
        return len(self.written) >= self.accept

    def write(self, data: bytes) -> bool:
        if self.writing_paused:
            return False
        self.written.append(data)
        return True

    def relay(self, now: Callable[[], float]) -> PyChunkRelay:
        return PyChunkRelay(self.written.append, lambda: False, self, False, now)


async def _splice_all(client: UpstreamClient, endpoint: Endpoint, sink: RecordingSink) -> list[SseBytes]:
    """Reads the first block plainly, then sends `sink` for the rest; returns every block received."""
    url = f"{endpoint.scheme}://{endpoint.host}:{endpoint.port}"
    stream = client.stream_sse(url, {"model": "m", "prompt": "x"})
    blocks = [await stream.asend(None)]
    try:
        while True:
            blocks.append(await stream.asend(sink))
    except StopAsyncIteration:
        pass
    return blocks


def _events(n: int, finish_last: bool = True) -> list[bytes]:
    return [token_event(i, "length" if finish_last and i == n - 1 else None) for i in range(n)]


async def test_spliced_events_go_to_the_sink_and_the_last_block_counts_them() -> None:
    events = _events(6)
    answer = [CHUNKED_HEAD] + [chunked(e)[:-5] for e in events] + [chunked(b"data: [DONE]\n\n")]
    async with raw_server(answer, hold_s=0.01) as (endpoint, per_connection), UpstreamClient() as client:
        sink = RecordingSink()
        blocks = await asyncio.wait_for(_splice_all(client, endpoint, sink), GUARD_S)
        await asyncio.wait_for(_splice_all(client, endpoint, RecordingSink()), GUARD_S)  # reuses the connection
    assert blocks[0].data == events[0] and blocks[0].chunks == 1
    # the closing [DONE] comes back in the last block, to leave with the end of the client's body
    assert b"".join(sink.written) == b"".join(events[1:])
    assert blocks[-1].done and blocks[-1].data == b"data: [DONE]\n\n"
    assert sum(b.chunks for b in blocks) == 6
    assert per_connection == [2]


async def test_a_client_not_keeping_up_gets_the_events_held_and_handed_back() -> None:
    events = _events(5)
    answer = [CHUNKED_HEAD] + [chunked(e)[:-5] for e in events] + [chunked(b"data: [DONE]\n\n")]
    async with raw_server(answer, hold_s=0.01) as (endpoint, _), UpstreamClient() as client:
        sink = RecordingSink(accept=1)
        blocks = await asyncio.wait_for(_splice_all(client, endpoint, sink), GUARD_S)
    forwarded = blocks[0].data + b"".join(sink.written) + b"".join(b.data for b in blocks[1:])
    assert forwarded == b"".join(events) + b"data: [DONE]\n\n"  # nothing lost, nothing twice, in order
    assert sum(b.chunks for b in blocks) == 5 and blocks[-1].done


async def test_an_engine_error_while_splicing_fails_after_the_events_before_it() -> None:
    error = b'data: {"error": {"message": "engine died"}}\n\n'
    answer = [CHUNKED_HEAD, chunked(token_event(0))[:-5], chunked(token_event(1))[:-5], chunked(error)]
    async with raw_server(answer, hold_s=0.01) as (endpoint, _), UpstreamClient() as client:
        sink = RecordingSink()
        with pytest.raises(UpstreamError) as caught:
            await asyncio.wait_for(_splice_all(client, endpoint, sink), GUARD_S)
    assert b"".join(sink.written) == token_event(1)
    assert (caught.value.kind, caught.value.before_first_token) == ("status", False)


async def test_a_stall_while_splicing_hits_the_idle_timeout() -> None:
    answer = [CHUNKED_HEAD, chunked(token_event(0))[:-5], chunked(token_event(1))[:-5]]  # then silence
    config = UpstreamConfig(idle_timeout_s=0.3)
    async with raw_server(answer, hold_s=0.01) as (endpoint, _), UpstreamClient(config) as client:
        sink = RecordingSink()
        with pytest.raises(UpstreamError) as caught:
            await asyncio.wait_for(_splice_all(client, endpoint, sink), GUARD_S)
    assert sink.written == [token_event(1)]
    assert (caught.value.kind, caught.value.before_first_token) == ("timeout", False)


async def test_tokens_relayed_while_splicing_keep_a_stream_longer_than_the_idle_timeout_alive() -> None:
    # each token is relayed from the read callback (chunk_relay.py), with no task switch: the idle clock
    # must restart at each one, or a steady stream would time out one idle_timeout_s after the splice began
    events = _events(16)
    answer = [CHUNKED_HEAD] + [chunked(e)[:-5] for e in events] + [chunked(b"data: [DONE]\n\n")]
    config = UpstreamConfig(idle_timeout_s=1.0)
    async with raw_server(answer, hold_s=0.1) as (endpoint, _), UpstreamClient(config) as client:
        sink = RecordingSink()
        blocks = await asyncio.wait_for(_splice_all(client, endpoint, sink), GUARD_S)
    assert b"".join(sink.written) == b"".join(events[1:])  # 1.5 s of tokens, 0.1 s apart
    assert blocks[-1].done and sum(b.chunks for b in blocks) == 16


async def test_a_close_after_the_finish_reason_without_done_ends_the_spliced_stream() -> None:
    events = _events(3)
    answer = [CHUNKED_HEAD] + [chunked(e)[:-5] for e in events] + [b"0\r\n\r\n"]
    async with raw_server(answer, hold_s=0.01) as (endpoint, _), UpstreamClient() as client:
        blocks = await asyncio.wait_for(_splice_all(client, endpoint, RecordingSink()), GUARD_S)
    assert blocks[-1].done and blocks[-1].data == b"data: [DONE]\n\n"
