"""The proxy benchmark's measuring tools on raw asyncio protocols: a fixed-latency streaming upstream and an
open-loop streaming load generator, cheap enough that neither is what the benchmark measures.

Both speak just enough HTTP/1.1 for the three targets (the upstream itself, opscale's router and
vllm-router): keep-alive, `Content-Length` request bodies, chunked responses. Parsing is minimal on
purpose: the upstream never decodes a request body (every completion gets the same fixed answer), and the
client only frames chunks, looks for `data:` to timestamp the first token and for `[DONE]` at the end.
Timestamps are `time.perf_counter()`: uvloop's `loop.time()` counts whole milliseconds.

Not for anything but benchmarks: no TLS, no pipelining, no request trailers or chunked request bodies.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_HEAD_END = b"\r\n\r\n"
_CRLF = b"\r\n"
_MAX_HEAD_BYTES = 64 * 1024


def _content_length(head_lower: bytes) -> int:
    at = head_lower.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    start = at + len(b"\r\ncontent-length:")
    end = head_lower.find(_CRLF, start)
    return int(head_lower[start:end if end >= 0 else len(head_lower)].strip())


# -- the upstream ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpstreamAnswer:
    """What every completion gets: `tokens` events, the first `gap_s` after the request and each later one
    `gap_s` after the previous, then `[DONE]`; pre-framed as HTTP chunks once, for every request."""

    model: str
    tokens: int
    gap_s: float
    head: bytes = field(init=False)
    token_frames: tuple[bytes, ...] = field(init=False)
    done_frame: bytes = field(init=False)

    def __post_init__(self) -> None:
        frames = []
        for i in range(self.tokens):
            finish = "length" if i == self.tokens - 1 else None
            event = {"id": "cmpl-bench", "object": "text_completion", "created": 0, "model": self.model,
                     "choices": [{"index": 0, "text": f" t{i}", "logprobs": None, "finish_reason": finish}]}
            frames.append(_chunk(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"))
        object.__setattr__(self, "token_frames", tuple(frames))
        object.__setattr__(self, "done_frame", _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        object.__setattr__(self, "head", b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                         b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n" % len(payload) + payload + _CRLF


def _plain_response(status: str, content_type: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body)


class UpstreamProtocol(asyncio.Protocol):
    """One client connection to the fixed-latency upstream. `POST .../completions` streams the fixed
    answer, paced by loop timers (no task per request); `GET /health` and `GET /v1/models` answer at once
    (vllm-router probes them); anything else is a 404. Requests on a connection are served in turn."""

    def __init__(self, answer: UpstreamAnswer) -> None:
        self._answer = answer
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._streaming = False
        self._close_after = False
        self._next_token = 0
        self._timer: asyncio.TimerHandle | None = None
        self._models_body = json.dumps({"object": "list", "data": [
            {"id": answer.model, "object": "model", "owned_by": "bench"}]}).encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()  # the client went away mid-answer: stop pacing its tokens
            self._timer = None
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._streaming:
            self._serve_buffered()

    def _serve_buffered(self) -> None:
        while not self._streaming and self._transport is not None:
            end = self._buffer.find(_HEAD_END)
            if end < 0:
                if len(self._buffer) > _MAX_HEAD_BYTES:
                    self._transport.close()
                return
            head = self._buffer[:end]
            head_lower = head.lower()
            total = end + len(_HEAD_END) + _content_length(head_lower)
            if len(self._buffer) < total:
                return
            self._buffer = self._buffer[total:]
            self._close_after = b"\r\nconnection: close" in head_lower
            method, path = head[:head.find(_CRLF)].split(b" ", 2)[:2]
            if method == b"POST" and path.endswith((b"/completions",)):
                self._start_stream()
                return
            if method == b"GET" and path == b"/health":
                self._transport.write(_plain_response("200 OK", "text/plain", b"ok"))
            elif method == b"GET" and path == b"/v1/models":
                self._transport.write(_plain_response("200 OK", "application/json", self._models_body))
            else:
                self._transport.write(_plain_response("404 Not Found", "text/plain", b"not found"))
            if self._close_after:
                self._transport.close()

    def _start_stream(self) -> None:
        assert self._transport is not None
        self._streaming = True
        self._next_token = 0
        self._transport.write(self._answer.head)  # headers at once, tokens later, as an engine does
        self._timer = asyncio.get_running_loop().call_later(self._answer.gap_s, self._send_token)

    def _send_token(self) -> None:
        transport = self._transport
        if transport is None:
            return
        answer = self._answer
        transport.write(answer.token_frames[self._next_token])
        self._next_token += 1
        if self._next_token < answer.tokens:
            self._timer = asyncio.get_running_loop().call_later(answer.gap_s, self._send_token)
            return
        self._timer = None
        transport.write(answer.done_frame)
        self._streaming = False
        if self._close_after:
            transport.close()
        elif self._buffer:
            self._serve_buffered()


async def serve_upstream(port: int, answer: UpstreamAnswer, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: UpstreamProtocol(answer), "127.0.0.1", port, backlog=4096)
    async with server:
        await stop.wait()


# -- the open-loop load generator ----------------------------------------------------------------------


@dataclass(slots=True)
class _Outcome:
    scheduled_s: float
    sent_s: float = 0.0
    first_token_s: float | None = None
    end_s: float | None = None
    events: int = 0
    error: str | None = None


class ClientProtocol(asyncio.Protocol):
    """One keep-alive connection of the load generator: one streaming request at a time.

    `send` writes the request; `data_received` frames the response (chunked or `Content-Length`), stamps
    the first body bytes that hold `data:` (the first token) and the end, counts `data:` events, and hands
    the finished outcome and this connection back through `on_done`."""

    def __init__(self, request_bytes: bytes, on_done: Callable[[ClientProtocol, _Outcome, bool], None]) -> None:
        self._request_bytes = request_bytes
        self._on_done = on_done
        self.transport: asyncio.Transport | None = None
        self._outcome: _Outcome | None = None
        self._buffer = b""
        self._in_head = True
        self._chunked = False
        self._left = 0  # body bytes still expected (Content-Length), or of the current chunk (chunked)
        self._in_chunk = False
        self._carry = b""  # the last bytes of the previous payload: a `data:` split across reads
        self._tail = b""  # the last bytes of the body: does it end with [DONE]
        self._status = 0
        self.connected = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.connected.done():
            self.connected.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionError("closed before connecting"))
        if self._outcome is not None:
            self._finish("closed_mid_response", reusable=False)

    def send(self, outcome: _Outcome) -> None:
        assert self.transport is not None and self._outcome is None
        self._outcome = outcome
        self._buffer, self._in_head, self._carry, self._tail = b"", True, b"", b""
        outcome.sent_s = time.perf_counter()
        self.transport.write(self._request_bytes)

    def data_received(self, data: bytes) -> None:
        if self._outcome is None:
            return  # nothing asked: a stray byte from a broken server; the request that follows will tell
        self._buffer += data
        if self._in_head:
            end = self._buffer.find(_HEAD_END)
            if end < 0:
                return
            head = self._buffer[:end].lower()
            self._buffer = self._buffer[end + len(_HEAD_END):]
            self._in_head = False
            self._status = int(head[9:12])
            self._chunked = b"\r\ntransfer-encoding: chunked" in head
            self._left = 0 if self._chunked else _content_length(head)
            self._in_chunk = False
        if self._chunked:
            self._read_chunks()
        else:
            self._read_length()

    def _read_length(self) -> None:
        take, self._buffer = self._buffer[:self._left], self._buffer[self._left:]
        self._left -= len(take)
        self._payload(take)
        if self._left == 0:
            self._complete()

    def _read_chunks(self) -> None:
        buf, pos = self._buffer, 0
        while True:
            if self._in_chunk:
                if len(buf) - pos < self._left + 2:
                    break
                self._payload(buf[pos:pos + self._left])
                pos += self._left + 2
                self._in_chunk = False
                continue
            line_end = buf.find(_CRLF, pos)
            if line_end < 0:
                break
            size = int(buf[pos:line_end].split(b";", 1)[0], 16)
            if size == 0:
                if len(buf) < line_end + 4:  # the empty trailer line
                    break
                self._buffer = b""
                self._complete()
                return
            self._left, self._in_chunk, pos = size, True, line_end + 2
        self._buffer = buf[pos:]

    def _payload(self, payload: bytes) -> None:
        if not payload or self._outcome is None:
            return
        outcome = self._outcome
        probe = self._carry + payload
        found = probe.count(b"data:")
        if found and outcome.first_token_s is None:
            outcome.first_token_s = time.perf_counter()
        outcome.events += found
        self._carry = payload[-4:]  # shorter than `data:`, so no event is counted twice
        self._tail = (self._tail + payload)[-32:]

    def _complete(self) -> None:
        outcome = self._outcome
        assert outcome is not None
        outcome.end_s = time.perf_counter()
        if self._status != 200:
            self._finish(f"http_{self._status}", reusable=True)
        elif b"[DONE]" not in self._tail:
            self._finish("no_done", reusable=True)
        else:
            self._finish(None, reusable=True)

    def _finish(self, error: str | None, reusable: bool) -> None:
        outcome, self._outcome = self._outcome, None
        assert outcome is not None
        outcome.error = error
        self._on_done(self, outcome, reusable and self.transport is not None)


@dataclass
class LoadResult:
    offered_rps: float
    sent: int
    completed: int
    errors: dict[str, int]
    ttft_s: list[float]
    e2e_s: list[float]
    send_lag_p99_ms: float
    max_send_lag_ms: float
    send_s: float
    wall_s: float
    connections_opened: int
    events_per_response: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return self.__dict__


class OpenLoopLoad:
    """Sends `rate` streaming requests per second for `duration_s` at send times fixed in advance
    (`i / rate` from the start), whatever the answers do, so a slow target cannot slow the offered load
    (no coordinated omission); TTFT and end-to-end latency count from each request's scheduled time.

    Keep-alive connections are reused; `warm_connections` are opened before the clock starts, and a
    request that finds none idle opens another (its connect time counts against its latency)."""

    def __init__(self, host: str, port: int, path: str, body: bytes, *, warm_connections: int = 64,
                 drain_timeout_s: float = 30.0, headers: dict[str, str] | None = None) -> None:
        self._host, self._port = host, port
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self._request_bytes = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                               f"Accept: text/event-stream\r\n{extra}Content-Length: {len(body)}\r\n\r\n").encode() + body
        self._warm = warm_connections
        self._drain_timeout_s = drain_timeout_s
        self._idle: list[ClientProtocol] = []
        self._opened = 0
        self._outstanding = 0
        self._finished: list[_Outcome] = []
        self._all_done: asyncio.Event | None = None

    async def _connect(self) -> ClientProtocol:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: ClientProtocol(self._request_bytes, self._done),
                                                   self._host, self._port)
        self._opened += 1
        return protocol

    def _done(self, protocol: ClientProtocol, outcome: _Outcome, reusable: bool) -> None:
        self._finished.append(outcome)
        if reusable:
            self._idle.append(protocol)
        elif protocol.transport is not None:
            protocol.transport.close()
        self._outstanding -= 1
        if self._outstanding == 0 and self._all_done is not None:
            self._all_done.set()

    def _take_idle(self) -> ClientProtocol | None:
        """An idle connection still open (the server may have closed one between requests)."""
        while self._idle:
            protocol = self._idle.pop()
            if protocol.transport is not None and not protocol.transport.is_closing():
                return protocol
        return None

    async def _send_on_new(self, outcome: _Outcome) -> None:
        try:
            protocol = await self._connect()
        except OSError as exc:
            outcome.error = f"connect_{type(exc).__name__}"
            self._finished.append(outcome)
            self._outstanding -= 1
            if self._outstanding == 0 and self._all_done is not None:
                self._all_done.set()
            return
        protocol.send(outcome)

    async def run(self, rate: float, duration_s: float) -> LoadResult:
        self._idle = list(await asyncio.gather(*(self._connect() for _ in range(self._warm))))
        self._all_done = asyncio.Event()
        count = max(1, int(rate * duration_s))
        connecting: set[asyncio.Task[None]] = set()
        begin = time.perf_counter() + 0.01
        outcomes = [_Outcome(begin + i / rate) for i in range(count)]
        next_index = 0
        self._outstanding = count
        while next_index < count:
            now = time.perf_counter()
            while next_index < count and outcomes[next_index].scheduled_s <= now:
                outcome = outcomes[next_index]
                next_index += 1
                protocol = self._take_idle()
                if protocol is not None:
                    protocol.send(outcome)
                else:
                    task = asyncio.create_task(self._send_on_new(outcome))
                    connecting.add(task)
                    task.add_done_callback(connecting.discard)
            if next_index < count:
                delay = outcomes[next_index].scheduled_s - time.perf_counter()
                await asyncio.sleep(delay if delay > 0 else 0)  # noqa: TID251 - the arrival schedule
        send_s = time.perf_counter() - begin
        try:
            await asyncio.wait_for(self._all_done.wait(), self._drain_timeout_s)
        except TimeoutError:
            pass
        wall_s = time.perf_counter() - begin
        for protocol in self._idle:
            if protocol.transport is not None:
                protocol.transport.close()
        return self._result(rate, outcomes, send_s, wall_s)

    def _result(self, rate: float, outcomes: list[_Outcome], send_s: float, wall_s: float) -> LoadResult:
        errors: dict[str, int] = {}
        ttfts: list[float] = []
        e2es: list[float] = []
        events: dict[str, int] = {}
        lags: list[float] = []
        for o in outcomes:
            if o.sent_s:
                lags.append(o.sent_s - o.scheduled_s)
            error = o.error if o.end_s is not None or o.error else "unfinished"
            if error is not None:
                errors[error] = errors.get(error, 0) + 1
                continue
            assert o.end_s is not None
            if o.first_token_s is not None:
                ttfts.append(o.first_token_s - o.scheduled_s)
            e2es.append(o.end_s - o.scheduled_s)
            events[str(o.events)] = events.get(str(o.events), 0) + 1
        lags.sort()
        return LoadResult(rate, len(outcomes), len(e2es), errors, ttfts, e2es,
                          round(lags[min(len(lags) - 1, math.floor(0.99 * len(lags)))] * 1e3, 3) if lags else 0.0,
                          round(lags[-1] * 1e3, 3) if lags else 0.0, round(send_s, 3), round(wall_s, 3),
                          self._opened, events)
