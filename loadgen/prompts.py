"""Request bodies for a trace request: a synthetic prompt of about the trace's prompt length, and
`max_tokens` = the trace's output length.

The prompt approximation. A trace gives token counts, not text, and the endpoint's tokenizer is unknown.
The prompt is made of words of three lower-case letters, each preceded by a space (" the", " and", ...):
- opscale's router and simulated engine estimate one token per 4 characters
  (`opscale.openai.schema.estimate_tokens`), so each word is exactly one token there;
- BPE tokenizers (Llama 3, GPT-4's cl100k, Mistral) encode each of these common words with its leading
  space as one token, so vLLM sees about the same count (within a few percent; the chat template adds
  its own tokens, which opscale estimates as 4 per message + 3, and which are subtracted here).
The words are drawn from a generator seeded by the request id, so two requests do not share a prompt
prefix: a real engine's prefix cache would otherwise serve every prompt after the first from cache.
The same request id always gives the same text, so replays are repeatable.
"""

from __future__ import annotations

import hashlib
import random
from enum import StrEnum
from typing import Any

from opscale.model import Request
from opscale.openai.schema import CHAT_REPLY_PRIMING_TOKENS, CHAT_TOKENS_PER_MESSAGE

# Common English words that are one token (with their leading space) in the usual BPE vocabularies.
WORDS: tuple[str, ...] = (
    "the", "and", "for", "are", "but", "not", "you", "all", "any", "can", "had", "her", "was", "one", "our",
    "out", "day", "get", "has", "him", "his", "how", "man", "new", "now", "old", "see", "two", "way", "who",
    "boy", "did", "its", "let", "put", "say", "she", "too", "use", "car", "cat", "dog", "run", "big", "end",
    "far", "few", "got", "may", "own", "sun", "red", "top", "air", "ask", "eye", "job", "law", "sea", "tax",
    "war", "yes", "yet", "art",
)
_CHAT_OVERHEAD_TOKENS = CHAT_TOKENS_PER_MESSAGE + CHAT_REPLY_PRIMING_TOKENS


class ApiKind(StrEnum):
    """Which OpenAI endpoint to call."""

    CHAT = "chat"
    COMPLETIONS = "completions"

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self is ApiKind.CHAT else "/v1/completions"


def prompt_text(request_id: str, tokens: int) -> str:
    """About `tokens` tokens of text (see the module docstring), the same for the same request id."""
    seed = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")
    rng = random.Random(seed)
    return "".join(" " + w for w in rng.choices(WORDS, k=max(1, tokens)))


def request_body(request: Request, api: ApiKind, *, model: str | None = None, extras: bool = True) -> dict[str, Any]:
    """The streaming request body for `request`. With `extras`, it also carries what opscale and vLLM
    accept and strict OpenAI servers may not: `opscale_tier` and vLLM's `ignore_eos` (so the engine
    generates exactly `max_tokens`, as the trace did)."""
    body: dict[str, Any] = {
        "model": model or request.model,
        "max_tokens": request.output_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if api is ApiKind.CHAT:
        content_tokens = max(1, request.prompt_tokens - _CHAT_OVERHEAD_TOKENS)
        body["messages"] = [{"role": "user", "content": prompt_text(request.request_id, content_tokens)}]
    else:
        body["prompt"] = prompt_text(request.request_id, request.prompt_tokens)
    if extras:
        body["opscale_tier"] = request.tier
        body["ignore_eos"] = True
    return body
