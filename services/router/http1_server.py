"""A small HTTP/1.1 server on asyncio protocols: the router's OpenAI API port. The mirror of http1.py.

Role: read requests from clients with the least work per request and hand each, whole (head and body),
to one handler coroutine, which writes its answer on the connection (`Http1Exchange`). A general
server's per-request machinery (aiohttp's request and response objects, its header multidicts, its
stream readers and payload writers) was a large share of the router's CPU per request. Requests are
read by httptools' `HttpRequestParser` (llhttp, the parser of Node.js and uvicorn): request line,
headers, `Content-Length` and chunked bodies, pipelined requests. A read that starts with whole, plain
requests (as clients send them: a known method, an origin-form target, plain header lines, a
`Content-Length` body all in the read) has them read by `parse_request` in one call each
(_request_head.c, built when the install has a C compiler), which leaves everything else to llhttp, and
reads those as llhttp does (the tests feed both the same bytes): llhttp's reading cost a Python call per
header. This module keeps what the parser leaves to its user, each answered clearly with OpenAI's error
body (ServerLimits):

- a connection that sends no complete request head within `header_timeout_s` (its first) or
  `keepalive_timeout_s` (a later one, counted from the previous answer) is closed, without an answer;
- a request line or header line longer than `max_header_bytes`, or more than `max_headers` headers: 431;
- a body larger than `max_body_bytes` (declared or, chunked, as it arrives): 413; a body that does not
  arrive within `body_timeout_s` of its head: 408; a head llhttp cannot parse: 400; a head the server's
  head check refuses (the API's key check: 401), before its body is read. After each of these the
  connection is closed: once the client's remaining body is read (bounded by `_LINGER_S`), so that it
  reads the answer rather than a reset. A head over its bound is not parsed further (llhttp would buffer a
  header line without end), nor is anything more read;
- `Expect: 100-continue` is answered before the body is read, once the answers before it are written;
- a request asking for another protocol (`Upgrade`, e.g. h2c) or CONNECT is answered once as HTTP/1.1,
  with its `Content-Length` body, and then the connection closes;
- an HTTP/1.0 client whose connection is kept is told so (`Connection: keep-alive`).

Requests on one connection are answered in order, one at a time (pipelined ones wait: reading pauses
once `_MAX_QUEUED` wait, and a read already in that brings more than `_MAX_PIPELINED` gets 429 for the
one past the bound, then the close). The next answer waits while the client has not read the ones before (asyncio's
write buffer is full), and nothing more is read meanwhile, so a client that sends and never reads holds
one buffer's worth; a client that reads nothing of its answers for `send_timeout_s` (between answers or
in a stream) is disconnected, which ends its handler. A client that disconnects cancels its handler, so a request waiting for its
next token stops (and releases its upstream work) at once. `Http1Server.stop_accepting` closes the
listening sockets at once (a replacement on the host can bind the port) and `close` drains: idle
connections close now, answers in flight may finish until the drain timeout, then they are cancelled.

It does not route or decide anything: the handler (api.py) does. No aiohttp object is made per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import NamedTuple

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from opscale.openai.json_codec import dumps_json
from opscale.openai.schema import ApiError, body_too_large, error_for_status
from opscale.runtime.live.openai_http import unix_now_s
from opscale.runtime.live.server_limits import ServerLimits

from opscale_services.router.chunk_relay import ChunkRelay, Relay

try:
    from opscale_services.router._request_head import parse_request as _parse_request
except ImportError:  # built without a C compiler (setup.py): llhttp reads every request, at more CPU per request
    _parse_request = None
# (data, start, max_line, max_headers) -> (method, target, version, headers, body, keep_alive, end) | None
WholeRequest = tuple[str, str, str, dict[str, str], bytes, bool, int]
parse_request: Callable[[bytes, int, int, int], WholeRequest | None] | None = _parse_request

__all__ = ["Handler", "HeadCheck", "HeadRefusal", "Http1Exchange", "Http1Request", "Http1Server", "SERVER_NAME"]

log = logging.getLogger(__name__)

SERVER_NAME = "opscale-router"
# After a refusal that leaves a body unread (408, 413), what the client still sends is read and dropped
# for this long at most before the connection closes, so the client reads the answer rather than a reset.
_LINGER_S = 1.0
# Complete requests read ahead of the one being answered (pipelining); beyond it the socket is not read.
_MAX_QUEUED = 8
# Requests waiting on one connection, at most: reading pauses at _MAX_QUEUED, but a read already in is parsed
# whole, and one read can carry thousands of small pipelined requests. Past this bound the request is
# refused with 429 and the connection closes once the answers before it are written.
_MAX_PIPELINED = 64
_JSON = b"application/json"

Handler = Callable[["Http1Request", "Http1Exchange"], Awaitable[None]]


class HeadRefusal(NamedTuple):
    """What a head check returns to refuse a request before its body is read: the error, and the answer's
    extra headers."""

    error: ApiError
    headers: dict[str, str] | None = None


HeadCheck = Callable[[str, dict[str, str]], object]
"""`check(path, headers)`, called with each request's head before its body is read: a HeadRefusal refuses
it (the connection then closes), anything else is the request's `auth`."""


class _StopParsing(Exception):
    """Raised by a parser callback that has already decided what to do with the rest of the read."""


class Http1Request:
    """One request, read whole. `headers` holds lower-case names (a repeated header's values joined
    with ", "); `path` is the target up to any `?` (`query` after it), percent-encoding left as sent;
    `auth` what the server's head check returned for it (None without one)."""

    __slots__ = ("auth", "body", "headers", "keep_alive", "method", "path", "query", "version")

    def __init__(self, method: str, path: str, query: str, version: str, headers: dict[str, str],
                 body: bytes, keep_alive: bool, auth: object = None) -> None:
        self.auth = auth
        self.method = method
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive


_date_cache: list[object] = [-1, b""]


def _http_date() -> bytes:
    """The `Date` header's value, made once a second."""
    now = int(unix_now_s())
    if _date_cache[0] != now:
        _date_cache[0], _date_cache[1] = now, formatdate(now, usegmt=True).encode()
    return _date_cache[1]  # type: ignore[return-value]


def _status_line(status: int) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    return f"HTTP/1.1 {status} {reason}\r\n".encode()


_STATUS_LINES = {status: _status_line(status) for status in HTTPStatus}


_SERVER = SERVER_NAME.encode()
_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n"


def encode_head(status: int, fields: bytes, keep_alive: bool, http10: bool = False) -> bytes:
    """A response head: status line, `fields` (whole `Name: value\\r\\n` lines), date, server, and
    `Connection: close` when the connection ends after the answer (`Connection: keep-alive` when it is
    kept for an HTTP/1.0 client, which otherwise assumes the close)."""
    line = _STATUS_LINES.get(status) or _status_line(status)  # type: ignore[call-overload]
    connection = (_KEEP_ALIVE if http10 else b"") if keep_alive else _CLOSE
    return b"%b%bDate: %b\r\nServer: %b\r\n%b\r\n" % (line, fields, _http_date(), _SERVER, connection)


def header_lines(headers: dict[str, str] | None) -> bytes:
    """`Name: value\\r\\n` lines; a value with a line break is refused (header injection)."""
    if not headers:
        return b""
    text = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    if text.count("\n") != len(headers) or text.count("\r") != len(headers):
        raise ValueError(f"a response header with a line break: {headers!r}")
    return text.encode("latin-1")


def error_answer(error: ApiError, extra_headers: dict[str, str] | None = None, keep_alive: bool = True,
                 http10: bool = False) -> bytes:
    """A whole OpenAI error answer (status, head and JSON body)."""
    headers = error.headers()
    if extra_headers:
        headers.update(extra_headers)
    body = dumps_json(error.body())
    fields = b"Content-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n%b" % (
        len(body), header_lines(headers))
    return encode_head(error.status, fields, keep_alive, http10) + body


class Http1Exchange:
    """The answer to one request, written by its handler: `respond` for a whole answer, or `start_chunked`
    then `write`/`end` for a stream (chunked to an HTTP/1.1 client; to an HTTP/1.0 one the body runs to
    the close). `status` is the status sent (0 before any). Writes wait while the client's buffer is full,
    and raise ConnectionResetError once the client is gone."""

    __slots__ = ("_chunked", "_conn", "_keep_alive", "_transport", "finished", "status")

    def __init__(self, conn: _Http1ServerConnection, request: Http1Request) -> None:
        self._conn = conn
        self._transport = conn.transport
        self._keep_alive = request.keep_alive and not conn.draining
        self._chunked = request.version == "1.1"
        self.status = 0
        self.finished = False

    @property
    def keep_alive(self) -> bool:
        return self._keep_alive

    def respond(self, status: int, body: bytes, content_type: bytes = _JSON,
                headers: dict[str, str] | None = None) -> None:
        """A whole answer with a `Content-Length` body."""
        fields = b"Content-Type: %b; charset=utf-8\r\nContent-Length: %d\r\n%b" % (
            content_type, len(body), header_lines(headers))
        self._send(status, encode_head(status, fields, self._keep_alive, not self._chunked) + body)

    def respond_error(self, error: ApiError, headers: dict[str, str] | None = None) -> None:
        self._send(error.status, error_answer(error, headers, self._keep_alive, not self._chunked))

    def _send(self, status: int, data: bytes) -> None:
        if self.status:
            raise RuntimeError("an answer was already sent")
        self.status = status
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")  # not finished: the close follows
        transport.write(data)
        self.finished = True

    def chunked_head(self, status: int, fields: bytes) -> bytes:
        """The head of a streamed answer, to be sent with its first data (`write(data, head)`)."""
        if self.status:
            raise RuntimeError("an answer was already sent")
        self.status = status
        if self._chunked:
            fields += b"Transfer-Encoding: chunked\r\n"
        else:
            self._keep_alive = False  # HTTP/1.0: the body ends at the close
        return encode_head(status, fields, self._keep_alive, not self._chunked)

    def frame(self, data: bytes) -> bytes:
        """`data` as it goes on the wire: one chunk, or as it is to an HTTP/1.0 client."""
        return b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data

    async def write(self, data: bytes, head: bytes = b"") -> None:
        """Write `data` (a piece of the streamed body, framed here), after `head` when given; waits while
        the client is not reading."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(head + self.frame(data) if data else head)
        if self._conn.writing_paused:
            await self._conn.drain()

    async def end(self, data: bytes = b"", head: bytes = b"") -> None:
        """The last piece of the streamed body, and its end."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        if self._chunked:
            transport.write(b"%b%x\r\n%b\r\n0\r\n\r\n" % (head, len(data), data) if data else head + b"0\r\n\r\n")
        elif head or data:
            transport.write(head + data)
        self.finished = True
        if self._conn.writing_paused:
            await self._conn.drain()

    def sink(self) -> ClientSink | None:
        """Where the upstream client may write later events straight from its read callback
        (splicing, see UpstreamClient.stream_sse)."""
        if self._transport is None:
            return None
        return ClientSink(self._transport, self._conn, self._chunked)


class ClientSink:
    """Writes events straight to the client's connection, framed as the answer is. While the client is not
    keeping up (its buffer is full) or gone it writes nothing and says so: the stream's task then waits."""

    __slots__ = ("_chunked", "_conn", "_transport")

    def __init__(self, transport: asyncio.Transport, conn: _Http1ServerConnection, chunked: bool) -> None:
        self._transport = transport
        self._conn = conn
        self._chunked = chunked

    def write(self, data: bytes) -> bool:
        if self._conn.writing_paused or self._transport.is_closing():
            return False
        self._transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        return True

    def relay(self, now: Callable[[], float]) -> Relay:
        """A relay of whole-chunk token events to this connection (chunk_relay.py): the chunk as it came
        to a chunked answer, its data otherwise; nothing while the client is not keeping up."""
        transport = self._transport
        return ChunkRelay(transport.write, transport.is_closing, self._conn, self._chunked, now)


# the parser's state between reads: between messages (or in a head), in a body
_HEAD, _BODY = 0, 1


class _Http1ServerConnection(asyncio.Protocol):
    """One client connection: parses its requests and runs the server's handler on each, in order."""

    def __init__(self, server: Http1Server) -> None:
        self._server = server
        limits = server.limits
        self._limits = limits
        self._loop = server.loop
        self._parser = HttpRequestParser(self)
        self._on_head = server.on_head
        self.transport: asyncio.Transport | None = None
        self.writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.draining = False  # the server drains: no request after the one in progress
        self._closed = False
        # the message being read
        self._state = _HEAD
        self._between = True  # llhttp is between messages: parse_request may read the next ones
        self._url = b""
        self._path = ""
        self._query = ""
        self._headers: dict[str, str] = {}
        self._auth: object = None  # what the server's head check made of it
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._head_at = 0.0
        self._continue = False  # `100 Continue` is owed, once the requests read before this one are answered
        # a request with Upgrade (or CONNECT), whose Content-Length body llhttp leaves to its user: its bytes still due
        self._upgrade: Http1Request | None = None
        self._upgrade_left = 0
        self._refused = False  # refused (408, 413, 431, 400): what follows is read and dropped, then the close
        self._refusal = b""  # the refusal's answer, while it waits for the answers to requests read before it
        self._linger_at = 0.0  # when a refused connection closes, its body unread or not
        self._parser_failed = False  # llhttp refused the bytes: nothing more can be read
        self._stop = False  # no further request is read (Connection: close, a refusal)
        # requests read whole and waiting, and the task answering the first
        self._queue: deque[Http1Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._reading_paused = False
        self._blocked = False  # an answer ended while the client was not reading: the next waits (resume_writing)
        self._answered = 0
        self._idle_since = self._loop.time()
        # one lazy timer for whichever deadline is in force (see _due)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._server.connections.add(self)  # (asyncio and uvloop set TCP_NODELAY on it: events leave at once)
        self._arm(self._idle_since + self._limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.transport = None
        self._server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client is gone: its handler stops, and with it the upstream request
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client closed the connection"))

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._blocked:  # the client read the answers so far: the next request's turn, and reading again
            self._blocked = False
            self._flow()
            self._proceed()

    async def drain(self) -> None:
        if not self.writing_paused:
            return
        if self._closed:
            raise ConnectionResetError("the client closed the connection")
        waiter = self._drain_waiter = self._loop.create_future()
        timer = self._loop.call_later(self._limits.send_timeout_s, self._send_timed_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._drain_waiter = None

    def _send_timed_out(self, waiter: asyncio.Future[None]) -> None:
        """The client read nothing for `send_timeout_s`: its answer fails (the handler releases its upstream
        work) and the connection is dropped (a close would wait for the client to read the buffer)."""
        if not waiter.done():
            waiter.set_exception(ConnectionResetError(
                f"the client read nothing for {self._limits.send_timeout_s:g} s"))
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._parser_failed or (self._stop and not self._refused):
            if self._upgrade is not None and not self._refused:
                self._upgrade_body(data)
            return  # after a request that ends the connection, or bytes llhttp refused: nothing more is read
        if self._between and parse_request is not None and not self._stop:
            offset = self._read_whole(data, parse_request)
            if offset == len(data):
                return
            if offset:
                data = data[offset:]
        if self._state == _HEAD:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _StopParsing):
                raise (exc.__context__ or exc) from None
            self._parser_failed = True  # llhttp stops at a callback's error: nothing more is read
        except HttpParserUpgrade as exc:
            # the request before was answered as HTTP/1.1 (see on_message_complete): llhttp reads no further,
            # the rest of this read is its body, if it has one
            self._parser_failed = True
            if self._upgrade is not None:
                self._upgrade_body(data[exc.args[0]:])
            else:
                self._flow()
        except HttpParserError as exc:
            # the parser cannot go on: nothing more of this connection is read, and it closes after the
            # answers to the requests read before and the refusal (or at once, when one was answered)
            self._parser_failed = True
            if not self._refused:
                self._refuse(error_for_status(400, f"Bad HTTP request: {exc}", code="bad_http_request"))
            elif not self._refusal and self.transport is not None:
                self.transport.close()
            self._flow()
            return
        if self._state == _HEAD and not self._refused and self._head_bytes > self._server.max_head_bytes:
            self._refuse_head()

    def eof_received(self) -> bool | None:
        # The client closed its side: taken as a disconnect (as aiohttp's server takes it), so a request
        # still being answered is cancelled at once and its upstream work released, rather than at the
        # next write. The transport closes itself (None).
        return None

    # -- the parser's callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._stop:
            raise _StopParsing  # a request after one that ends the connection: not read
        self._between = False
        self._url = b""
        self._headers = {}
        self._auth = None
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_header_bytes:
            self._refuse_head()
            raise _StopParsing

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if len(name) + len(value) + 2 > self._limits.max_header_bytes or len(headers) >= self._limits.max_headers:
            self._refuse_head()
            raise _StopParsing
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = headers.get(key)
        headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        self._state = _BODY
        self._body = []
        self._body_bytes = 0
        headers = self._headers
        if not self._admit_head(self._url.decode("latin-1"), headers):
            return
        self._head_at = now = self._loop.time()
        if headers.get("expect", "").lower() == "100-continue":
            if self._task is None and not self._blocked and self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            else:  # an answer before it is still being written: sent when this request's turn comes (_proceed)
                self._continue = True
        if self._task is None:  # else the handler's answer in progress: the deadline is re-armed after it
            self._arm(now + self._limits.body_timeout_s)

    def on_body(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self._limits.max_body_bytes:
            self._refuse(body_too_large(self._limits.max_body_bytes))
            return
        self._body.append(data)

    def on_message_complete(self) -> None:
        self._between = True
        self._state = _HEAD
        self._head_bytes = 0
        self._continue = False  # the body came without it
        if self._refused:
            if not self._refusal and self.transport is not None:
                self.transport.close()  # the refused request's body is all read: its answer left before
            raise _StopParsing
        parser = self._parser
        body = self._body
        keep_alive = parser.should_keep_alive() and not self.draining
        request = Http1Request(parser.get_method().decode(), self._path, self._query, parser.get_http_version(),
                               self._headers, body[0] if len(body) == 1 else b"".join(body), keep_alive, self._auth)
        self._body = []
        if parser.should_upgrade():
            self._upgrade_request(request)
            return
        if not self._queue_request(request):
            raise _StopParsing

    # -- a request read whole, by llhttp's callbacks or by parse_request ---------------------------

    def _admit_head(self, target: str, headers: dict[str, str]) -> bool:
        """The head's checks before its body is read: the server's head check (a request without a valid key
        is refused whatever its body, before it is read or asked for with 100 Continue), and the declared
        body's size. False: refused."""
        path, _, self._query = target.partition("?")
        self._path = path if path.startswith("/") else _origin_path(path)
        check = self._on_head
        if check is not None:
            auth = check(self._path, headers)
            if isinstance(auth, HeadRefusal):
                self._refuse(auth.error, auth.headers)
                return False
            self._auth = auth
        length = headers.get("content-length")
        max_body = self._limits.max_body_bytes
        if length is not None and length.isdigit() and int(length) > max_body:
            self._refuse(body_too_large(max_body))
            return False
        return True

    def _queue_request(self, request: Http1Request) -> bool:
        """Queue a request read whole, and answer it when its turn comes. False: refused, past
        `_MAX_PIPELINED` (nothing more is read)."""
        if not request.keep_alive:
            self._stop = True
        queue = self._queue
        if len(queue) >= _MAX_PIPELINED:
            self._refuse(error_for_status(429, f"More than {_MAX_PIPELINED} requests are waiting for their answers on "
                                               "this connection: read the answers before sending more",
                                          code="too_many_pipelined_requests"))
            return False
        queue.append(request)
        if self._task is None and not self._blocked:
            self._start_next()
        elif len(queue) >= _MAX_QUEUED and not self._reading_paused:
            self._flow()
        return True

    def _read_whole(self, data: bytes, parse: Callable[[bytes, int, int, int], WholeRequest | None]) -> int:
        """The requests at the start of `data` that parse_request reads (whole, plain ones), queued; returns
        the offset of what is left for llhttp, which reads all the others exactly as before (llhttp is between
        messages whenever this is called)."""
        limits = self._limits
        offset = 0
        end = len(data)
        while offset < end and not self._stop:
            whole = parse(data, offset, limits.max_header_bytes, limits.max_headers)
            if whole is None:
                break
            method, target, version, headers, body, keep_alive, offset = whole
            self._auth = None
            if not self._admit_head(target, headers):
                # its body is read: nothing more is (the refusal closes the connection once it is written)
                self._parser_failed = True
                return end
            request = Http1Request(method, self._path, self._query, version, headers, body,
                                   keep_alive and not self.draining, self._auth)
            if not self._queue_request(request):
                self._parser_failed = True
                return end
        return offset

    def _upgrade_request(self, request: Http1Request) -> None:
        """A request asking for another protocol (`Upgrade`, as `curl --http2` asks for h2c) or CONNECT, which
        llhttp ends at its head: answered as HTTP/1.1, the Upgrade ignored (RFC 9110 7.8 allows it, and
        aiohttp did so), with its `Content-Length` body, once read (`_upgrade_body`); then the connection
        closes, since llhttp reads nothing after it."""
        request.keep_alive = False
        self._stop = True
        length = request.headers.get("content-length")
        if "transfer-encoding" in request.headers:
            self._refuse(error_for_status(400, "Bad HTTP request: a chunked body with Upgrade is not served",
                                          code="bad_http_request"))
        elif length is not None and length.isdigit() and int(length) > 0:
            self._state = _BODY  # (its deadline: the body's, from its head)
            self._upgrade = request
            self._upgrade_left = int(length)
        else:
            self._queue_request(request)

    def _upgrade_body(self, data: bytes) -> None:
        request = self._upgrade
        assert request is not None
        piece = data[:self._upgrade_left]
        self._upgrade_left -= len(piece)
        self._body.append(piece)
        if self._upgrade_left:
            return
        self._upgrade = None
        self._state = _HEAD
        request.body, self._body = b"".join(self._body), []
        self._queue_request(request)
        self._flow()

    # -- answering ----------------------------------------------------------------------------------

    def _flow(self) -> None:
        """Read from the client or not: not while an answer waits for it to read the ones before
        (`_blocked`), while `_MAX_QUEUED` requests wait, or once nothing more is parsed."""
        pause = (self._blocked or len(self._queue) >= _MAX_QUEUED
                 or (self._parser_failed and self._upgrade is None))
        transport = self.transport
        if pause != self._reading_paused and transport is not None and not transport.is_closing():
            self._reading_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _start_next(self) -> None:
        request = self._queue.popleft()
        if self._reading_paused:
            self._flow()
        self._task = self._loop.create_task(self._answer(request))

    async def _answer(self, request: Http1Request) -> None:
        exchange = Http1Exchange(self, request)
        try:
            await self._server.handler(request, exchange)
        except asyncio.CancelledError:
            self._finish(None)
            raise
        except ConnectionResetError:
            pass
        except Exception:
            log.exception("unhandled error answering %s %s", request.method, request.path)
            if not exchange.status and self.transport is not None and not self.transport.is_closing():
                exchange.respond_error(error_for_status(500, "The server had an error while processing your "
                                                        "request", code="internal_error"))
        self._finish(exchange)

    def _finish(self, exchange: Http1Exchange | None) -> None:
        self._task = None
        self._answered += 1
        transport = self.transport
        if transport is None:
            return
        if exchange is None or not exchange.finished or not exchange.keep_alive or self.draining:
            transport.close()  # an answer cut short, or the connection's last
            return
        if self.writing_paused:
            # The client has not read the answers so far: the next request waits until it does, and nothing
            # more is read meanwhile, so a client that pipelines and never reads holds one buffer's worth.
            self._blocked = True
            self._flow()
            self._idle_since = self._loop.time()
            self._arm(self._idle_since + self._limits.send_timeout_s)
            return
        self._proceed()

    def _proceed(self) -> None:
        """After an answer: the next request read, the refusal read after it, or waiting for the next."""
        if self._queue:
            self._start_next()
            return
        if self._refused:
            self._send_refusal()  # the request after this one was refused
            return
        now = self._idle_since = self._loop.time()
        if self._state == _BODY:
            if self._continue and self.transport is not None:
                self._continue = False  # this request's turn: its body may come now, and its deadline runs
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self._head_at = now
            self._arm(self._head_at + self._limits.body_timeout_s)  # a pipelined body still arriving
        else:
            self._arm(now + self._limits.keepalive_timeout_s)

    def _refuse_head(self) -> None:
        """431: llhttp is fed nothing more (it would buffer a header line without end) and nothing more is
        read; the refusal follows the answers to the requests read before."""
        self._parser_failed = True
        self._refuse(self._server.head_too_large)
        self._flow()

    def _refuse(self, error: ApiError, headers: dict[str, str] | None = None) -> None:
        """Answer `error` once the requests read before it are answered, then end the connection: at once
        when nothing of the refused request is left unread (or nothing more can be read), else once the
        rest of its body is read and dropped, or at the linger bound."""
        if self._refused:
            return
        self._refused = True
        self._stop = True
        self._server.refused(error.status, self._auth)
        self._refusal = error_answer(error, headers, keep_alive=False)
        if self._task is None and not self._queue:
            self._send_refusal()

    def _send_refusal(self) -> None:
        answer, self._refusal = self._refusal, b""
        transport = self.transport
        if transport is None:
            return
        transport.write(answer)
        if self._state == _HEAD or self._parser_failed:
            transport.close()
        else:
            self._linger_at = self._loop.time() + min(_LINGER_S, self._limits.body_timeout_s)
            self._arm(self._linger_at, force=True)

    # -- deadlines ----------------------------------------------------------------------------------

    def _due(self) -> float | None:
        """The deadline in force: the refusal's linger, the body's, the idle connection's, or none while
        an answer is being written."""
        if self._blocked:
            return self._idle_since + self._limits.send_timeout_s  # the client reads none of its answers
        if self._refused:
            return None if self._task is not None or self._refusal else self._linger_at
        if self._state == _BODY:
            return self._head_at + self._limits.body_timeout_s
        if self._task is not None:
            return None
        bound = self._limits.header_timeout_s if self._answered == 0 else self._limits.keepalive_timeout_s
        return self._idle_since + bound

    def _arm(self, at: float, force: bool = False) -> None:
        if self._timer is not None:
            if self._timer_at <= at and not force:
                return  # fires first, and re-arms itself for `at` (see _on_timer)
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None:
            return
        due = self._due()
        if due is None:
            return  # an answer is in progress: the next deadline is armed when it ends
        if self._loop.time() < due:
            self._timer_at = due
            self._timer = self._loop.call_at(due, self._on_timer)
            return
        if self._blocked:
            transport.abort()  # a close would wait for the client to read what is buffered
        elif self._refused:
            transport.close()
        elif self._state == _BODY:
            timeout = self._limits.body_timeout_s
            self._refuse(error_for_status(408, f"The request body did not arrive within {timeout:g} s",
                                          code="request_timeout"))
        else:
            transport.close()  # no request head in time: closed without an answer

    # -- the server's drain -----------------------------------------------------------------------

    def drain_now(self) -> None:
        """No request after the one in progress; an idle connection closes now."""
        self.draining = True
        self._stop = True
        if self._task is None and self.transport is not None and self._state == _HEAD:
            self.transport.close()

    def abort(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.transport is not None:
            self.transport.abort()

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task


def _origin_path(target: str) -> str:
    """The path of an absolute-form target (`http://host/v1/models`), or the target as sent when it is
    not one (`*`, which no route matches)."""
    scheme, sep, rest = target.partition("://")
    if not sep:
        return target
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else "/"


class Http1Server:
    """The listening side: `start` binds (SO_REUSEPORT when asked, for workers sharing a port),
    `stop_accepting` closes the listening sockets, `close` drains the connections (bounded by
    `shutdown_timeout_s`). `handler(request, exchange)` answers each request; `on_head` checks each head
    before its body is read (HeadCheck); `on_refused(status, auth)` hears each refusal the server answers
    itself (`auth` from `on_head`, None before it)."""

    def __init__(self, handler: Handler, limits: ServerLimits | None = None, *, shutdown_timeout_s: float = 60.0,
                 on_refused: Callable[[int, object], None] | None = None, on_head: HeadCheck | None = None) -> None:
        self.handler = handler
        self.on_head = on_head
        self.limits = limits or ServerLimits()
        self.shutdown_timeout_s = shutdown_timeout_s
        self.loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        self.connections: set[_Http1ServerConnection] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._on_refused = on_refused
        limits = self.limits
        # a whole head: every line at its longest (llhttp bounds none of it)
        self.max_head_bytes = limits.max_header_bytes * (limits.max_headers + 2)
        self.head_too_large = error_for_status(
            431, f"Request header fields too large: a request line or header is longer than {limits.max_header_bytes} "
            f"bytes, or there are more than {limits.max_headers} headers", code="request_header_fields_too_large")

    def refused(self, status: int, auth: object = None) -> None:
        if self._on_refused is not None:
            self._on_refused(status, auth)

    def connection_factory(self) -> _Http1ServerConnection:
        """A protocol for one accepted connection."""
        return _Http1ServerConnection(self)

    async def start(self, host: str, port: int, *, reuse_port: bool | None = None, backlog: int = 1024) -> None:
        server = await self.loop.create_server(self.connection_factory, host, port, reuse_port=reuse_port,
                                               backlog=backlog)
        self._servers.append(server)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [sock.getsockname()[:2] for server in self._servers for sock in (server.sockets or ())]

    async def stop_accepting(self) -> None:
        """Close every listening socket at once, so a replacement on this host can bind the port, while
        the connections already accepted go on. Idempotent."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()

    async def close(self) -> None:
        """Stop accepting, close idle connections, let answers in flight finish until the shutdown
        timeout, then cancel them (their upstream requests are released) and drop their connections."""
        await self.stop_accepting()
        for conn in list(self.connections):
            conn.drain_now()
        deadline = self.loop.time() + self.shutdown_timeout_s
        while self.connections and self.loop.time() < deadline:
            tasks = [conn.task for conn in self.connections if conn.task is not None]
            if not tasks:
                break
            await asyncio.wait(tasks, timeout=max(0.0, deadline - self.loop.time()))
        leftover = [conn.task for conn in self.connections if conn.task is not None]
        for conn in list(self.connections):
            conn.abort()
        if leftover:
            await asyncio.wait(leftover, timeout=1.0)
