"""The prefix cache of one simulated engine: reference-counted prefix blocks with LRU eviction.

A request's `prefix_hashes` name its prompt's consecutive prefix blocks of `block_tokens` tokens each
(Mooncake's hash_ids). As in vLLM's automatic prefix caching, the KV of a full prompt block that a
sequence has computed is registered under its hash; later sequences whose leading hashes are cached
reuse those blocks instead of prefilling them. An entry is *pinned* while running sequences use it
(its KV counts as used) and *evictable* once none does: evictable entries live in the KV cache's free
space and are evicted least recently released first, deepest block of a prompt first, whenever the
running sequences need that space.

This class keeps only the entries and their states; the engine owns the KV block counts and decides
when to pin, register, release and evict. No clock, no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class PrefixCache:
    """Cached prefix blocks by hash: a reference count each, and an LRU of the unreferenced ones."""

    __slots__ = ("block_tokens", "kv_blocks", "_refs", "_lru", "evictable_blocks", "evicted")

    def __init__(self, block_tokens: int, kv_blocks_per_entry: int, *, track_evictions: bool = False) -> None:
        self.block_tokens = block_tokens
        # The hashes evicted since the owner last took them (its KV events); None: not kept.
        self.evicted: list[int] | None = [] if track_evictions else None
        self.kv_blocks = kv_blocks_per_entry  # KV blocks one entry occupies
        self._refs: dict[int, int] = {}  # every cached hash -> running sequences using it
        self._lru: OrderedDict[int, None] = OrderedDict()  # hashes with no reference, oldest first
        self.evictable_blocks = 0  # KV blocks held by unreferenced entries

    def __len__(self) -> int:
        return len(self._refs)

    def __contains__(self, block_hash: int) -> bool:
        return block_hash in self._refs

    def is_pinned(self, block_hash: int) -> bool:
        return self._refs.get(block_hash, 0) > 0

    def references(self, block_hash: int) -> int:
        """Running sequences using the entry (0 for an evictable or an absent one)."""
        return self._refs.get(block_hash, 0)

    def lookup(self, hashes: Sequence[int], limit: int) -> int:
        """How many of the first `limit` hashes are cached, counting from the first until a miss."""
        refs = self._refs
        n = 0
        while n < limit and hashes[n] in refs:
            n += 1
        return n

    def pin(self, block_hash: int) -> int:
        """Add a reference to a cached entry; returns the KV blocks it takes out of the evictable pool."""
        count = self._refs[block_hash]
        self._refs[block_hash] = count + 1
        if count:
            return 0
        del self._lru[block_hash]
        self.evictable_blocks -= self.kv_blocks
        return self.kv_blocks

    def register(self, block_hash: int) -> bool:
        """Cache a block that a running sequence has just computed, pinned by it. False (nothing done)
        when the hash is already cached: the sequence keeps its own copy, as vLLM does."""
        if block_hash in self._refs:
            return False
        self._refs[block_hash] = 1
        return True

    def release(self, hashes: Sequence[int]) -> int:
        """Drop one reference to each of `hashes` (a sequence's pinned entries, in prompt order).
        Returns the KV blocks that became evictable. The deepest block is queued for eviction first,
        so a shared prompt loses its tail before its head."""
        refs, lru = self._refs, self._lru
        freed = 0
        for block_hash in reversed(hashes):
            count = refs[block_hash] - 1
            refs[block_hash] = count
            if not count:
                lru[block_hash] = None
                freed += self.kv_blocks
        self.evictable_blocks += freed
        return freed

    def evict_to(self, room_blocks: int) -> None:
        """Evict unreferenced entries, least recently released first, until they fit in `room_blocks`."""
        lru, refs, evicted = self._lru, self._refs, self.evicted
        while self.evictable_blocks > room_blocks and lru:
            block_hash, _ = lru.popitem(last=False)
            del refs[block_hash]
            self.evictable_blocks -= self.kv_blocks
            if evicted is not None:
                evicted.append(block_hash)

    def clear(self) -> None:
        self._refs.clear()
        self._lru.clear()
        self.evictable_blocks = 0
