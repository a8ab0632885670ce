"""The router's forwarded event streams at the HTTP level (api.RouterApi on http1_server): chunked to an
HTTP/1.1 client, whose connection is kept for the next request unless it asks to close it; to an HTTP/1.0
client the body runs to the close. The same head either way, every event in order however slowly the
client reads (the writes wait for it)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

import pytest

from opscale.openai.schema import ParsedRequest
from opscale.runtime.live.server_limits import ServerLimits

from opscale_services.router.api import build_router_app, serve_router
from opscale_services.router.sse_passthrough import DONE_EVENT, SseBytes, SseSink

pytestmark = pytest.mark.unit

GUARD_S = 10.0  # hang guard only, never a performance threshold


def event(i: int, pad: int = 0) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": 0, "text": f" t{i}" + "x" * pad,
                                                "finish_reason": None}]}).encode() + b"\n\n"


class Forwarding:
    """A back end that forwards `events` engine events of `pad` bytes each, as the upstream client does:
    the first as a block, the rest written to the API's sink while it takes them and yielded as blocks
    when it does not (the client is not keeping up), then `[DONE]`. `framed`: each event goes to the sink's
    relay as the engine's HTTP chunk (the steady state's path, chunk_relay.py) rather than to `write`."""

    def __init__(self, events: int, pad: int = 0, framed: bool = False) -> None:
        self.events = events
        self.pad = pad
        self.framed = framed
        self.refused = 0  # events the sink did not take
        self.finished = False  # every event was handed to the API

    def models(self) -> list[str]:
        return ["m"]

    def check(self, req: object) -> None:
        return None

    async def generate(self, req: ParsedRequest, trace_headers: dict[str, str]
                       ) -> AsyncGenerator[SseBytes, SseSink | None]:
        sink = yield SseBytes(event(0, self.pad), 1)
        for i in range(1, self.events):
            data = event(i, self.pad)
            if sink is not None and self.framed:
                relay = sink.relay(time.monotonic)
                relay.armed = True
                if relay(b"%x\r\n%b\r\n" % (len(data), data)):
                    continue
            elif sink is not None and sink.write(data):
                continue
            self.refused += 1
            sink = yield SseBytes(data, 1)
        self.finished = True
        yield SseBytes(DONE_EVENT, 0, done=True)


@asynccontextmanager
async def router(backend: Forwarding) -> AsyncIterator[int]:
    server = await serve_router(build_router_app(backend), ServerLimits(), shutdown_timeout_s=1.0)
    try:
        yield server.addresses[0][1]
    finally:
        await server.close()


def request(version: str = "1.1", extra: str = "") -> bytes:
    body = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 4, "stream": True}).encode()
    return (f"POST /v1/completions HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[dict[str, str], bytes]:
    """One chunked answer: its head's fields (lower-case names) and its body, unframed."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD_S)).decode()
    lines = head.split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    fields = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if line)}
    assert fields["transfer-encoding"] == "chunked"
    body = b""
    while True:
        size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), GUARD_S))[:-2], 16)
        data = await asyncio.wait_for(reader.readexactly(size + 2), GUARD_S)
        assert data.endswith(b"\r\n")
        if size == 0:
            return fields, body
        body += data[:-2]


def expected(events: int, pad: int = 0) -> bytes:
    return b"".join(event(i, pad) for i in range(events)) + DONE_EVENT


async def test_answers_on_a_kept_connection_are_written_whole_and_in_order() -> None:
    async with router(Forwarding(5)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(2):  # the connection is kept: the second answer comes on it too
                writer.write(request())
                fields, body = await read_answer(reader)
                assert body == expected(5)
                assert fields["content-type"] == "text/event-stream; charset=utf-8"
                assert fields["x-request-id"].startswith("cmpl-") and "connection" not in fields
        finally:
            writer.close()


@pytest.mark.parametrize("framed", [False, True])
@pytest.mark.parametrize(("version", "extra"), [("1.1", "Connection: close\r\n"), ("1.0", "")])
async def test_a_client_that_does_not_keep_its_connection_gets_the_same_answer_then_the_close(
        version: str, extra: str, framed: bool) -> None:
    """Also with the events relayed as the engine's chunks: to an HTTP/1.0 client, unframed."""
    async with router(Forwarding(5, framed=framed)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request())
        kept, _ = await read_answer(reader)
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request(version, extra))
        if version == "1.0":  # no chunked coding in HTTP/1.0: the body runs to the close
            answer = await asyncio.wait_for(reader.read(), GUARD_S)
            head, body = answer.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 200 OK") and b"Transfer-Encoding" not in head
            assert b"Connection: close" in head
            assert body == expected(5)
        else:
            closing, body = await read_answer(reader)
            assert body == expected(5) and closing["connection"] == "close"
            # the same head as on a kept connection, but for the connection's fate
            assert {k: v for k, v in closing.items() if k not in ("connection", "date", "x-request-id")} == \
                {k: v for k, v in kept.items() if k not in ("date", "x-request-id")}
            assert await asyncio.wait_for(reader.read(), GUARD_S) == b""  # and the connection closed
        writer.close()


async def test_a_client_that_reads_slowly_gets_every_event_and_the_writes_wait_for_it() -> None:
    backend = Forwarding(400, pad=32 * 1024)  # ~13 MB: more than the sockets hold
    async with router(backend) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
        writer.write(request())
        await asyncio.sleep(0.5)  # noqa: TID251 - the client not reading for a while
        assert not backend.finished  # the answer waits for the client rather than piling up in memory
        _, body = await read_answer(reader)
        writer.close()
    assert body == expected(400, pad=32 * 1024)
    assert backend.refused > 0  # the sink refused events while the client was not keeping up
