"""vLLM's KV events as they arrive from its publisher (`--kv-events-config`, vllm/distributed/kv_events.py),
decoded into opscale's KvBlockEvent, one to one.

The wire: a ZMQ PUB socket sends multipart messages [topic, seq, payload]; `seq` is 8 bytes big-endian,
counting from 0 per publisher; `payload` is a msgpack `KVEventBatch`, an array [ts, events] (newer vLLM
appends data_parallel_rank), each event an array whose first element is its tag:
  ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium]
  ["BlockRemoved", block_hashes, medium]
  ["AllBlocksCleared"]
(msgspec structs with array_like=True and tag=True; trailing fields a newer vLLM adds are ignored and
those an older one omits take their defaults). A block hash is an int or, in newer vLLM (sha256 block
hashes), bytes: both become the 64-bit signed hash KvBlockEvent carries (an int, at most 64 bits in
msgpack, read as signed; a digest's first 8 bytes), so one block keeps one name. `lora_id` is not
carried: vLLM folds the LoRA into the block hash already. A `medium` of None (vLLM before it had tiers) becomes "" (the GPU).

Sequence: messages of one publisher arrive in order over TCP, so a seq above the next expected means
messages were lost (a slow subscriber past ZMQ's high-water mark): the missing count is added to
`gaps` and the message is applied (what was lost may leave stale blocks in the router's index until
they are removed or pushed out by its bound; a router's own dispatch tracking covers the rest). vLLM's
replay socket could fetch them; opscale does not ask. A seq equal to or below the last one is a
repeat, except that a drop to below it means the publisher restarted (its seq starts again at 0): its
cache started empty, so the message is applied after an AllBlocksCleared and counted in `restarts`.

Nothing a publisher sends raises: a message that is not three frames, a bad seq or an undecodable
payload is counted in `malformed` and dropped; within a batch, an event with an unknown tag
(`unknown_tag`) or bad fields (`malformed_events`) is dropped and the rest are kept. No I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from opscale.model.kv_events import KvBlockEvent, KvEventKind

_MASK64 = (1 << 64) - 1


class _VllmEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    """vLLM's KVCacheEvent: a tagged array (the tag is the class name)."""


class BlockStored(_VllmEvent):
    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None


class BlockRemoved(_VllmEvent):
    block_hashes: list[int | bytes]
    medium: str | None = None


class AllBlocksCleared(_VllmEvent):
    pass


class _Batch(msgspec.Struct, array_like=True, gc=False):
    ts: float
    events: list[msgspec.Raw]  # decoded one by one, so one bad event does not lose the batch


_EVENT = msgspec.msgpack.Decoder(BlockStored | BlockRemoved | AllBlocksCleared)
_BATCH = msgspec.msgpack.Decoder(_Batch)
_ANY = msgspec.msgpack.Decoder()
_TAGS = frozenset({"BlockStored", "BlockRemoved", "AllBlocksCleared"})


def block_hash(h: int | bytes) -> int:
    """A vLLM block hash as a 64-bit signed int (see the module docstring)."""
    if isinstance(h, bytes):
        return int.from_bytes(h[:8].rjust(8, b"\0"), "big", signed=True)
    v = h & _MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


def as_block_event(event: BlockStored | BlockRemoved | AllBlocksCleared) -> KvBlockEvent:
    """One vLLM event as opscale's KvBlockEvent."""
    if isinstance(event, BlockStored):
        parent = None if event.parent_block_hash is None else block_hash(event.parent_block_hash)
        return KvBlockEvent(KvEventKind.STORED, tuple(block_hash(h) for h in event.block_hashes), parent,
                            tuple(event.token_ids), event.block_size, event.medium or "")
    if isinstance(event, BlockRemoved):
        return KvBlockEvent(KvEventKind.REMOVED, tuple(block_hash(h) for h in event.block_hashes),
                            medium=event.medium or "")
    return KvBlockEvent(KvEventKind.CLEARED)


@dataclass(slots=True)
class VllmKvStats:
    """What one reader took and dropped since it started."""

    messages: int = 0  # applied
    events: int = 0  # decoded and kept
    malformed: int = 0  # messages dropped whole: not [topic, seq, payload], or an undecodable payload
    malformed_events: int = 0  # events of a known tag with bad fields: dropped
    unknown_tag: int = 0  # events of a tag this reader does not know: dropped
    gaps: int = 0  # messages lost between two received (seq jumped)
    repeats: int = 0  # messages at the last seq again: dropped
    restarts: int = 0  # the publisher's seq started again


class VllmKvReader:
    """Decodes one vLLM publisher's messages in arrival order; see the module docstring."""

    __slots__ = ("stats", "_last_seq")

    def __init__(self) -> None:
        self.stats = VllmKvStats()
        self._last_seq: int | None = None

    def feed(self, frames: Sequence[bytes]) -> tuple[KvBlockEvent, ...]:
        """The events of one multipart message, in order; () for a message dropped (and counted)."""
        stats = self.stats
        if len(frames) != 3 or len(frames[1]) != 8:
            stats.malformed += 1
            return ()
        seq = int.from_bytes(frames[1], "big", signed=True)
        if seq < 0:  # -1 ends a replay; a live message never carries it
            stats.malformed += 1
            return ()
        try:
            batch = _BATCH.decode(frames[2])
        except (msgspec.DecodeError, msgspec.ValidationError):
            stats.malformed += 1
            return ()
        events: list[KvBlockEvent] = []
        last = self._last_seq
        if last is not None:
            if seq == last:
                stats.repeats += 1
                return ()
            if seq < last:
                stats.restarts += 1
                events.append(KvBlockEvent(KvEventKind.CLEARED))
            elif seq > last + 1:
                stats.gaps += seq - last - 1
        self._last_seq = seq
        stats.messages += 1
        for raw in batch.events:
            try:
                events.append(as_block_event(_EVENT.decode(raw)))
            except (msgspec.DecodeError, msgspec.ValidationError):
                if _known_tag(raw):
                    stats.malformed_events += 1
                else:
                    stats.unknown_tag += 1
        stats.events += len(events)
        return tuple(events)


def _known_tag(raw: msgspec.Raw) -> bool:
    try:
        obj = _ANY.decode(raw)
    except msgspec.DecodeError:
        return False
    return isinstance(obj, list) and bool(obj) and obj[0] in _TAGS
