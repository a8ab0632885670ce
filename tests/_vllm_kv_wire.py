"""vLLM's KV event wire format, for tests: msgspec structs mirroring vllm/distributed/kv_events.py
(tagged arrays, msgpack) and the multipart message [topic, seq, payload] its ZMQ publisher sends."""

from __future__ import annotations

from typing import Any

import msgspec


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]


class KVCacheEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    """Base class of vLLM's KV cache events."""


class BlockStored(KVCacheEvent):
    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[int | bytes]
    medium: str | None


class AllBlocksCleared(KVCacheEvent):
    pass


class KVEventBatch(EventBatch):
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


class Unknown(KVCacheEvent):  # a tag some future vLLM may send
    x: int


ENCODER = msgspec.msgpack.Encoder()


def frames(seq: int, *events: KVCacheEvent, topic: bytes = b"kv") -> list[bytes]:
    """One message of vLLM's publisher: [topic, seq (8 bytes big-endian), msgpack KVEventBatch]."""
    return [topic, seq.to_bytes(8, "big"), ENCODER.encode(KVEventBatch(ts=1.0, events=list(events)))]
