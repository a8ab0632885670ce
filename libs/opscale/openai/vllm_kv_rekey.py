"""vLLM's KV events renamed into opscale's block hashes, one vLLM server (one instance) at a time.

vLLM names a block by a hash the router cannot compute (Python's seeded hash() or sha256 over pickled
tuples, with LoRA and multimodal keys folded in), but its BlockStored events carry the blocks' token ids.
So the node-agent renames each stored block into opscale's hash of the same tokens
(opscale.openai.prefix_blocks.token_block_hashes, chained from the opscale hash of the block's parent),
and the router, hashing a tokenized prompt the same way, finds it in its index.

Per instance, a map vLLM hash -> opscale hash remembers what was renamed, for the events that name blocks
by vLLM's hash only: a stored block's parent, and removals. Both names may stand for several blocks, and
the router is told of a removal only when the last of them goes: vLLM does not deduplicate its cache
(two requests that fill the same block at once each cache a copy, stored and removed one by one), and
one opscale hash stands for every vLLM hash of the same tokens (the same tokens under two LoRAs or cache
salts, or two images behind the same placeholder tokens).

Dropped and counted, never raised (`stats`):
- a store whose parent this map does not hold (`unknown_parent`: events were lost, or the parent was
  refused): its tokens cannot be chained, so it is not renamed; a store whose parent is None is a root;
- a store of another block size than the router hashes with (`block_size_mismatch`), or whose token ids
  do not fill its blocks exactly (`malformed`);
- a removal of a block the map does not hold (`unknown_removal`);
- blocks past the map's bound (`overflow`): vLLM's cache holds far fewer blocks than the bound, so this
  only happens when removals were lost; they are not renamed, so their children are dropped too.
AllBlocksCleared (and a publisher restart, which the reader turns into one) clears the map.

Events of another tier than the GPU (a `medium` other than "" or "GPU") are renamed the same way, so the
router sees and discards them as it does any other. Renamed events carry no token ids: the router needs
none, and they would multiply the bus's traffic. No I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from opscale.model.kv_events import KvBlockEvent, KvEventKind
from opscale.openai.prefix_blocks import token_block_hashes


@dataclass(slots=True)
class KvRekeyStats:
    """What one instance's renamer renamed and dropped since it started."""

    stored: int = 0  # blocks renamed
    removed: int = 0  # blocks removed (vLLM's); the router hears of an opscale block when its last goes
    cleared: int = 0
    unknown_parent: int = 0  # stores whose parent is not in the map: dropped
    unknown_removal: int = 0  # removed blocks not in the map: dropped
    block_size_mismatch: int = 0  # stores of another block size: dropped
    malformed: int = 0  # stores whose token ids do not fill their blocks: dropped
    overflow: int = 0  # blocks refused because the map is full


class VllmKvRekeyer:
    """Renames one vLLM server's events (see the module docstring). `block_size`: the tokens a block the
    router hashes (engine.prefix_block_tokens; vLLM's --block-size must equal it); `max_blocks`: the
    bound of the map."""

    __slots__ = ("block_size", "max_blocks", "stats", "_opscale_of", "_copies", "_count")

    def __init__(self, block_size: int, max_blocks: int = 1_000_000) -> None:
        if block_size < 1 or max_blocks < 1:
            raise ValueError(f"vLLM KV renamer: block_size ({block_size}) and max_blocks ({max_blocks}) must be >= 1")
        self.block_size = block_size
        self.max_blocks = max_blocks
        self.stats = KvRekeyStats()
        self._opscale_of: dict[int, int] = {}  # vLLM hash -> opscale hash
        self._copies: dict[int, int] = {}  # vLLM hash -> blocks held under it, where more than one
        self._count: dict[int, int] = {}  # opscale hash -> vLLM hashes that stand for it

    def __len__(self) -> int:
        return len(self._opscale_of)

    def rekey(self, events: Iterable[KvBlockEvent]) -> list[KvBlockEvent]:
        """The events in opscale's hashes, in order; dropped ones are counted."""
        out: list[KvBlockEvent] = []
        for event in events:
            if event.kind is KvEventKind.STORED:
                out.extend(self._stored(event))
            elif event.kind is KvEventKind.REMOVED:
                out.extend(self._removed(event))
            else:
                self._opscale_of.clear()
                self._copies.clear()
                self._count.clear()
                self.stats.cleared += 1
                out.append(event)
        return out

    def _stored(self, event: KvBlockEvent) -> list[KvBlockEvent]:
        stats = self.stats
        vllm_hashes = event.block_hashes
        if event.block_size != self.block_size:
            stats.block_size_mismatch += 1
            return []
        if not vllm_hashes or len(event.token_ids) != len(vllm_hashes) * self.block_size:
            stats.malformed += 1
            return []
        parent: int | None = None
        if event.parent_block_hash is not None:
            parent = self._opscale_of.get(event.parent_block_hash)
            if parent is None:
                stats.unknown_parent += 1
                return []
        opscale_of, copies, count = self._opscale_of, self._copies, self._count
        # Only as many blocks as the map has room for are hashed: a flood costs no more than the bound.
        room = self.max_blocks - len(opscale_of) + sum(1 for h in vllm_hashes if h in opscale_of)
        hashes = token_block_hashes(event.token_ids, self.block_size, parent, limit=room)
        if len(hashes) < len(vllm_hashes):
            stats.overflow += len(vllm_hashes) - len(hashes)
            if not hashes:
                return []
        gone: list[int] = []
        for vllm_hash, ours in zip(vllm_hashes, hashes, strict=False):
            before = opscale_of.get(vllm_hash)
            if before == ours:
                # vLLM does not deduplicate: two requests that fill the same block at once each cache one,
                # and each is removed on its own
                copies[vllm_hash] = copies.get(vllm_hash, 1) + 1
                continue
            if before is not None:  # one vLLM hash over other tokens (a collision): the new block wins
                copies.pop(vllm_hash, None)
                if self._release(before):
                    gone.append(before)
            opscale_of[vllm_hash] = ours
            count[ours] = count.get(ours, 0) + 1
        stats.stored += len(hashes)
        out = [KvBlockEvent(KvEventKind.REMOVED, tuple(gone), medium=event.medium)] if gone else []
        out.append(KvBlockEvent(KvEventKind.STORED, hashes, parent, (), self.block_size, event.medium))
        return out

    def _removed(self, event: KvBlockEvent) -> list[KvBlockEvent]:
        opscale_of, copies = self._opscale_of, self._copies
        gone: list[int] = []
        for vllm_hash in event.block_hashes:
            ours = opscale_of.get(vllm_hash)
            if ours is None:
                self.stats.unknown_removal += 1
                continue
            self.stats.removed += 1
            held = copies.get(vllm_hash)
            if held is not None:  # another block of this hash stays
                if held > 2:
                    copies[vllm_hash] = held - 1
                else:
                    del copies[vllm_hash]
                continue
            del opscale_of[vllm_hash]
            if self._release(ours):
                gone.append(ours)
        return [KvBlockEvent(KvEventKind.REMOVED, tuple(gone), medium=event.medium)] if gone else []

    def _release(self, ours: int) -> bool:
        """One vLLM hash of `ours` went; True when it was the last."""
        left = self._count[ours] - 1
        if left:
            self._count[ours] = left
            return False
        del self._count[ours]
        return True
