"""Forwarding an engine's server-sent events to the client as bytes, without decoding every token.

Role: the router's streaming hot path. An OpenAI-compatible engine (vLLM, SGLang, the node-agent's
engine server) already sends the events the client wants, so re-encoding each token costs the router
CPU and adds latency for nothing. `SseForwarder` cuts the engine's reads at event boundaries (a client
never receives half an event, so an error event appended after a broken stream is still well formed)
and learns what the router must know from cheap byte scans: how many output chunks went by, whether
the stream ended with `[DONE]`, and the engine's usage counts when it sent them. Only these are decoded:
the events up to the first token (they decide retry-or-not and carry the TTFT), any block that may
hold an error event, and the usage chunk. An engine that frames events with `\\r` line ends is
decoded event by event instead (still correct, just not the fast path).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from opscale.openai.json_codec import loads_json
from opscale.openai.sse import SseDecoder, SseError
from opscale.openai.stream import EngineUsage, engine_usage

from opscale_services.router.chunk_relay import Relay, chunk_data

__all__ = ["DONE_EVENT", "EventFailure", "ForwardedBlock", "SseBytes", "SseForwarder", "SseSink", "decode_event",
           "event_usage"]

DONE_EVENT = b"data: [DONE]\n\n"
_EVENT_END = b"\n\n"
_JSON_EVENT_END = b"}\n\n"


class SseBytes(NamedTuple):
    """Whole server-sent events from the engine, to be written to the client unchanged.

    `chunks`: output chunks in `data` (token events, and a closing chunk that only carries a finish
    reason, as the decoded path counts them). `usage`: the engine's own token counts when `data` holds
    its usage chunk. `done`: `data` ends the stream (`[DONE]`).

    A named tuple rather than a frozen dataclass: one is made per engine read, and a frozen dataclass
    costs twice as much to build, a measurable share of the router's CPU per token.
    """

    data: bytes
    chunks: int
    usage: EngineUsage | None = None
    done: bool = False


class SseSink(Protocol):
    """Where spliced events go: the client's connection (see UpstreamClient.stream_sse)."""

    def write(self, data: bytes) -> bool:
        """Write whole events now and return True; or return False without writing when the client
        is not keeping up (or is gone), so the caller holds them and waits as a task would."""
        ...

    def relay(self, now: Callable[[], float]) -> Relay:
        """A relay (chunk_relay.py) that writes token events arriving as whole HTTP chunks to this sink
        from the engine connection's read callback, stamping each with `now()`."""
        ...


@dataclass(frozen=True, slots=True)
class EventFailure:
    """What is wrong with one event: an error the engine reported, or a malformed event."""

    kind: str  # "status" or "protocol", as UpstreamError kinds
    message: str


def decode_event(data: str) -> tuple[str, str | None] | EventFailure | None:
    """(text, finish_reason) of an output event, None for an event without output (a chat role-only
    delta, a usage chunk), or the failure it reports."""
    try:
        obj = loads_json(data)
    except (ValueError, RecursionError):  # not JSON, an integer too long to convert, nested too deeply
        return EventFailure("protocol", f"event is not JSON: {data[:200]!r}")
    if not isinstance(obj, dict):
        return EventFailure("protocol", f"event is not a JSON object: {data[:200]!r}")
    error = obj.get("error")
    if error is not None:
        message = error.get("message") if isinstance(error, dict) else error
        return EventFailure("status", f"engine reported an error mid-stream: {message}")
    choices = obj.get("choices")
    if not choices:
        return None
    if not isinstance(choices, list) or not isinstance(choices[0], dict):
        return EventFailure("protocol", f"malformed choices: {data[:200]!r}")
    choice = choices[0]
    text = choice.get("text")
    if text is None:
        delta = choice.get("delta")
        text = (delta.get("content") if isinstance(delta, dict) else None) or ""
    finish_reason = choice.get("finish_reason")
    if not isinstance(text, str) or not (finish_reason is None or isinstance(finish_reason, str)):
        return EventFailure("protocol", f"malformed choice: {data[:200]!r}")
    if not text and finish_reason is None:
        return None
    return text, finish_reason


def _single_data(event: bytes) -> str | None:
    """The data of an event that is one `data: ` line (the usual shape, read without a decoder); None
    for any other event, and for one whose data is not UTF-8."""
    if event.startswith(b"data: ") and event.find(b"\n") == len(event) - 2:
        try:
            return event[6:-2].decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _through_first_output(block: bytes) -> tuple[int, bool] | None:
    """Where the first event of `block` (whole events) that carries output ends, and whether it carries a
    finish reason, each event up to it decoded once; None when a failure, a usage chunk or `[DONE]` comes
    first, or no event carries output (those blocks go through the full decode)."""
    start = 0
    while (end := block.find(_EVENT_END, start)) >= 0:
        end += len(_EVENT_END)
        data = _single_data(block[start:end])
        events = [data] if data is not None else SseDecoder().feed(block[start:end])
        if events:
            if events[0] == "[DONE]" or '"completion_tokens"' in events[0]:
                return None
            decoded = decode_event(events[0])
            if isinstance(decoded, EventFailure):
                return None
            if decoded is not None:
                return end, decoded[1] is not None
        start = end
    return None


def event_usage(data: str) -> EngineUsage | None:
    """The engine's counts in a usage chunk, None for any other event."""
    try:
        obj = loads_json(data)
    except (ValueError, RecursionError):
        return None
    return engine_usage(obj) if isinstance(obj, dict) else None


class ForwardedBlock(NamedTuple):
    """What one engine read gives the client: `out` (None when no whole event arrived yet), and the
    failure to raise after writing it, if the engine reported one. (A named tuple, as SseBytes.)"""

    out: SseBytes | None
    failure: EventFailure | None = None


class SseForwarder:
    """Turns one engine stream's reads into whole-event `SseBytes`. Feed every read to `feed`; call
    `end` when the engine closes the connection. `chunks` counts output chunks so far."""

    __slots__ = ("_decoder", "_finished", "_held", "_last_event", "_max_event_bytes", "_plain", "_tail", "chunks")

    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        self._max_event_bytes = max_event_bytes
        self._decoder = SseDecoder(max_event_bytes)
        self._tail = b""  # the start of an event whose end has not arrived
        self._plain = True  # events end with \n\n: forward bytes verbatim
        self._finished = False  # a decoded output chunk carried a finish reason
        self._last_event = b""  # the last whole block forwarded in scan mode, checked at a close
        self._held = b""  # events before the first output chunk (a chat role delta): sent with it
        self.chunks = 0

    def feed(self, data: bytes) -> ForwardedBlock:
        """The whole events `data` completes. Raises `SseError` for an event over the size bound.

        Nothing is released before the first output chunk, so a failure until then leaves the client
        untouched and the request can go to another instance."""
        if (self.chunks and not self._tail and data.endswith(_EVENT_END) and self._plain
                and data.find(b"\r") < 0 and data.find(b'"error"') < 0):
            # the steady state: tokens flowing, whole events per read, nothing to decode
            return ForwardedBlock(self._scanned(data))
        before_first = self.chunks == 0
        block = self._feed(data)
        if not before_first or block.out is None:
            return block
        if self.chunks == 0 and block.failure is not None:
            return ForwardedBlock(None, block.failure)
        if self.chunks == 0 and not block.out.done:
            self._held += block.out.data
            return ForwardedBlock(None)
        held, self._held = self._held, b""
        out = block.out
        return ForwardedBlock(SseBytes(held + out.data, out.chunks, out.usage, out.done), block.failure)

    def feed_steady(self, data: bytes) -> int:
        """The output chunks in `data` when it is the steady state's read, whole token events once tokens
        flow, with no usage, error or `[DONE]` in it: counted here, and forwarded as they are by the
        caller. -1 for any other read, which goes to `feed`. (The splice's per-read path: one call, no
        block built.)"""
        # `find`, not `in`: `in` on bytes first tries its operand as an integer (a TypeError raised and
        # dropped each time), which makes it three times as slow, and this runs once per engine read. Each
        # test is a call of ~0.1 us: the read must end with a JSON event (`}` and the blank line), which
        # also tells it from a `[DONE]`; any other ending goes to `feed`, which reads it whole.
        if (self.chunks and not self._tail and self._plain and data.endswith(_JSON_EVENT_END)
                and data.find(b"\r") < 0 and data.find(b'"error"') < 0 and data.find(b'"completion_tokens"') < 0):
            events = data.count(b"\ndata:") + data.startswith(b"data:")
            self.chunks += events
            self._last_event = data
            return events
        return -1

    @property
    def steady(self) -> bool:
        """Whether the next token events may go around `feed` (a `ChunkRelay` relays them): tokens flow,
        and no event is cut across reads or read event by event (CR line ends)."""
        return self.chunks > 0 and not self._tail and self._plain

    def relayed(self, events: int, last: bytes) -> None:
        """`events` token events went around `feed` while `steady`, `last` (an HTTP chunk, framed) the last:
        counted as `feed` would have, and `last` kept for `end`."""
        self.chunks += events
        self._last_event = chunk_data(last)

    def _feed(self, data: bytes) -> ForwardedBlock:
        if self._plain and data.find(b"\r") >= 0:
            # \r line ends: the byte scan cannot find event ends; decode from here on
            self._plain = False
            data, self._tail = self._tail + data, b""
        if not self._plain:
            return self._decoded_block(data, verbatim=None)
        buf = self._tail + data if self._tail else data
        cut = buf.rfind(_EVENT_END)
        if cut < 0:
            if len(buf) > self._max_event_bytes:
                raise SseError(f"an event is larger than {self._max_event_bytes} bytes")
            self._tail = buf
            return ForwardedBlock(None)
        cut += len(_EVENT_END)
        block, self._tail = buf[:cut], buf[cut:]
        first_end = block.find(_EVENT_END) + len(_EVENT_END)
        if self.chunks == 0 and len(block) > first_end and block.find(b'"error"') < 0:
            # Several events before the first token: every event is checked (a failure then may be
            # retried elsewhere) up to that token; what follows it in the same read is scanned like any
            # later block. A router that falls behind reads many events at once, and decoding them all
            # would make it fall further behind.
            # Each event up to the first token is decoded once (a chat stream's role-only delta comes first).
            head = _through_first_output(block)
            if head is not None:
                cut, finished = head
                self.chunks += 1
                self._finished = self._finished or finished
                if cut == len(block):
                    self._last_event = block
                    return ForwardedBlock(SseBytes(block, 1))
                rest = self._scanned(block[cut:])
                return ForwardedBlock(SseBytes(block, 1 + rest.chunks, rest.usage, rest.done))
        if self.chunks == 0 or block.find(b'"error"') >= 0:
            # later, only a block that may hold an error event is decoded
            return self._decoded_block(block, verbatim=block)
        return ForwardedBlock(self._scanned(block))

    def end(self) -> SseBytes | None:
        """The engine closed the connection without `[DONE]`: the closing `[DONE]` to send when the
        stream was complete (its last output chunk had a finish reason), else None (a broken stream)."""
        if self._tail or self._decoder.pending or self.chunks == 0:
            return None
        if not self._finished and self._last_event:
            last = self._last_event.rstrip(b"\n").rsplit(_EVENT_END, 1)[-1]
            decoded = decode_event(last.removeprefix(b"data:").strip().decode("utf-8", errors="replace"))
            self._finished = isinstance(decoded, tuple) and decoded[1] is not None
        return SseBytes(DONE_EVENT, 0, done=True) if self._finished else None

    def _scanned(self, block: bytes) -> SseBytes:
        """A block forwarded on a byte scan: events counted by their `data:` lines (JSON escapes
        newlines, so a line start is never inside a token's text)."""
        events = block.count(b"\ndata:") + block.startswith(b"data:")
        # `[DONE]` only as a whole line: `xdata: [DONE]` is a field named `xdata`, which ends nothing
        done = block.endswith(DONE_EVENT) and (len(block) == len(DONE_EVENT) or block[-len(DONE_EVENT) - 1] == 0x0A)
        events -= done
        usage = None
        if block.find(b'"completion_tokens"') >= 0:
            usage, usage_events = self._usage_in(block)
            events -= usage_events
        self.chunks += events
        self._last_event = block
        return SseBytes(block, events, usage, done)

    @staticmethod
    def _usage_in(block: bytes) -> tuple[EngineUsage | None, int]:
        """The engine's token counts in `block`, and how many usage chunks it holds."""
        usage, found = None, 0
        decoder = SseDecoder()
        for event in decoder.feed(block):
            if event != "[DONE]" and '"completion_tokens"' in event:
                counts = event_usage(event)
                if counts is not None:
                    usage, found = counts, found + 1
        return usage, found

    def _decoded_block(self, block: bytes, verbatim: bytes | None) -> ForwardedBlock:
        """Every event of `block` decoded; forwarded as `verbatim` when whole and clean, else
        re-framed event by event (up to an error, which is returned to raise after the events before it)."""
        data = _single_data(block) if verbatim is not None and not self._decoder.pending else None
        # one event of one data line (the usual first read): its data is the line after `data: `; else
        # the decoder (which also says where a byte is not UTF-8)
        events = [data] if data is not None else self._decoder.feed(block)
        chunks, usage, done, taken = 0, None, False, 0
        for event in events:
            taken += 1
            if event == "[DONE]":
                done = True
                break
            decoded = decode_event(event)
            if isinstance(decoded, EventFailure):
                self.chunks += chunks
                out = SseBytes(_framed(events[:taken - 1]), chunks, usage) if taken > 1 else None
                return ForwardedBlock(out, decoded)
            if decoded is None:
                usage = event_usage(event) if '"completion_tokens"' in event else usage
                continue
            chunks += 1
            self._finished = self._finished or decoded[1] is not None
        self.chunks += chunks
        if not taken:
            return ForwardedBlock(None)
        whole = verbatim is not None and (not done or verbatim.endswith(DONE_EVENT))
        return ForwardedBlock(SseBytes(verbatim if whole else _framed(events[:taken]), chunks, usage, done))


def _framed(events: list[str]) -> bytes:
    """Decoded events framed again, one `data:` line each (`[DONE]` as the closing event); only built
    when the engine's own bytes cannot be forwarded as they came."""
    return b"".join(DONE_EVENT if event == "[DONE]" else b"data: " + event.encode() + _EVENT_END for event in events)
