"""A small HTTP/1.1 client on asyncio protocols: the router's connections to engine instances.

Role: send one request on a pooled keep-alive connection and hand back the status and the body bytes as
they arrive, with the least work per read: the router forwards every engine read, so a general client's
per-read machinery (stream readers, timeout contexts, callbacks per chunk) was a large share of its CPU
per token. Responses are read by httptools' `HttpResponseParser` (llhttp, the parser of Node.js and
uvicorn; the router's own server, http1_server.py, reads its requests with llhttp too): status line, headers,
chunked, `Content-Length` and close-delimited bodies, interim 1xx answers. This module keeps only what
the parser leaves to its user: a bound on the response head, refusing HTTP versions other than 1.x, and
telling a body cut short from one that ends at the close. It does only what the router's engine
requests need: POST or GET with a `Content-Length` body (encoded here: a request line and a line per
header), no redirects, no cookies, no compression (none is asked for), TLS when the URL says https.

It does not decide timeouts or retries between instances (upstream.py does); it only raises
`ConnectionFailed` (never connected), `ConnectionLost` (the connection broke, with whether any response
byte had arrived) and `ProtocolViolation` (a malformed response). A request whose reused keep-alive
connection turns out to be closed before any response byte is resent once on a new connection: the
usual race with a server closing an idle connection, which must not count against the instance.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import urlsplit

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpResponseParser

__all__ = ["ConnectionFailed", "ConnectionLost", "Endpoint", "HeadTimeout", "Http1Connection", "Http1Pool",
           "ProtocolViolation", "ResponseHead"]

# llhttp puts no bound on a response head (Node.js bounds it outside the parser): this client does.
_MAX_HEAD_BYTES = 64 * 1024
# Body bytes buffered for a reader that is not keeping up: beyond this the socket stops being read, so
# the engine is slowed by TCP rather than the router's memory growing.
_PAUSE_ABOVE_BYTES = 1 << 20

# How long a connection whose caller stopped reading at `[DONE]` waits for the response's end.
_PARK_S = 1.0

# _HEAD: waiting for the final response head; _BODY: a chunked or Content-Length body, whose end the
# parser finds; _UNTIL_CLOSE: a body without framing, which the server's close ends; _DONE: read whole.
_HEAD, _BODY, _UNTIL_CLOSE, _DONE = range(4)


class ConnectionFailed(Exception):
    """No connection could be made (refused, unreachable, TLS failure)."""


class ConnectionLost(Exception):
    """The connection broke during an exchange. `response_started`: some response byte had arrived."""

    def __init__(self, message: str, response_started: bool) -> None:
        super().__init__(message)
        self.response_started = response_started


class ProtocolViolation(Exception):
    """The server's answer is not valid HTTP/1.1 as this client reads it."""


class HeadTimeout(TimeoutError):
    """The response head did not arrive by the deadline given to `Http1Pool.exchange_head`."""


class _StopParsing(Exception):
    """Raised by a parser callback that has already recorded why the rest of the read is not parsed."""


class ResponseHead(NamedTuple):
    status: int
    reason: str


class _ParserCallbacks(NamedTuple):
    """What httptools calls while parsing, looked up by these names when a parser is made. Not the
    connection itself: its `on_body` attribute is the splice hook, which changes during an exchange."""

    on_message_begin: Callable[[], None]
    on_status: Callable[[bytes], None]
    on_header: Callable[[bytes, bytes], None]
    on_headers_complete: Callable[[], None]
    on_body: Callable[[bytes], None]
    on_message_complete: Callable[[], None]
    on_chunk_header: Callable[[], None]
    on_chunk_complete: Callable[[], None]


class Endpoint(NamedTuple):
    """Where a URL's requests go: connection key, request target and `Host` header."""

    scheme: str
    host: str
    port: int
    target: str
    host_header: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        default_port = port == (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, target, host if default_port else f"{host}:{port}")


def encode_request(method: str, endpoint: Endpoint, headers: dict[str, str], body: bytes) -> bytes:
    """The request's bytes. A header value with a line break is refused (header injection)."""
    # one line per header, checked whole rather than header by header: no CR or LF but those between lines
    fields = "\r\n".join(map(": ".join, headers.items()))
    breaks = len(headers) - 1 if headers else 0
    if fields.count("\r") != breaks or fields.count("\n") != breaks or ":" in "".join(headers):
        bad = next(name for name, value in headers.items()
                   if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name)
        raise ValueError(f"HTTP header {bad!r} has a line break or a colon in its name or value")
    head = f"{method} {endpoint.target} HTTP/1.1\r\nHost: {endpoint.host_header}\r\nContent-Length: {len(body)}\r\n"
    return (f"{head}{fields}\r\n\r\n" if headers else f"{head}\r\n").encode() + body

class Http1Connection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time (`send`, `read_head`, then `read` until b"").

    `data_received` hands each read to the response parser and wakes the reader once per read, whatever
    the framing; `abort(exc)` makes the waiting (or next) read raise `exc` (how a timeout ends a read)."""

    def __init__(self, pool: Http1Pool, key: tuple[str, str, int]) -> None:
        self._pool = pool
        self.key = key
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.closed = False
        # set while the pool waits for the end of a response whose body the caller no longer reads
        self.on_done: Callable[[Http1Connection], None] | None = None
        # set while a caller takes the body from the read callback itself (splicing): `read` is then
        # unused, and the waiting task is woken only by `wake`, the response's end, or a failure
        self.on_body: Callable[[bytes], None] | None = None
        # with `on_body`, optionally: a read that starts at a chunk of a chunked body is offered here first,
        # without the parser (chunk_relay.py), which takes it whole or returns False to have it parsed
        self.relay: Callable[[bytes], bool] | None = None
        self.park_timer: asyncio.TimerHandle | None = None
        self._callbacks = _ParserCallbacks(self._on_message_begin, self._on_status, self._on_header,
                                           self._on_headers_complete, self._on_parsed_body,
                                           self._on_message_complete, self._on_chunk_header,
                                           self._on_chunk_complete)
        self._reset()

    def _reset(self) -> None:
        # a parser per exchange: whatever state a failed or abandoned exchange left cannot leak into the next
        self._parser = HttpResponseParser(self._callbacks)
        self._mode = _HEAD
        self._head_bytes = 0  # bytes read while the head was incomplete (the parser does not bound it)
        self._reason = b""
        self._framed = False  # the response declared a length or chunked coding: a close cuts it short
        self._chunked = False  # ... chunked coding
        self._at_chunk_start = False  # in a chunked body, the parser is between two chunks
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._head: ResponseHead | None = None
        self._keep_alive = True
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._head_waits_for_body = False  # read_head(until_body): a read that brings only the head wakes nobody
        self._paused = False
        self.response_started = False

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if self._mode == _UNTIL_CLOSE:
            self._mode = _DONE  # a close-delimited body ends here
        elif self._mode != _DONE and self._error is None:
            what = "before the response" if self._mode == _HEAD else "mid-response"
            self._error = ConnectionLost(f"connection closed {what}" + (f": {exc}" if exc else ""),
                                         self.response_started)
        self.wake()
        self._pool.lost(self)

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        if relay is not None and self._at_chunk_start and self._error is None and self._mode == _BODY and relay(data):
            # The splice's steady state: an engine writes each event as one chunk, and while tokens flow
            # each read is one chunk, which the relay checks and writes on as it came (the parser, which
            # stays between two chunks, and a Python call per check were most of the router's CPU per
            # token). Anything else (several chunks, a part, a usage or error event) is parsed below.
            return
        if self._error is not None:
            return  # the exchange failed (a malformed answer, a timeout): what follows is not read
        self.response_started = True
        if self._mode == _DONE:
            self._keep_alive = False  # bytes after the response: the connection is not trustworthy
            return
        try:
            self._parser.feed_data(data)
        except HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, _StopParsing):
                # a body consumer (the splice hook) failed: raised as if no parser stood in between, so
                # asyncio closes the connection as it does for any failing protocol callback
                raise (cause or exc) from None
        except HttpParserUpgrade:
            self._violation("the server switched protocols unasked")
        except HttpParserError as exc:
            if self._mode == _DONE:
                self._keep_alive = False  # bytes after the response (after `Connection: close`, say)
            else:
                self._violation(f"malformed response: {exc}")
        if self.on_body is not None and self._mode == _BODY and self._error is None:
            return  # splicing, the body's end still to come: the consumer took the bytes, and wakes its task
        if self._mode == _HEAD:
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_HEAD_BYTES and self._error is None:
                self._violation("response head too large")
            return
        if self._error is not None or self._mode == _DONE or (
                self.on_body is None and (self._body or not self._head_waits_for_body)):
            self.wake()
        if self.on_done is not None and self._mode == _DONE:
            self._body.clear()  # a parked connection: the caller has what it wanted
            self._body_bytes = 0
            self.on_done(self)
        if self._body_bytes > _PAUSE_ABOVE_BYTES and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    # -- the parser's callbacks (from within `feed_data`) ------------------------------------------

    def _on_message_begin(self) -> None:
        if self._mode == _DONE:
            # a further response in the same read, though no request asked for one
            self._keep_alive = False
            raise _StopParsing
        self._reason = b""  # after an interim 1xx answer: the final one starts afresh
        self._framed = self._chunked = False

    def _on_status(self, reason: bytes) -> None:
        self._reason += reason  # in pieces when the status line is split across reads

    def _on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length":
            self._framed = True
        elif name == b"transfer-encoding":
            # else the body runs to the close
            self._framed = self._chunked = value.rstrip().lower().endswith(b"chunked")

    def _on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._violation(f"not an HTTP/1.x response (HTTP/{version})")
            raise _StopParsing
        status = parser.get_status_code()
        if status == 101:
            self._violation("the server switched protocols unasked")
            raise _StopParsing
        if status < 200:
            return  # an interim answer (100 Continue): the real one follows as the next message
        # read now: llhttp forgets the connection's persistence once the message is complete
        self._keep_alive = parser.should_keep_alive()
        self._mode = _BODY if self._framed else _UNTIL_CLOSE
        self._at_chunk_start = self._chunked
        self._head = ResponseHead(status, self._reason.decode("latin-1"))

    def _on_parsed_body(self, piece: bytes) -> None:
        if self.on_body is not None:
            self.on_body(piece)
            return
        self._body.append(piece)
        self._body_bytes += len(piece)

    def _on_message_complete(self) -> None:
        if self._head is not None:  # else the end of an interim answer
            self._mode = _DONE

    def _on_chunk_header(self) -> None:
        self._at_chunk_start = False

    def _on_chunk_complete(self) -> None:
        self._at_chunk_start = True

    # -- the exchange -----------------------------------------------------------------------------

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self._reset()
        self.transport.write(request)

    async def read_head(self, until_body: bool = False) -> ResponseHead:
        """The response head. `until_body`: return only once the body's first bytes are in too (or its end,
        or a failure after the head, which the next `read` raises), and be woken once for both rather than
        twice (a task's wake-up is a share of the router's CPU per request)."""
        self._head_waits_for_body = until_body
        try:
            while True:
                if self._head is not None and (not until_body or self._body or self._mode == _DONE
                                               or self._error is not None):
                    return self._head
                if self._error is not None:
                    raise self._error  # before the head: the exchange failed (the pool may resend it)
                self._waiter = self._loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        finally:
            self._head_waits_for_body = False

    async def read(self) -> bytes:
        """The body bytes that arrived since the last read; b"" once the body is complete."""
        while not self._body:
            if self._mode == _DONE:
                return b""
            await self._wait()
        return self.take_buffered()

    @property
    def may_complete(self) -> bool:
        """Still readable: the end of the response may yet arrive."""
        return not self.closed and self._error is None and self._mode == _BODY

    @property
    def complete(self) -> bool:
        """The response was read to its end and the connection may carry another request."""
        return self._mode == _DONE and self._keep_alive and not self.closed and not self._body

    def abort(self, exc: BaseException) -> None:
        """Make the waiting read (or the next one) raise `exc`."""
        if self._error is None:
            self._error = exc
        self.wake()

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None and not self._body and self._mode != _DONE:
            raise self._error

    def take_buffered(self) -> bytes:
        """The body bytes buffered so far, without waiting (before switching to `on_body`)."""
        body, self._body = self._body, []
        self._body_bytes = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return body[0] if len(body) == 1 else b"".join(body)

    def pause(self) -> None:
        """Stop reading the socket until the next `read` or `take_buffered` (a caller not keeping up)."""
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    async def wait_signal(self) -> bool:
        """While splicing: wait for a `wake`, the end of the body (True) or a failure (raised)."""
        if self._error is None and self._mode != _DONE:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._error is not None:
            raise self._error
        return self._mode == _DONE

    def head_due(self) -> None:
        """The deadline of the response head (a timer's callback): the waiting `read_head` raises
        `HeadTimeout`, unless the head is in."""
        if self._head is None:
            self.abort(HeadTimeout("no response head in time"))

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _violation(self, message: str) -> None:
        self._error = ProtocolViolation(message)
        self._keep_alive = False
        if self.transport is not None:
            self.transport.close()
        self.wake()


class Http1Pool:
    """Keep-alive connections per (scheme, host, port), at most `max_connections` open in all and
    `max_per_host` per host (0: no per-host bound). An idle connection is closed after `keepalive_s`."""

    def __init__(self, *, max_connections: int, max_per_host: int, keepalive_s: float,
                 connect_timeout_s: float) -> None:
        self.max_connections = max_connections
        self.max_per_host = max_per_host
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self._idle: dict[tuple[str, str, int], list[Http1Connection]] = {}
        self._open: dict[tuple[str, str, int], int] = {}
        self._open_total = 0
        self._counted: set[Http1Connection] = set()
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def exchange_head(self, endpoint: Endpoint, request: bytes, deadline: float | None = None,
                            on_connection: Callable[[Http1Connection], None] | None = None,
                            until_body: bool = False) -> tuple[Http1Connection, ResponseHead]:
        """Send `request` and wait for the response head. The caller reads the body from the connection
        and hands it back with `release`. A reused connection found closed before any response byte is
        replaced once by a new one. With `deadline` (the loop's clock), the whole wait ends there with a
        `TimeoutError`: a timer on the connection bounds the wait for the head (a timeout context per
        request costs a share of the router's CPU per request), a timeout context only a wait for a
        connection (a new one, or a place in the pool). With `on_connection`, the caller is told each
        connection the request is sent on, before the wait for its head, and bounds that wait itself (its
        own timer aborts the connection: one timer for a deadline that also bounds what follows the head).
        `until_body` (with `on_connection`, whose caller's timer bounds that wait too): see
        `Http1Connection.read_head`."""
        for attempt in (0, 1):
            conn = self._take_idle((endpoint.scheme, endpoint.host, endpoint.port))
            reused = conn is not None
            if conn is None:
                if deadline is None:
                    conn, reused = await self._acquire(endpoint)
                else:
                    async with asyncio.timeout_at(deadline):
                        conn, reused = await self._acquire(endpoint)
            try:
                conn.send(request)
                if on_connection is not None:
                    on_connection(conn)
                if deadline is None or on_connection is not None:
                    return conn, await conn.read_head(until_body)
                timer = conn._loop.call_at(deadline, conn.head_due)
                try:
                    return conn, await conn.read_head()  # (the timer bounds the head only)
                finally:
                    timer.cancel()
            except ConnectionLost as exc:
                self.release(conn)
                if not (reused and attempt == 0 and not exc.response_started):
                    raise
            except BaseException:
                self.release(conn)
                raise
        raise AssertionError("unreachable")

    def release(self, conn: Http1Connection, *, body_consumed: bool = False) -> None:
        """Give a connection back: kept for the next request when its response was read whole, else closed.

        `body_consumed`: the caller read all it wanted (an SSE stream's `[DONE]`) though the response's
        own end (the last chunk) may still be on its way; the connection then waits `_PARK_S` for it
        instead of being closed, so an engine that ends its stream a moment after `[DONE]` keeps its
        keep-alive connection."""
        if conn.on_done is not None:
            return  # already parked
        if not conn.complete and body_consumed and conn.may_complete and not self._closed:
            conn.on_done = self._unpark
            conn.park_timer = conn._loop.call_later(_PARK_S, self._park_expired, conn)
            return
        if conn.complete and not self._closed:
            conn.idle_since = conn._loop.time()
            self._idle.setdefault(conn.key, []).append(conn)
            if self._sweep is None:
                self._sweep = conn._loop.call_later(self.keepalive_s, self._sweep_idle)
            self._wake_one()
            return
        if conn.transport is not None:
            conn.transport.close()  # the engine sees the disconnect: how it learns a request was abandoned
        self._uncount(conn)

    def _unpark(self, conn: Http1Connection) -> None:
        if conn.park_timer is not None:
            conn.park_timer.cancel()
            conn.park_timer = None
        conn.on_done = None
        self.release(conn)

    def _park_expired(self, conn: Http1Connection) -> None:
        conn.park_timer = None
        conn.on_done = None
        self.release(conn)  # still not complete: closed

    def lost(self, conn: Http1Connection) -> None:
        """A connection closed (by either side)."""
        if conn.on_done is not None:
            self._unpark(conn)  # a parked connection: released, so closed and uncounted
            return
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
            self._uncount(conn)

    async def close(self) -> None:
        """Close every connection, idle or in use (an exchange still reading then fails)."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conn in list(self._counted):
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
        for waiter in self._slot_waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionFailed("the client is closed"))
        self._slot_waiters.clear()

    def _take_idle(self, key: tuple[str, str, int]) -> Http1Connection | None:
        """An idle connection to `key` still open, taken from the pool; None when there is none."""
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
            self._uncount(conn)
        return None

    async def _acquire(self, endpoint: Endpoint) -> tuple[Http1Connection, bool]:
        key = (endpoint.scheme, endpoint.host, endpoint.port)
        while True:
            if self._closed:
                raise ConnectionFailed("the client is closed")
            conn = self._take_idle(key)
            if conn is not None:
                return conn, True
            if self._open_total < self.max_connections and (
                    not self.max_per_host or self._open.get(key, 0) < self.max_per_host):
                return await self._connect(endpoint, key), False
            if self._open_total >= self.max_connections and self._close_one_idle():
                continue  # an idle connection to another host gives up its place
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, then cancelled: the freed place goes to the next waiter
                elif waiter in self._slot_waiters:
                    self._slot_waiters.remove(waiter)
                raise

    async def _connect(self, endpoint: Endpoint, key: tuple[str, str, int]) -> Http1Connection:
        loop = asyncio.get_running_loop()
        self._open[key] = self._open.get(key, 0) + 1
        self._open_total += 1
        conn = Http1Connection(self, key)
        self._counted.add(conn)
        tls = None
        if endpoint.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await loop.create_connection(lambda: conn, endpoint.host, endpoint.port, ssl=tls)
        except TimeoutError as exc:
            self._uncount(conn)
            raise ConnectionFailed(f"no connection within {self.connect_timeout_s:g} s") from exc
        except OSError as exc:
            self._uncount(conn)
            raise ConnectionFailed(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            self._uncount(conn)
            raise
        return conn

    def _uncount(self, conn: Http1Connection) -> None:
        if conn not in self._counted:
            return
        self._counted.discard(conn)
        left = self._open.get(conn.key, 0) - 1
        if left > 0:
            self._open[conn.key] = left
        else:
            self._open.pop(conn.key, None)
        self._open_total -= 1
        self._wake_one()

    def _close_one_idle(self) -> bool:
        for conns in self._idle.values():
            if conns:
                conn = conns.pop(0)
                if conn.transport is not None:
                    conn.transport.close()
                self._uncount(conn)
                return True
        return False

    def _wake_one(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep_idle(self) -> None:
        """Close connections idle longer than `keepalive_s`; runs while any connection is idle."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        oldest_kept = loop.time() - self.keepalive_s
        for conns in self._idle.values():
            stale = [c for c in conns if c.idle_since <= oldest_kept]
            for conn in stale:
                conns.remove(conn)
                if conn.transport is not None:
                    conn.transport.close()
                self._uncount(conn)
        if any(self._idle.values()):
            self._sweep = loop.call_later(self.keepalive_s / 2, self._sweep_idle)
