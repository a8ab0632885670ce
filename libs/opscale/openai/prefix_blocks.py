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
prefix_block_tokens), so what the router routes on is what the engine caches.

With real token ids (a router with the model's tokenizer, opscale.openai.prompt_tokens; a token-array
prompt; vLLM's BlockStored events, which carry their blocks' token ids) the hashes come from
`token_block_hashes`: each block's token ids as 4-byte little-endian words, chained through the parent's
hash. vLLM's own block hashes (Python's hash() or sha256 of pickled tuples, seeded per process) cannot be
reproduced outside vLLM, so the node-agent renames vLLM's blocks into these from their token ids
(opscale.openai.vllm_kv_rekey), and the router's tokenized prompts name the same blocks.

No I/O.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Mapping, Sequence
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


def _text_blocks(prompt: str, block_tokens: int) -> Iterator[bytes]:
    data = prompt.encode("utf-8")
    size = block_tokens * CHARS_PER_TOKEN  # bytes stand in for characters: the same for ASCII text
    for start in range(0, len(data) - size + 1, size):
        yield data[start:start + size]


def _chain(parent: bytes, block: bytes) -> bytes:
    return hashlib.blake2b(parent + block, digest_size=8, person=_PERSON).digest()


def _words(tokens: Sequence[int]) -> bytes:
    try:
        return struct.pack(f"<{len(tokens)}I", *tokens)
    except struct.error:  # an id outside 0..2**32-1 (hostile input): its low 32 bits, as vLLM ids always fit
        return struct.pack(f"<{len(tokens)}I", *(t & 0xFFFFFFFF for t in tokens))


def token_block_hashes(token_ids: Sequence[int], block_size: int, parent: int | None = None,
                       limit: int | None = None) -> tuple[int, ...]:
    """The chained hashes of the whole blocks of `block_size` token ids in `token_ids`, the first chained
    from `parent` (the hash of the block before them; None: they start the sequence). At most `limit`
    blocks are hashed (None: all). () when `block_size` < 1.

    Deterministic across processes and machines (blake2b, not Python's seeded hash()), so the router and
    every node-agent name a block alike. Example: token_block_hashes([1, 2, 3, 4, 5], 2) has 2 hashes, the
    second naming tokens 1 to 4; token_block_hashes([3, 4], 2, parent=that[0]) == (that[1],).
    """
    if block_size < 1:
        return ()
    blocks = len(token_ids) // block_size
    if limit is not None:
        blocks = min(blocks, max(0, limit))
    out: list[int] = []
    digest = b"" if parent is None else (parent & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
    data = _words(token_ids[:blocks * block_size])  # packed once: a block is then a slice of it
    size = 4 * block_size
    for start in range(0, blocks * size, size):
        digest = _chain(digest, data[start:start + size])
        out.append(int.from_bytes(digest, "big", signed=True))
    return tuple(out)


def prefix_block_hashes(body: Mapping[str, Any], block_tokens: int) -> tuple[int, ...]:
    """The chained hashes of the prompt's whole blocks of `block_tokens` tokens (see the module
    docstring); () when `block_tokens` < 1 or the body has no readable prompt."""
    if block_tokens < 1:
        return ()
    prompt = prompt_text(body)
    if prompt is None:
        return ()
    if not isinstance(prompt, str):
        return token_block_hashes(prompt, block_tokens)
    out: list[int] = []
    parent = b""
    for block in _text_blocks(prompt, block_tokens):
        parent = _chain(parent, block)
        out.append(int.from_bytes(parent, "big", signed=True))
    return tuple(out)
