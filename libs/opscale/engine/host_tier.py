"""The host-memory KV tier of one simulated engine, as LMCache and Mooncake Store keep one: prefix blocks
evicted from the GPU cache are copied to host memory instead of dropped, up to a size, least recently
used first out; a later prompt whose next blocks are there loads them back over PCIe instead of
prefilling them (opscale.engine.scheduler prices the copy, opscale.engine.kv counts the hits).

Entries are prefix blocks of `EngineConfig.prefix_block_tokens` tokens, by their chained hash. The
engine owns when to put, look up and touch. No clock, no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class HostTier:
    """Prefix blocks in host memory, least recently used first; at most `capacity` of them."""

    __slots__ = ("capacity", "_lru")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"host KV tier: capacity must be >= 1 block, got {capacity!r}")
        self.capacity = capacity
        self._lru: OrderedDict[int, None] = OrderedDict()

    def put(self, block_hash: int) -> list[int]:
        """Keep a block evicted from the GPU; returns the blocks pushed out to make room."""
        lru = self._lru
        if block_hash in lru:
            lru.move_to_end(block_hash)
            return []
        lru[block_hash] = None
        out: list[int] = []
        while len(lru) > self.capacity:
            out.append(lru.popitem(last=False)[0])
        return out

    def run_from(self, hashes: Sequence[int], start: int, limit: int) -> int:
        """How many of hashes[start:limit] are here, counting from `start` until a miss."""
        lru = self._lru
        n = start
        while n < limit and hashes[n] in lru:
            n += 1
        return n - start

    def touch(self, hashes: Sequence[int]) -> None:
        """These blocks were just loaded back: the most recently used."""
        for block_hash in hashes:
            self._lru.move_to_end(block_hash)

    def clear(self) -> None:
        self._lru.clear()
