"""A live request's prefix blocks: the chained hashes of its prompt's leading blocks, as the router's
prefix index and the simulated engine's prefix cache name them (Request.prefix_hashes).

opscale has no tokenizer in the control plane (opscale.openai.schema estimates one token per
`CHARS_PER_TOKEN` characters), so a block of `block_tokens` tokens is `block_tokens x CHARS_PER_TOKEN`
characters of the prompt's text: for a chat, each message's role and text in order, framed so that
messages do not run into each other; for a completion, the prompt string, or `block_tokens` token ids
of a token-array prompt. Only whole blocks are hashed (a partial last block is never cached).

Block i's hash covers block i and, through block i-1's hash, everything before it (vLLM's chaining), so
equal hashes mean equal prefixes: a follow-up turn of a conversation repeats the earlier turns' blocks
and adds its own. 64-bit signed, as Request.prefix_hashes and KV events carry them. The router and the
node-agent's engine server call this same function with the same block size (EngineConfig.
prefix_block_tokens), so what the router routes on is what the engine caches. vLLM hashes its own
tokens, which this does not reproduce: with vLLM the index learns vLLM's hashes from its events, and
the router's own approximate tracking (dispatches) uses these.

No I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

from opscale.openai.schema import CHARS_PER_TOKEN

_PERSON = b"opscale-prefix"  # blake2b personalisation: these hashes are only ever compared with each other


def prompt_text(body: Mapping[str, Any]) -> str | list[int] | None:
    """The prompt of a validated completion or chat body, as one string (or a token-id list); None
    when the body holds no prompt this can read."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts: list[str] = []
        for m in messages:
            if not isinstance(m, Mapping):
                return None
            content = m.get("content")
            if isinstance(content, list):  # text parts, joined as schema.ChatMessage joins them
                content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping)
                                  and isinstance(p.get("text"), str))
            # role and an end mark frame each message: "ab" + "c" and "a" + "bc" differ
            parts.append(f"<|{m.get('role', '')}|>{content if isinstance(content, str) else ''}<|end|>")
        return "".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(type(t) is int for t in prompt):
        return prompt
    return None


def _blocks(prompt: str | list[int], block_tokens: int) -> Iterator[bytes]:
    if isinstance(prompt, str):
        data = prompt.encode("utf-8")
        size = block_tokens * CHARS_PER_TOKEN  # bytes stand in for characters: the same for ASCII text
    else:
        data = b"".join((t & 0xFFFFFFFF).to_bytes(4, "little") for t in prompt)
        size = block_tokens * 4
    for start in range(0, len(data) - size + 1, size):
        yield data[start:start + size]


def prefix_block_hashes(body: Mapping[str, Any], block_tokens: int) -> tuple[int, ...]:
    """The chained hashes of the prompt's whole blocks of `block_tokens` tokens (see the module
    docstring); () when `block_tokens` < 1 or the body has no readable prompt."""
    if block_tokens < 1:
        return ()
    prompt = prompt_text(body)
    if prompt is None:
        return ()
    out: list[int] = []
    parent = b""
    for block in _blocks(prompt, block_tokens):
        parent = hashlib.blake2b(parent + block, digest_size=8, person=_PERSON).digest()
        out.append(int.from_bytes(parent, "big", signed=True))
    return tuple(out)
