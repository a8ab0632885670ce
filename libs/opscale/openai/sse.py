"""Server-sent events as OpenAI streams them: the encoder the router and the node-agent's engine server
write with, and the incremental decoder that clients (the router's upstream reader, the load generator)
read with.

It does no I/O and imports no network library: bytes in, events out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

SSE_DONE = b"data: [DONE]\n\n"
SSE_CONTENT_TYPE = "text/event-stream"


def sse_event(payload: Mapping[str, Any]) -> bytes:
    """`data: {...}\\n\\n`. Compact JSON without newlines, so one event is one `data:` line."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class SseError(ValueError):
    """The byte stream is not valid server-sent events."""


class SseDecoder:
    """Incremental SSE decoder: `feed(bytes)` returns the `data` of every event completed so far.

    Handles `\\n`, `\\r\\n` and `\\r` line ends, events split across any number of reads, comment
    lines (`: keep-alive`), fields other than `data` (ignored) and multi-line data (joined with
    `\\n`, per the WHATWG spec). An event larger than `max_event_bytes` raises `SseError`, so a
    misbehaving server cannot make a client buffer without bound.
    """

    __slots__ = ("_buffer", "_data", "_max_event_bytes", "_pending_cr")

    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        self._buffer = bytearray()
        self._data: list[str] = []
        self._max_event_bytes = max_event_bytes
        self._pending_cr = False

    def feed(self, data: bytes) -> list[str]:
        events: list[str] = []
        if self._pending_cr and data.startswith(b"\n"):
            data = data[1:]  # the \n of a \r\n split across two reads
        self._pending_cr = data.endswith(b"\r")
        self._buffer += data
        while True:
            end, width = self._line_end()
            if end < 0:
                break
            line = bytes(self._buffer[:end])
            del self._buffer[: end + width]
            event = self._line(line)
            if event is not None:
                events.append(event)
        if len(self._buffer) + sum(len(d) for d in self._data) > self._max_event_bytes:
            raise SseError(f"an event is larger than {self._max_event_bytes} bytes")
        return events

    @property
    def pending(self) -> bool:
        """True when bytes of an unfinished event are buffered."""
        return bool(self._buffer) or bool(self._data)

    def _line_end(self) -> tuple[int, int]:
        """(index, width) of the first line end in the buffer, or (-1, 0)."""
        nl = self._buffer.find(b"\n")
        cr = self._buffer.find(b"\r")
        if cr < 0 or 0 <= nl < cr:
            return nl, (1 if nl >= 0 else 0)
        if cr + 1 < len(self._buffer) and self._buffer[cr + 1] == 0x0A:
            return cr, 2
        return cr, 1  # a lone \r; if it was the last byte, feed skips a \n that starts the next read

    def _line(self, line: bytes) -> str | None:
        if not line:
            if not self._data:
                return None
            event = "\n".join(self._data)
            self._data = []
            return event
        if line.startswith(b":"):
            return None
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            try:
                self._data.append(value.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise SseError(f"an SSE data line is not valid UTF-8 (byte {exc.start})") from exc
        return None
