"""One streamed OpenAI answer, as the servers write it and as the usage block reads back.

Role: `OpenAIStreamWriter` turns the pieces of one streamed answer (token chunks, the end, a failure
after the status line was sent) into the exact server-sent events OpenAI clients expect: chunk JSON
with choices, the closing chunk that says why the choice ended, the usage chunk when
`stream_options.include_usage` asked for it, then `data: [DONE]`. Both of opscale's servers that
assemble a stream themselves write through it: the router's API (tokens decoded from an engine) and
the node-agent's engine server (tokens of the simulated engine). The router's forwarding path does not:
it relays the engine's own bytes (services/router/sse_passthrough.py).

`EngineUsage` is what an engine said about token counts in its usage block; `engine_usage` reads it
from a decoded chunk. An engine's figures win over the router's estimate wherever both exist.

It does no I/O: it returns bytes for the caller's connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opscale.openai.schema import ApiError, ParsedRequest, finish_reason_for, stream_chunk, usage_chunk
from opscale.openai.sse import SSE_DONE, sse_event

__all__ = ["EngineUsage", "OpenAIStreamWriter", "engine_usage", "error_events"]


@dataclass(frozen=True, slots=True)
class EngineUsage:
    """The token counts an engine reported for one request (vLLM's `usage` block); None where it gave
    none."""

    prompt_tokens: int | None
    completion_tokens: int | None


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def engine_usage(chunk: Mapping[str, Any]) -> EngineUsage | None:
    """The usage an engine reported in `chunk` (a decoded response or stream chunk), None when the
    chunk has no usage block or it holds neither count."""
    usage = chunk.get("usage")
    if not isinstance(usage, dict):
        return None
    found = EngineUsage(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")))
    return None if found.prompt_tokens is None and found.completion_tokens is None else found


def error_events(error: ApiError) -> bytes:
    """A failure once the status line is sent: an error event, then `[DONE]`, as OpenAI and vLLM end
    such a stream."""
    return sse_event(error.body()) + SSE_DONE


class OpenAIStreamWriter:
    """The events of one streamed answer to `req`, in order. `tokens` counts the output tokens written
    (a closing chunk that only carries a finish reason is not one)."""

    __slots__ = ("_created_s", "_finished", "_req", "_started", "tokens")

    def __init__(self, req: ParsedRequest, created_s: int) -> None:
        self._req = req
        self._created_s = created_s
        self._started = False
        self._finished = False
        self.tokens = 0

    def chunk(self, text: str, finish_reason: str | None = None) -> bytes:
        """One output chunk; the first carries the chat role."""
        first, self._started = not self._started, True
        self.tokens += bool(text) or finish_reason is None
        self._finished = self._finished or finish_reason is not None
        return sse_event(stream_chunk(self._req, text, finish_reason, self._created_s, first=first))

    def end(self, usage: EngineUsage | None = None) -> bytes:
        """The close of a stream that ran to its end: a chunk with the finish reason if none said it
        yet, the usage chunk if the client asked (with the engine's counts where `usage` has them),
        and `[DONE]`."""
        out = b""
        completion_tokens = self.tokens
        if usage is not None and usage.completion_tokens is not None:
            completion_tokens = usage.completion_tokens
        if not self._finished:
            reason = finish_reason_for(completion_tokens, self._req.max_tokens)
            out += self.chunk("", reason)
        if self._req.include_usage:
            prompt_tokens = None if usage is None else usage.prompt_tokens
            out += sse_event(usage_chunk(self._req, completion_tokens, self._created_s,
                                         prompt_tokens=prompt_tokens))
        return out + SSE_DONE
