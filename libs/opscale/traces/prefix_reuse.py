"""The prefix reuse a trace offers: the share of its prompt tokens that a single cache of unbounded
size would not have to prefill, given each request's prefix block hashes (Mooncake's hash_ids).

This is the bound any fleet and routing policy is measured against (bench/prefix_reuse.py). Given a
capacity, the same cache is an LRU of that many blocks, touched by every prompt (no load, no pinning):
the most a fleet whose caches hold that much together can reach. It counts
as the simulated engine does (opscale.engine.kv): only full prompt blocks are cached, a prompt's cached
blocks are its leading ones up to the first miss, and at least one prompt token is always computed.

Example: prompts (1024 tokens, hashes (1, 2)) then (1536, (1, 2, 3)): the second skips 1024 of its
1536 tokens; the bound is 1024 / 2560 = 0.4.
"""

from __future__ import annotations

from collections.abc import Iterable

from opscale.model import Request


def prefix_reuse_bound(requests: Iterable[Request], block_tokens: int = 512,
                       capacity_blocks: int | None = None) -> float:
    """Prompt tokens a single cache skips over all prompt tokens (0 for no requests); the cache holds
    every block (`capacity_blocks` None) or the `capacity_blocks` most recently used."""
    if block_tokens < 1:
        raise ValueError(f"block_tokens must be >= 1, got {block_tokens!r}")
    if capacity_blocks is not None and capacity_blocks < 1:
        raise ValueError(f"capacity_blocks must be >= 1 or None, got {capacity_blocks!r}")
    seen: dict[int, None] = {}  # insertion order is recency order: the oldest first
    hit = total = 0
    for request in requests:
        prompt = request.prompt_tokens
        full = request.prefix_hashes[:prompt // block_tokens]
        limit = min(len(full), (prompt - 1) // block_tokens)
        k = 0
        while k < limit and full[k] in seen:
            k += 1
        hit += k * block_tokens
        total += prompt
        for block_hash in full:
            seen.pop(block_hash, None)
            seen[block_hash] = None
        if capacity_blocks is not None:
            while len(seen) > capacity_blocks:
                del seen[next(iter(seen))]
    return hit / total if total else 0.0
