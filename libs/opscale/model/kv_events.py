"""The KV-cache events of one instance as they travel to the routers: vLLM's BlockStored, BlockRemoved and
AllBlocksCleared (see opscale.engine.kv_events) flattened into one message, batched per instance.
Delivered as events of opscale.services.events; defined here so that the routing layer, which keeps the
prefix index, can read them. Pure data."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class KvEventKind(StrEnum):
    """Which of vLLM's KV events a `KvBlockEvent` is (opscale.engine.kv_events)."""

    STORED = "stored"  # BlockStored
    REMOVED = "removed"  # BlockRemoved
    CLEARED = "cleared"  # AllBlocksCleared


@dataclass(frozen=True, slots=True)
class KvBlockEvent:
    """One KV event of an engine, as it travels: vLLM's BlockStored, BlockRemoved or AllBlocksCleared
    flattened into one message (`kind` says which; the fields a kind lacks stay empty). Block hashes are
    chained from the prefix (a hash names its whole prefix), 64-bit signed as Request.prefix_hashes;
    `parent_block_hash` is the block before the first stored one (None: they start the prompt)."""

    kind: KvEventKind
    block_hashes: tuple[int, ...] = ()
    parent_block_hash: int | None = None
    token_ids: tuple[int, ...] = ()
    block_size: int = 0
    medium: str = ""


@dataclass(frozen=True, slots=True)
class KvEventBatch:
    """The KV events of one instance since its previous batch, in order, as its node-agent forwards them
    to the routers (one batch per instance per report tick). `seq` numbers that instance's batches,
    increasing (from 1 in the simulator; a live node-agent starts at its start time in microseconds,
    so that it numbers above its earlier runs): a router applies a batch only if its seq is above the
    last it applied (a redelivered or older one is dropped)."""

    instance_id: str
    model: str
    at_s: float
    seq: int
    events: tuple[KvBlockEvent, ...] = ()
