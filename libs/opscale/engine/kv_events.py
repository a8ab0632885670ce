"""The KV-cache events an engine publishes, in vLLM's model (vllm/distributed/kv_events.py): the blocks
it stores, the blocks it removes, and a clear of everything. A router that keeps a global prefix index
(opscale.routing.prefix_index) follows each instance's cache from them.

Block hashes are chained from the prefix, as vLLM's are: a block's hash names its whole prefix, so one
hash says which prompt head an instance holds. The simulated engine's blocks are prefix blocks of
`EngineConfig.prefix_block_tokens` tokens named by the trace's hash ids (Mooncake's hash_ids are such
chained ids); it knows no token ids, so `token_ids` is empty. `medium` says which tier the block lives
in: "GPU", or "CPU" for the host-memory tier.

vLLM's reader (a later increment) maps its msgpack BlockStored, BlockRemoved and AllBlocksCleared onto
these one to one. No clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from opscale.model.kv_events import KvBlockEvent, KvEventKind

GPU = "GPU"
CPU = "CPU"


@dataclass(frozen=True, slots=True)
class BlockStored:
    """Consecutive blocks of one prompt entered the cache; `parent_block_hash` is the block before the
    first of them (None: they start the prompt)."""

    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int
    medium: str = GPU


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    """Blocks left the cache (evicted) of tier `medium`."""

    block_hashes: tuple[int, ...]
    medium: str = GPU


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    """The engine dropped every cached block (it stopped, or its cache was reset)."""


KvCacheEvent = BlockStored | BlockRemoved | AllBlocksCleared


def as_block_event(event: KvCacheEvent) -> KvBlockEvent:
    """The wire form of one engine KV event (opscale.model.kv_events)."""
    if isinstance(event, BlockStored):
        return KvBlockEvent(KvEventKind.STORED, event.block_hashes, event.parent_block_hash, event.token_ids,
                            event.block_size, event.medium)
    if isinstance(event, BlockRemoved):
        return KvBlockEvent(KvEventKind.REMOVED, event.block_hashes, medium=event.medium)
    return KvBlockEvent(KvEventKind.CLEARED)
