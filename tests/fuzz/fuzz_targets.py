"""Fuzz targets: one function per parser that reads bytes from outside, `target(data: bytes) -> bool`.

Each target feeds `data` to one parser and checks its contract: it answers with its own clean error or
a result, never any other exception, and answers whether the parser accepted the input (a result,
not an error: the seeds must be accepted). A target raises (a crash, to atheris and hypothesis alike) only
when that contract breaks. The same targets run under atheris for a bounded time in the slow tests
(run_atheris.py) and under hypothesis, on mutated seeds, in the default run (test_fuzz.py).

- the OpenAI request bodies (`parse_completion`): a `ParsedRequest` or an `ApiError` with a 4xx status
  and OpenAI's error body;
- the protobuf messages of the live bus (`codec.decode`): the event, or `CodecError` (which the bus
  counts and terminates, see bus.py `_settle`);
- every trace reader (Azure 2023 and 2024, BurstGPT, Mooncake, ServeGen, opscale's CSV and JSONL, the
  mapped readers, format detection): requests, or `TraceFormatError` naming the file, and a line-level
  fault names its line (`path:LINE: ...`);
- the router's engine client: the HTTP/1.1 response reader (http1.py, with the error-body reader of
  upstream.py), the SSE decoder (opscale.openai.sse) and the event forwarder (sse_passthrough.py);
- the router's API server: the HTTP/1.1 request reader (http1_server.py): every request it reads is
  answered in order, and what it cannot read (a bad request line, a head or body over its limits) gets
  its status and OpenAI's error body, then the close; what it writes is always valid HTTP/1.1 answers.
  Its reading of whole, plain requests in C (parse_request) gives the same requests, answers and close as
  llhttp's reading of the same reads.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import math
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from httptools import HttpResponseParser

from opscale.openai.schema import ApiError, ParsedRequest, RequestKind, error_for_status, parse_completion
from opscale.openai.sse import SseDecoder, SseError
from opscale.runtime.live import codec
from opscale.runtime.live.server_limits import ServerLimits
from opscale.traces import ColumnMapping, ReadOptions, ReadStats, TraceFormatError, read_trace
from opscale.traces.servegen_data import read_client_lengths, read_client_windows

from opscale_services.router import chunk_relay as _relays
from opscale_services.router import http1_server as _server
from opscale_services.router.chunk_relay import PyChunkRelay, Relay, chunk_data
from opscale_services.router.http1 import ConnectionLost, Http1Connection, Http1Pool, ProtocolViolation
from opscale_services.router.http1_server import (
    Handler,
    HeadCheck,
    HeadRefusal,
    Http1Exchange,
    Http1Request,
    Http1Server,
)
from opscale_services.router.sse_passthrough import SseForwarder, decode_event, event_usage
from opscale_services.router.upstream import UpstreamClient, UpstreamConfig

Target = Callable[[bytes], bool]

_WORK = Path(tempfile.mkdtemp(prefix="opscale-fuzz-"))  # the trace targets' files, one per target
atexit.register(shutil.rmtree, _WORK, ignore_errors=True)
_MAX_EVENT_BYTES = 8192  # small, so that fuzzed inputs reach the size bound (yet hold a 4301-digit number)


def _splits(data: bytes) -> tuple[list[bytes], bytes]:
    """The first byte chooses how the rest is cut into reads (1 to 256 bytes each, in turn)."""
    if not data:
        return [], b""
    step, rest = data[0] + 1, data[1:]
    return [rest[i:i + step] for i in range(0, len(rest), step)], rest


# -- the OpenAI request bodies ----------------------------------------------------------------------


def openai_request(data: bytes) -> bool:
    # the route, as the router has it: chat when the body reads like one (the seeds take both paths)
    kind = RequestKind.CHAT if b'"messages"' in data else RequestKind.COMPLETION
    headers = {"x-opscale-region": "eu-west"} if len(data) % 3 == 0 else {}
    result = parse_completion(data, kind, headers=headers)
    if isinstance(result, ApiError):
        assert 400 <= result.status < 500, result
        body = result.body()
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
        json.dumps(body)
        return False
    assert isinstance(result, ParsedRequest)
    assert result.prompt_tokens >= 1 and result.max_tokens >= 1
    json.dumps(result.upstream_body()).encode()  # what the router forwards: always encodable
    return True


# -- the protobuf messages --------------------------------------------------------------------------

_TYPE_NAMES = sorted(codec.TYPE_NAMES)


def protobuf_message(data: bytes) -> bool:
    if not data:
        return False
    type_name = _TYPE_NAMES[data[0] % len(_TYPE_NAMES)]
    try:
        codec.decode(type_name, data[1:])
    except codec.CodecError as exc:
        assert type_name in str(exc) or "RequestRecordBatch" in str(exc), exc
        return False
    return True


# -- the trace readers ------------------------------------------------------------------------------

_LINE_FAULT = re.compile(r":\d+: ")


def _read_trace_file(name: str, data: bytes, read: Callable[[Path, ReadOptions], object]) -> bool:
    """Whether the strict read (invalid records refused) gave requests."""
    path = _WORK / name
    path.write_bytes(data)
    accepted = False
    for skip in (False, True):
        stats = ReadStats()
        try:
            requests = read(path, ReadOptions(skip_invalid=skip, stats=stats))
            count = sum(1 for _ in requests)  # type: ignore[attr-defined]
        except TraceFormatError as exc:
            message = str(exc)
            assert message.startswith(str(path)), message
            assert "Traceback" not in message
            continue
        assert count == stats.requests
        assert stats.records == stats.requests + stats.invalid + stats.failed, stats
        assert all(_LINE_FAULT.search(m) for m in stats.examples), stats.examples
        accepted = accepted or (not skip and count > 0)
    return accepted


def _reader(fmt: str | None, mapping: ColumnMapping | None = None) -> Callable[[Path, ReadOptions], object]:
    return lambda path, options: read_trace(path, fmt, options, mapping)


_MAPPING = ColumnMapping(arrival="t", arrival_unit="ms", prompt_tokens="in", output_tokens="out", model="m",
                         prefix_hashes="h")


def trace_azure(data: bytes) -> bool:
    return _read_trace_file("azure.csv", data, _reader("azure"))


def trace_azure2024(data: bytes) -> bool:
    return _read_trace_file("azure2024.csv", data, _reader("azure2024"))


def trace_burstgpt(data: bytes) -> bool:
    return _read_trace_file("burstgpt.csv", data, _reader("burstgpt"))


def trace_mooncake(data: bytes) -> bool:
    return _read_trace_file("mooncake.jsonl", data, _reader("mooncake"))


def trace_csv(data: bytes) -> bool:
    return _read_trace_file("opscale.csv", data, _reader("csv"))


def trace_jsonl(data: bytes) -> bool:
    return _read_trace_file("opscale.jsonl", data, _reader("jsonl"))


def trace_mapped(data: bytes) -> bool:
    as_csv = _read_trace_file("mapped.csv", data, _reader("mapped-csv", _MAPPING))
    as_jsonl = _read_trace_file("mapped.jsonl", data, _reader("mapped-jsonl", _MAPPING))
    return as_csv or as_jsonl


def trace_detected(data: bytes) -> bool:
    """Format detection from the first lines, then whichever reader it picks."""
    return _read_trace_file("detected.txt", data, _reader(None))


def trace_servegen(data: bytes) -> bool:
    """A ServeGen client's arrival windows (CSV) and length distributions (JSON)."""
    windows, lengths = _WORK / "chunk-0-trace.csv", _WORK / "chunk-0-dataset.json"
    windows.write_bytes(data)
    lengths.write_bytes(data)
    accepted = False
    try:
        read_client_windows(windows, 0)
        accepted = True
    except TraceFormatError as exc:
        assert str(exc).startswith(str(windows)), exc
    try:
        found = read_client_lengths(lengths)
    except TraceFormatError as exc:
        assert str(exc).startswith(str(lengths)), exc
    else:
        assert all(math.isfinite(start_s) for start_s in found.start_s), found.start_s
        accepted = True
    return accepted


# -- the router's engine client ---------------------------------------------------------------------


def sse_decoder(data: bytes) -> bool:
    reads, _ = _splits(data)
    decoder = SseDecoder(_MAX_EVENT_BYTES)
    events = 0
    try:
        for read in reads:
            for event in decoder.feed(read):
                assert isinstance(event, str)
                decoded = decode_event(event)
                assert decoded is None or isinstance(decoded, tuple) or decoded.kind in ("status", "protocol")
                event_usage(event)
                events += 1
    except SseError:
        return False
    return events > 0


def sse_forwarder(data: bytes) -> bool:
    reads, whole = _splits(data)
    forwarder = SseForwarder(_MAX_EVENT_BYTES)
    sent = b""
    try:
        for read in reads:
            block = forwarder.feed(read)
            if block.out is not None:
                assert block.out.chunks >= 0
                sent += block.out.data
            if block.failure is not None:
                return False
        closing = forwarder.end()
        if closing is not None:
            sent += closing.data
    except SseError:
        return False
    # the client only ever receives whole events
    assert not sent or sent.endswith(b"\n\n") or sent.endswith(b"\r\r") or sent.endswith(b"\r\n\r\n"), sent[-40:]
    return bool(sent)


# the Python relay, and the C one where it is built
RELAYS: list[type[Relay]] = [PyChunkRelay] + ([_relays.ChunkRelay] if _relays.NATIVE else [])


class _Flow:
    writing_paused = False


def chunk_relay(data: bytes) -> bool:
    """The splice's per-token relay on each read: the C relay (where built) answers and writes exactly as
    the Python one does, and what either relays is one whole chunk holding one token event."""
    reads, _ = _splits(data)
    written: list[list[bytes]] = [[] for _ in RELAYS]
    relays = [kind(out.append, lambda: False, _Flow(), True, lambda: 0.0) for kind, out in zip(RELAYS, written,
                                                                                               strict=True)]
    relayed = 0
    for read in reads:
        for relay in relays:
            relay.armed = True
        answers = {relay(read) for relay in relays}
        assert len(answers) == 1, read
        if answers.pop():
            relayed += 1
            event = chunk_data(read)
            assert read == b"%x\r\n%b\r\n" % (len(event), event) and b"\r" not in event, read
            assert event.startswith(b"data:") and event.endswith(b"}\n\n") and event.count(b"\n") == 2, read
    assert all(out == written[0] for out in written)
    return relayed > 0


class _Transport:
    """The socket side of a connection as asyncio's protocol sees it; the fuzzer supplies the reads."""

    def __init__(self) -> None:
        self.closing = False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


_LOOP = asyncio.new_event_loop()


async def _http_exchange(reads: list[bytes]) -> bool:
    pool = Http1Pool(max_connections=1, max_per_host=1, keepalive_s=1.0, connect_timeout_s=1.0)
    conn = Http1Connection(pool, ("http", "engine", 80))
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    conn.send(b"")
    for read in reads:
        if conn.closed:
            break
        conn.data_received(read)
    if not conn.closed:
        conn.connection_lost(None)
    try:
        head = await conn.read_head()
        assert 200 <= head.status <= 999, head
        if head.status >= 400:
            client = UpstreamClient(UpstreamConfig(max_error_body_bytes=1024))
            message, error = await client.error_detail(conn, head.reason, _LOOP.time() + 1.0)
            assert isinstance(message, str) and (error is None or set(error) == {"message", "type", "param", "code"})
            return True
        decoder = SseDecoder(_MAX_EVENT_BYTES)
        while body := await conn.read():
            for event in decoder.feed(body):
                decode_event(event)
    except (ProtocolViolation, ConnectionLost, SseError):
        return False
    return True


def http_response(data: bytes) -> bool:
    reads, _ = _splits(data)
    return _LOOP.run_until_complete(_http_exchange(reads))


# -- the router's API server ------------------------------------------------------------------------

# small, so that fuzzed inputs reach every bound
SERVER_LIMITS = ServerLimits(max_header_bytes=1024, max_headers=8, max_body_bytes=512)


class _ClientSide:
    """A server connection's transport as asyncio's protocol sees it: what the server writes is kept,
    and a close reaches the protocol a moment later, as a real transport's does."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.protocol: Any = None
        self.written = bytearray()
        self.closing = False
        self.paused = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "a write after the close"
        self.written += data

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    abort = close

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


async def _echo(request: Http1Request, exchange: Http1Exchange) -> None:
    """Answers what it read: a JSON summary, streamed in two chunks to a POST on /stream."""
    summary = json.dumps({"method": request.method, "path": request.path, "body": len(request.body),
                          "digest": sum(request.body) % 65521}).encode()
    if request.path == "/stream":
        head = exchange.chunked_head(200, b"Content-Type: text/event-stream\r\n")
        await exchange.write(b"data: " + summary + b"\n\n", head)
        await asyncio.sleep(0)  # noqa: TID251 - another task's turn mid-answer
        await exchange.end(b"data: [DONE]\n\n")
        return
    exchange.respond(200, summary)


async def serve_reads(reads: list[bytes], limits: ServerLimits = SERVER_LIMITS, handler: Handler = _echo,
                      on_head: HeadCheck | None = None) -> tuple[bytes, bool]:
    """Feed `reads` to one server connection answering with `handler` (`_echo`), each read after the
    answers so far had a turn; the bytes it wrote, and whether it closed the connection itself."""
    loop = asyncio.get_running_loop()
    server = Http1Server(handler, limits, shutdown_timeout_s=1.0, on_head=on_head)
    transport = _ClientSide(loop)
    conn = server.connection_factory()
    transport.protocol = conn
    conn.connection_made(transport)  # type: ignore[arg-type]
    for read in reads:
        if transport.closing:
            break
        while transport.paused and conn.task is not None:
            await asyncio.sleep(0)  # noqa: TID251 - the server reads again once it answered
        conn.data_received(read)
        for _ in range(3):
            await asyncio.sleep(0)  # noqa: TID251 - the answers' turn
    for _ in range(100):  # answers still in progress finish (none waits on anything but the loop)
        if conn.task is None:
            break
        await asyncio.sleep(0)  # noqa: TID251
    closed_by_server = transport.closing
    if not transport.closing:
        transport.close()
    await asyncio.sleep(0)  # noqa: TID251 - connection_lost
    assert not server.connections
    return bytes(transport.written), closed_by_server


def read_answers(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The answers in `data`, each (status, headers with lower-case names, body unframed); raises when
    `data` is not a sequence of whole HTTP/1.1 answers (a last body without framing runs to the close)."""
    answers: list[tuple[int, dict[str, str], bytes]] = []
    current: dict[str, Any] = {"open": False}

    class Reader:
        def on_message_begin(self) -> None:
            current.update(open=True, headers={}, body=b"")

        def on_header(self, name: bytes, value: bytes) -> None:
            current["headers"][name.decode().lower()] = value.decode()

        def on_body(self, body: bytes) -> None:
            current["body"] += body

        def on_message_complete(self) -> None:
            current["open"] = False
            answers.append((parser.get_status_code(), current["headers"], current["body"]))

    parser = HttpResponseParser(Reader())
    parser.feed_data(data)
    if current["open"]:
        headers = current["headers"]
        assert "content-length" not in headers and "transfer-encoding" not in headers, "an answer cut short"
        answers.append((parser.get_status_code(), headers, current["body"]))
    return answers


def _answers_are_sound(written: bytes, closed: bool) -> int:
    """How many 200 answers `written` holds; asserts every answer is whole, and an error one is OpenAI's
    body with the close, after which nothing is written."""
    answers = read_answers(written)
    ok = 0
    for i, (status, headers, body) in enumerate(answers):
        if status == 200:
            ok += 1
            continue
        assert status in (400, 408, 413, 431), (status, body[:200])
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        # the last answer, with the close (at once, or once the refused body is read or its linger is over)
        assert headers.get("connection") == "close" and i == len(answers) - 1, (status, headers)
        assert closed or status in (408, 413), status
    return ok


def http_request(data: bytes) -> bool:
    reads, _ = _splits(data)
    written, closed = _LOOP.run_until_complete(serve_reads(reads))
    return _answers_are_sound(written, closed) > 0


def _key_check(path: str, headers: dict[str, str]) -> object:
    """A head check as the API's key check: `X-Key: no` is refused (401) before its body is read; the
    request's `auth` is its `X-Key`."""
    if headers.get("x-key") == "no":
        return HeadRefusal(error_for_status(401, "Incorrect API key provided", code="invalid_api_key"))
    return headers.get("x-key")


async def _serve_recorded(reads: list[bytes]) -> tuple[list[tuple[object, ...]], list[object], bool]:
    """`serve_reads` with the key check, keeping each request the handler got, whole."""
    seen: list[tuple[object, ...]] = []

    async def record(request: Http1Request, exchange: Http1Exchange) -> None:
        seen.append((request.method, request.path, request.query, request.version, request.headers, request.body,
                     request.keep_alive, request.auth))
        await _echo(request, exchange)

    written, closed = await serve_reads(reads, handler=record, on_head=_key_check)
    answers = [(status, {k: v for k, v in headers.items() if k != "date"}, body)  # (the clock may tick between)
               for status, headers, body in read_answers(written)]
    return seen, answers, closed


def read_alike(reads: list[bytes]) -> list[tuple[object, ...]]:
    """The server's reading of whole, plain requests in one call (parse_request, _request_head.c) against
    llhttp's reading of the same reads: the same requests reach the handler, the same answers are written,
    the connection closes alike. Returns the requests."""
    fast = _LOOP.run_until_complete(_serve_recorded(reads))
    whole, _server.parse_request = _server.parse_request, None
    try:
        reference = _LOOP.run_until_complete(_serve_recorded(reads))
    finally:
        _server.parse_request = whole
    assert fast == reference, (fast, reference)
    return fast[0]


def request_head(data: bytes) -> bool:
    reads, _ = _splits(data)
    return bool(read_alike(reads))


TARGETS: dict[str, Target] = {
    "openai_request": openai_request,
    "protobuf_message": protobuf_message,
    "trace_azure": trace_azure,
    "trace_azure2024": trace_azure2024,
    "trace_burstgpt": trace_burstgpt,
    "trace_mooncake": trace_mooncake,
    "trace_servegen": trace_servegen,
    "trace_csv": trace_csv,
    "trace_jsonl": trace_jsonl,
    "trace_mapped": trace_mapped,
    "trace_detected": trace_detected,
    "sse_decoder": sse_decoder,
    "sse_forwarder": sse_forwarder,
    "chunk_relay": chunk_relay,
    "http_response": http_response,
    "http_request": http_request,
    "request_head": request_head,
}


# -- seeds: one or more valid inputs per target, which the fuzzers mutate -----------------------------


def _pb_seeds() -> list[bytes]:
    from opscale.services.events import ForecastIssued

    name, payload = codec.encode(ForecastIssued("m", "eu", "chat", 60.0, 300.0, 2.0, 1.5, 2.5, "ewma"))
    return [bytes([_TYPE_NAMES.index(name)]) + payload]


_CHUNK = (b'data: {"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":"Hi",'
          b'"finish_reason":null}]}\n\n')
_LAST = (b'data: {"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":"",'
         b'"finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n')
_FRAMED_CHUNK = b"%x\r\n%b\r\n" % (len(_CHUNK), _CHUNK)
_SSE = b": keep-alive\n\n" + _CHUNK + _CHUNK + _LAST + b"data: [DONE]\n\n"

SEEDS: dict[str, list[bytes]] = {
    "openai_request": [
        b'{"model":"m","prompt":"Hello","max_tokens":8,"stream":true,"stream_options":{"include_usage":true}}',
        b'{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"stop":["\\n"]}',
        b'{"model":"m","prompt":[1,2,3],"temperature":0.5,"opscale_tier":"batch","seed":7}',
    ],
    "protobuf_message": _pb_seeds(),
    "trace_azure": [b"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                    b"2023-11-16 18:15:50.1000000,1020,7\n"],
    "trace_azure2024": [b"TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00.0000000+00:00,4808,10\n"
                        b"2024-05-10 00:00:00.0200000+00:00,3180,8\n"],
    "trace_burstgpt": [b"Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                       b"5,ChatGPT,472,18,490,Conversation log\n45,GPT-4,1087,0,1087,API log\n"],
    "trace_mooncake": [b'{"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1, 2]}\n'
                       b'{"timestamp": 27, "input_length": 7319, "output_length": 490, "hash_ids": [0, 3]}\n'],
    "trace_servegen": [b"0,1.5,1.2,Gamma,0.7,0.95\n600,0.0,0.0,,0,0\n",
                       b'{"0": {"input_tokens": "{12: 0.5, 40: 0.5}", "output_tokens": "{3: 1.0}"}}'],
    "trace_csv": [b"request_id,model,tier,region,arrival_s,prompt_tokens,output_tokens\n"
                  b"r1,m,interactive,eu,0.5,100,10\nr2,m,batch,us,0.75,20,4\n"],
    "trace_jsonl": [b'{"request_id":"r1","model":"m","tier":"interactive","region":"eu","arrival_s":0.5,'
                    b'"prompt_tokens":100,"output_tokens":10,"prefix_hashes":[1,2]}\n'],
    "trace_mapped": [b"t,in,out,m,h\n0,10,3,llama,1 2\n5,7,1,llama,\n",
                     b'{"t": 0, "in": 10, "out": 3, "m": "llama", "h": [1, 2]}\n'],
    "trace_detected": [],  # every trace seed above (filled below)
    "sse_decoder": [b"\x07" + _SSE, b"\x00data: a\r\ndata: b\r\n\r\n"],
    "sse_forwarder": [b"\x1f" + _SSE, b"\xff" + _SSE.replace(b"\n", b"\r\n")],
    # (the first byte cuts the reads a chunk long: see _splits)
    "chunk_relay": [bytes([len(_FRAMED_CHUNK) - 1]) + _FRAMED_CHUNK * 3 + b"%x\r\n%b\r\n" % (len(_LAST), _LAST)],
    "http_response": [
        b"\x10HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(_SSE):x}\r\n".encode() + _SSE + b"\r\n0\r\n\r\n",
        b"\xffHTTP/1.1 400 Bad Request\r\nContent-Length: 76\r\n\r\n"
        b'{"error":{"message":"too long","type":"invalid_request_error","param":null}}',
        b"\x03HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\n" + _SSE,
    ],
    "http_request": [
        b"\x20POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 26\r\n\r\n"
        b'{"model":"m","prompt":"x"}GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n',
        b"\x07POST /stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n\r\n",
        b"\xffGET /health HTTP/1.0\r\n\r\n",
    ],
    "request_head": [
        b"\xffPOST /v1/completions?a=1 HTTP/1.1\r\nHost: x\r\nX-Key: k1\r\nAccept: text/event-stream\r\n"
        b"x-a: 1\r\nX-A:  2\r\nContent-Length: 26\r\n\r\n"
        b'{"model":"m","prompt":"x"}GET /v1/models HTTP/1.0\r\nConnection: Keep-Alive\r\nX-Empty:\r\n\r\n'
        b"DELETE /x HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"\x30POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST /stream HTTP/1.1\r\n"
        b"X-Key: no\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n",
    ],
}
SEEDS["trace_detected"] = [seed for name, seeds in SEEDS.items() if name.startswith("trace_")
                           and name not in ("trace_servegen", "trace_detected", "trace_mapped") for seed in seeds]
# (a mapped trace is read by the user's column mapping, which detection cannot know)
