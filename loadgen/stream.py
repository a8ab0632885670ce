"""Reading one streamed OpenAI answer: which events are tokens, when each arrived, how it ended.

`StreamTally` is fed the `data` of each server-sent event (decoded by
`opscale.openai.sse.SseDecoder`) with the time it was received; it does no I/O, so the
parsing is tested without a server. It understands both endpoints' chunks: chat (`choices[0].delta.content`)
and completions (`choices[0].text`); a chunk with empty text (the chat role chunk, a closing chunk that only
carries `finish_reason`) is not a token. The usage chunk (`"choices": []`, `"usage": {...}`) gives the
server's own count of output tokens, which wins over counting chunks (an engine may put several tokens in
one chunk). An error event (`{"error": {...}}`, which the router and vLLM send when a failure happens after
the status line) ends the stream as an error; `data: [DONE]` ends it normally.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

DONE = "[DONE]"


class StreamProblem(ValueError):
    """An event that is not part of an OpenAI streaming answer."""


@dataclass(slots=True)
class StreamTally:
    """The running state of one streamed answer. Times are seconds on the caller's clock."""

    first_token_s: float | None = None
    last_token_s: float | None = None
    token_chunks: int = 0
    usage_tokens: int | None = None
    done: bool = False
    error: str | None = None
    gaps_s: list[float] = field(default_factory=list)

    @property
    def output_tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.token_chunks

    @property
    def ended(self) -> bool:
        return self.done or self.error is not None

    def feed(self, data: str, at_s: float) -> None:
        """Take one event's data received at `at_s`. Raises StreamProblem on a malformed event."""
        if self.ended:
            return  # anything after [DONE] or an error event is ignored, as OpenAI clients do
        if data.strip() == DONE:
            self.done = True
            return
        try:
            event = json.loads(data)
        except json.JSONDecodeError as exc:
            raise StreamProblem(f"an event is not JSON ({exc.msg}): {data[:80]!r}") from None
        if not isinstance(event, dict):
            raise StreamProblem(f"an event is not a JSON object: {data[:80]!r}")
        if "error" in event:
            self.error = _error_message(event["error"])
            return
        usage = event.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.usage_tokens = usage["completion_tokens"]
        choices = event.get("choices")
        if not isinstance(choices, list):
            raise StreamProblem(f"an event has no 'choices' list: {data[:80]!r}")
        if choices and _choice_text(choices[0]):
            self._token(at_s)

    def _token(self, at_s: float) -> None:
        if self.first_token_s is None:
            self.first_token_s = at_s
        else:
            assert self.last_token_s is not None
            self.gaps_s.append(at_s - self.last_token_s)
        self.last_token_s = at_s
        self.token_chunks += 1


def _choice_text(choice: Any) -> str:
    if not isinstance(choice, dict):
        raise StreamProblem(f"a choice is not a JSON object: {choice!r:.80}")
    delta = choice.get("delta")
    if isinstance(delta, dict):
        content = delta.get("content")
        return content if isinstance(content, str) else ""
    text = choice.get("text")
    return text if isinstance(text, str) else ""


def _error_message(error: Any) -> str:
    if isinstance(error, dict):
        message = error.get("message")
        code = error.get("code") or error.get("type")
        text = str(message) if message is not None else json.dumps(error)
        return f"{code}: {text}" if code else text
    return str(error)
