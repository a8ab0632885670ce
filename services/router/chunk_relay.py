"""The splice's per-token path: an engine read that is one whole HTTP chunk holding one token event is
checked and written to the client in one call, without the HTTP parser or the SSE forwarder.

Role: while tokens flow, an engine (vLLM, SGLang, the node-agent's engine server) writes each event as
one chunk of its chunked body and the router reads each as it comes; this is the work the router does
per token. `ChunkRelay` is the C implementation (_chunk_relay.c, built when the install has a C compiler;
a check here costs a fifth of the same checks made as Python calls); `PyChunkRelay` is this module's
Python one, the reference, used where the extension is not built. The tests run both on the same reads.

A relay is made per splice, bound to the client's connection, and called with each engine read while
`armed`, which the splice sets only in its steady state (tokens flowing, nothing held, no failure). A read
it relays is written to the client (the chunk as it came to a chunked answer, its data otherwise) and
counted; any other read, or one the client is not keeping up with, gets False and goes the general way
(the parser, then `SseForwarder.feed`). The splice takes the count back with `take`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["NATIVE", "ChunkRelay", "FlowState", "PyChunkRelay", "Relay", "chunk_data"]


class FlowState(Protocol):
    """The client connection's side of flow control: True while its transport's buffer is full."""

    writing_paused: bool


class Relay(Protocol):
    armed: bool
    count: int
    last_at: float

    def __call__(self, data: bytes) -> bool: ...

    def take(self) -> tuple[int, bytes | None]: ...


# A chunk's size line -> its size, for the sizes token events have (one to three hex digits, lower case,
# no leading zero, as servers write them).
_CHUNK_SIZES: dict[bytes, int] = {b"%x" % n: n for n in range(1, 0x1000)}


class PyChunkRelay:
    """`relay(data)` relays `data` and returns True when the relay is armed and `data` is exactly one
    chunk (a size of one to three lower-case hex digits, CRLF, the chunk's data, CRLF) whose data is one
    token event: one `data:` line of JSON ending in `}`, then the blank line, with no CR, no `"error"` and
    no `"completion_tokens"` (a usage chunk) in it; and the client is keeping up (`flow.writing_paused`
    false, the transport not closing). Otherwise it returns False and writes nothing.

    `count` and `last` (the last read relayed, framed) accumulate until `take`; `last_at` is `now()` when
    the last read was relayed (the splice's idle clock)."""

    __slots__ = ("_chunked", "_flow", "_is_closing", "_now", "_write", "armed", "count", "last", "last_at")

    def __init__(self, write: Callable[[bytes], object], is_closing: Callable[[], bool], flow: FlowState,
                 chunked: bool, now: Callable[[], float]) -> None:
        self._write = write
        self._is_closing = is_closing
        self._flow = flow
        self._chunked = chunked
        self._now = now
        self.armed = False
        self.count = 0
        self.last: bytes | None = None
        self.last_at = 0.0

    def __call__(self, data: bytes) -> bool:
        if not self.armed:
            return False
        # `partition` rather than `find`: a one-byte separator is found with memchr, and `find` parses its
        # arguments as a tuple. The first CR after the size line must be the chunk's closing CRLF at the
        # size's offset: then the read is exactly one chunk, and its data holds no CR.
        size_line, _, rest = data.partition(b"\r\n")
        size = _CHUNK_SIZES.get(size_line)
        if size is None:
            return False
        piece, _, end = rest.partition(b"\r")
        if end != b"\n" or len(piece) != size:
            return False
        line, _, end = piece.partition(b"\n")
        if (end != b"\n" or line[:5] != b"data:" or line[-1] != 125  # '}'
                or line.partition(b'"error"')[1] or line.partition(b'"completion_tokens"')[1]):
            return False
        if self._flow.writing_paused or self._is_closing():
            return False
        self._write(data if self._chunked else piece)
        self.count += 1
        self.last = data
        self.last_at = self._now()
        return True

    def take(self) -> tuple[int, bytes | None]:
        """The events relayed and the last read relayed since the previous `take`; both reset."""
        taken = self.count, self.last
        self.count, self.last = 0, None
        return taken


def chunk_data(chunk: bytes) -> bytes:
    """The data of `chunk`, one whole chunk as a relay takes it (size line, data, CRLF)."""
    return chunk.partition(b"\r\n")[2][:-2]


try:
    from opscale_services.router._chunk_relay import ChunkRelay as _NativeChunkRelay
except ImportError:  # built without a C compiler: the Python relay, same behaviour, more CPU per token
    NATIVE = False
    ChunkRelay: type[Relay] = PyChunkRelay
else:
    NATIVE = True
    ChunkRelay = _NativeChunkRelay
