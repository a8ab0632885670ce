"""The router's HTTP/1.1 server (opscale_services.router.http1_server) over real sockets, against clients
that misbehave: each test is the regression test of one defect a review found.

- a client that pipelines requests and never reads the answers holds a bounded buffer (not one that grows
  with what it sends): the next answer waits for it to read, and nothing more is read meanwhile;
- a head beyond its bound that arrives while an earlier answer is still streaming is not parsed (llhttp
  would buffer its header line without end) and nothing more is read;
- `100 Continue` goes out when its request's turn comes, never inside an earlier answer's body;
- without a key, a request is refused 401 from its head: before `100 Continue` and whatever its body's size;
- an answer the client is gone for is a disconnect, not a logged server error;
- one read of more pipelined requests than the bound queues no more than the bound: 429 past it, then the
  close.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import pytest
from httptools import HttpResponseParser
from prometheus_client import CollectorRegistry

from opscale.openai.schema import ParsedRequest, TokenChunk
from opscale.routing.tenants import ApiKeySpec, KeyTable
from opscale.runtime.clock import WallClock
from opscale.runtime.live.server_limits import ServerLimits

from opscale_services.router.api import build_router_app, serve_router
from opscale_services.router.auth import TenantGate
from opscale_services.router.http1_server import Http1Exchange, Http1Request, Http1Server
from opscale_services.router.metrics import RouterMetrics

pytestmark = pytest.mark.unit

GUARD_S = 10.0  # hang guard only, never a performance threshold
LIMITS = ServerLimits(max_header_bytes=1024, max_headers=8, max_body_bytes=4096)
KEY = "sk-direct-0123456789abcdef"


class Slow:
    """A handler: /slow streams one event and ends when `release` is set; anything else gets a small JSON
    answer naming its method and body length."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.streaming = asyncio.Event()

    async def __call__(self, request: Http1Request, exchange: Http1Exchange) -> None:
        if request.path == "/slow":
            head = exchange.chunked_head(200, b"Content-Type: text/event-stream\r\n")
            await exchange.write(b"data: first\n\n", head)
            self.streaming.set()
            await self.release.wait()
            await exchange.end(b"data: [DONE]\n\n")
            return
        exchange.respond(200, json.dumps({"method": request.method, "body": len(request.body)}).encode())


@asynccontextmanager
async def serving(handler: Slow, limits: ServerLimits = LIMITS) -> AsyncIterator[tuple[Http1Server, int]]:
    server = Http1Server(handler, limits, shutdown_timeout_s=1.0)
    await server.start("127.0.0.1", 0)
    try:
        yield server, server.addresses[0][1]
    finally:
        handler.release.set()
        await server.close()


def client_socket(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


@asynccontextmanager
async def behind_a_stream(handler: Slow, port: int) -> AsyncIterator[socket.socket]:
    """A client connection whose first request is a stream still being answered."""
    sock = client_socket(port)
    try:
        sock.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(handler.streaming.wait(), GUARD_S)
        yield sock
    finally:
        sock.close()


async def send_until_stuck(sock: socket.socket, block: bytes, cap_bytes: int) -> int:
    """Send `block` again and again without reading, until the server stops taking bytes (the send buffer
    stays full over many turns of the loop) or drops the connection, or `cap_bytes` went; the bytes sent."""
    sent = stuck = 0
    view = memoryview(block)
    at = 0
    while sent < cap_bytes and stuck < 200:
        try:
            n = sock.send(view[at:])
        except BlockingIOError:
            n = 0
        except ConnectionError:
            break  # the server dropped the connection
        sent += n
        at = (at + n) % len(block)
        stuck = 0 if n else stuck + 1
        await asyncio.sleep(0.001 if not n else 0)  # noqa: TID251 - the server's turn
    return sent


async def read_some(sock: socket.socket, until: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while until not in data:
        piece = await asyncio.wait_for(loop.sock_recv(sock, 65536), GUARD_S)
        if not piece:
            break
        data += piece
    return data


def answers(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The whole final answers in `data`: (status, headers with lower-case names, body unframed)."""
    out: list[tuple[int, dict[str, str], bytes]] = []
    current: dict[str, object] = {}

    class Reader:
        def on_message_begin(self) -> None:
            current.update(headers={}, body=b"")

        def on_header(self, name: bytes, value: bytes) -> None:
            current["headers"][name.decode().lower()] = value.decode()  # type: ignore[index]

        def on_body(self, body: bytes) -> None:
            current["body"] += body  # type: ignore[operator]

        def on_message_complete(self) -> None:
            out.append((parser.get_status_code(), current["headers"], current["body"]))  # type: ignore[arg-type]

    parser = HttpResponseParser(Reader())
    parser.feed_data(data)
    return out


async def test_a_client_that_pipelines_and_never_reads_holds_a_bounded_buffer() -> None:
    async with serving(Slow()) as (server, port):
        sock = client_socket(port, rcvbuf=4096)
        try:
            sent = await send_until_stuck(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 1000, 64 << 20)
            assert sent < 64 << 20, "the server read on while its answers piled up"
            # Either the server stopped reading once the client stopped reading its answers, holding about
            # one buffer's worth (the answers to one read of requests), or one read brought more requests
            # than may wait and the connection was refused and closed: never what the client sent.
            for conn in server.connections:
                assert conn.transport is not None
                buffered = conn.transport.get_write_buffer_size()
                assert buffered < 4 << 20, buffered
                assert len(conn._queue) <= 64
                assert (conn.writing_paused and conn.task is None) or conn._refused
        finally:
            sock.close()


async def test_a_read_of_more_pipelined_requests_than_the_bound_gets_429_past_it_then_the_close() -> None:
    handler = Slow()
    async with serving(handler) as (server, port), behind_a_stream(handler, port) as sock:
        [conn] = server.connections
        sock.send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n" * 100)  # one read: the stream's answer is in progress
        for _ in range(50):
            if conn._refused:
                break
            await asyncio.sleep(0.001)  # noqa: TID251 - the server's turn to read
        assert len(conn._queue) == 64  # waiting, at most: not all that one read brought
        handler.release.set()
        data = await read_some(sock, b"\x00never")  # until the server closes
    got = answers(data)
    assert [status for status, _, _ in got] == [200] * 65 + [429]
    error = json.loads(got[-1][2])["error"]
    assert error["code"] == "too_many_pipelined_requests" and error["type"] == "rate_limit_error", error
    assert got[-1][1].get("connection") == "close"


async def test_a_head_over_its_bound_behind_a_streaming_answer_is_not_parsed_or_read() -> None:
    handler = Slow()
    async with serving(handler) as (server, port), behind_a_stream(handler, port) as sock:
        [conn] = server.connections
        fed = [0]
        parser = conn._parser

        class Counting:  # counts what llhttp is given
            def __getattr__(self, name: str) -> object:
                return getattr(parser, name)

            def feed_data(self, data: bytes) -> None:
                fed[0] += len(data)
                parser.feed_data(data)

        conn._parser = Counting()  # type: ignore[assignment]
        sock.send(b"GET /x HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = await send_until_stuck(sock, b"a" * 65536, 16 << 20)
        assert sent < 16 << 20, "the server read an endless header on"
        assert fed[0] <= server.max_head_bytes + (1 << 20), fed[0]
        handler.release.set()
        data = await read_some(sock, b"request_header_fields_too_large")
    assert data.startswith(b"HTTP/1.1 200") and b"0\r\n\r\nHTTP/1.1 431" in data


async def test_100_continue_waits_for_the_answer_being_streamed_before_it() -> None:
    handler = Slow()
    async with serving(handler) as (_, port), behind_a_stream(handler, port) as sock:
        sock.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        first = await read_some(sock, b"data: first")
        for _ in range(5):
            await asyncio.sleep(0)  # noqa: TID251 - the server's turn to read the head
        handler.release.set()
        data = first + await read_some(sock, b"HTTP/1.1 100 Continue\r\n\r\n")
        # the stream's body ends whole, and only then comes the interim answer
        stream, _, rest = data.partition(b"0\r\n\r\n")
        assert b"100 Continue" not in stream and rest == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.send(b"body")
        data = await read_some(sock, b"}")
    [(status, _, body)] = answers(data)
    assert status == 200 and json.loads(body) == {"method": "POST", "body": 4}


class OneToken:
    def __init__(self) -> None:
        self.on_generate = lambda: None

    def models(self) -> list[str]:
        return ["m"]

    def check(self, req: object) -> None:
        return None

    async def generate(self, req: ParsedRequest, trace_headers: dict[str, str]) -> AsyncIterator[TokenChunk]:
        self.on_generate()
        yield TokenChunk(" a", 0, "stop")


@asynccontextmanager
async def gated_router(metrics: RouterMetrics | None = None) -> AsyncIterator[int]:
    gate = TenantGate(KeyTable([ApiKeySpec.model_validate({"id": "t", "secret": KEY})], WallClock().now_s()),
                      WallClock().now_s)
    server = await serve_router(build_router_app(OneToken(), gate=gate, metrics=metrics), LIMITS,
                                shutdown_timeout_s=1.0)
    try:
        yield server.addresses[0][1]
    finally:
        await server.close()


@pytest.mark.parametrize("length", [10, 1 << 20], ids=["small body", "body over its bound"])
async def test_a_request_without_a_key_is_401_from_its_head_before_100_continue(length: int) -> None:
    async with gated_router() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), GUARD_S)  # the answer, then the close
        writer.close()
    [(status, headers, body)] = answers(data)
    assert status == 401 and headers["www-authenticate"] == "Bearer" and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "invalid_api_key"


async def test_a_body_over_its_bound_is_counted_under_its_keys_tenant() -> None:
    metrics = RouterMetrics(CollectorRegistry())
    async with gated_router(metrics) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                     "Content-Length: 100000\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), GUARD_S)
        writer.close()
    assert data.startswith(b"HTTP/1.1 413")
    assert metrics._answers == {("", 413, "t"): 1}


async def test_an_answer_whose_client_is_gone_is_a_disconnect_not_a_server_error(
        caplog: pytest.LogCaptureFixture) -> None:
    backend = OneToken()
    server = await serve_router(build_router_app(backend), LIMITS, shutdown_timeout_s=1.0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.addresses[0][1])

        def client_gone() -> None:  # the client closed: its transport is closing, connection_lost still to come
            for conn in server.connections:
                assert conn.transport is not None
                conn.transport.close()

        backend.on_generate = client_gone
        body = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 1}).encode()
        with caplog.at_level(logging.INFO):
            writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b"
                         % (len(body), body))
            assert await asyncio.wait_for(reader.read(), GUARD_S) == b""
            for _ in range(5):
                await asyncio.sleep(0)  # noqa: TID251 - the handler's end
        writer.close()
    finally:
        with suppress(Exception):
            await server.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


class Flood(Slow):
    """A stream that writes events until its client stops taking them; it records how its writes ended."""

    def __init__(self) -> None:
        super().__init__()
        self.ended: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def __call__(self, request: Http1Request, exchange: Http1Exchange) -> None:
        head = exchange.chunked_head(200, b"Content-Type: text/event-stream\r\n")
        try:
            while True:
                await exchange.write(b"data: " + b"x" * 16384 + b"\n\n", head)
                head = b""
        except BaseException as exc:
            self.ended.set_result(exc)
            raise


async def test_a_stream_whose_client_reads_nothing_ends_at_the_send_timeout() -> None:
    handler = Flood()
    async with serving(handler, LIMITS.model_copy(update={"send_timeout_s": 0.2})) as (server, port):
        sock = client_socket(port, rcvbuf=4096)
        try:
            sock.send(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            ended = await asyncio.wait_for(handler.ended, GUARD_S)  # and never read
            assert isinstance(ended, ConnectionResetError), ended
            for _ in range(5):
                await asyncio.sleep(0)  # noqa: TID251 - connection_lost
            assert not server.connections  # dropped, not left to flush to a client that does not read
        finally:
            sock.close()


async def test_a_pipelining_client_that_reads_nothing_is_dropped_at_the_send_timeout() -> None:
    async with serving(Slow(), LIMITS.model_copy(update={"send_timeout_s": 0.2})) as (server, port):
        sock = client_socket(port, rcvbuf=4096)
        try:
            await send_until_stuck(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 1000, 64 << 20)

            async def dropped() -> None:
                while server.connections:
                    await asyncio.sleep(0.01)  # noqa: TID251 - polled under the hang guard

            await asyncio.wait_for(dropped(), GUARD_S)
        finally:
            sock.close()
