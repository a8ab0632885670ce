"""The router's global prefix index: per model, which instances hold which KV blocks, by block hash.

Block hashes are chained from the prompt's start (opscale's hashes of token ids or text,
opscale.openai.prefix_blocks, in which the node-agents rename vLLM's blocks; or a trace's hash ids), so
a hash names its whole prefix and the index can be a flat map, hash -> instances holding it (the radix tree of Dynamo's
KV router, flattened: a tree path and a chain of hashes name the same thing). A request's match on an
instance is the number of its leading hashes that instance holds, found by walking the request's
hashes and intersecting holder sets until a miss.

Two sources feed it:
- the engines' KV events (opscale.services.events.KvEventBatch): blocks stored, removed, all cleared;
- the router's own dispatches, as llm-d's approximate prefix scorer does: the blocks of a request are
  taken to be on the instance it was routed to. Events confirm or remove them; an instance that sends
  no events is tracked from dispatches alone.

Only blocks in GPU memory are indexed; events of another tier (medium "CPU": a host-memory tier) are
counted and left out.

Bounded: at most `max_blocks` (hash, instance) entries over all models, and `max_blocks_per_instance`
per instance, whose least recently stored or routed entries make way for new ones. A store that would
grow the index past `max_blocks` is dropped. An instance that leaves is forgotten. Nothing an engine
sends can crash it: a malformed event, an unknown instance, a stale batch, a removal of a block the
instance does not hold and a flood past the bound are each counted (`stats`) and dropped.

No clock, no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from opscale.model.kv_events import KvBlockEvent, KvEventBatch, KvEventKind

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_GPU_MEDIA = frozenset({"GPU", ""})  # "": a sender that names no tier (vLLM's events before it had one)


@dataclass(slots=True)
class KvIndexStats:
    """What the index applied and what it refused, since it started."""

    batches: int = 0  # applied
    stored: int = 0  # (hash, instance) entries added by events
    removed: int = 0
    routed: int = 0  # entries added or refreshed by dispatches
    malformed: int = 0  # events (or batches) that do not make sense: dropped
    unknown_instance: int = 0  # batches of an instance the router does not know: dropped
    stale: int = 0  # batches at or before the newest seq applied for that instance: dropped
    out_of_order: int = 0  # removals of a block the instance does not hold: ignored
    overflow: int = 0  # stores refused because the index is full
    evicted: int = 0  # entries an instance's bound pushed out (oldest first)
    other_medium: int = 0  # events of a tier other than the GPU (a host-memory tier): not indexed


def _valid_hash(h: object) -> bool:
    return type(h) is int and _I64_MIN <= h <= _I64_MAX


class PrefixIndex:
    """See the module docstring."""

    __slots__ = ("max_blocks", "max_blocks_per_instance", "stats", "_holders", "_held", "_model_of", "_seq", "_size")

    def __init__(self, max_blocks: int = 1_000_000, max_blocks_per_instance: int = 200_000) -> None:
        if max_blocks < 1 or max_blocks_per_instance < 1:
            raise ValueError(f"prefix index: max_blocks ({max_blocks}) and max_blocks_per_instance "
                             f"({max_blocks_per_instance}) must be >= 1")
        self.max_blocks = max_blocks
        self.max_blocks_per_instance = max_blocks_per_instance
        self.stats = KvIndexStats()
        self._holders: dict[str, dict[int, set[str]]] = {}  # model -> hash -> instances holding it
        self._held: dict[str, OrderedDict[int, None]] = {}  # instance -> its hashes, least recent first
        self._model_of: dict[str, str] = {}
        self._seq: dict[str, int] = {}  # instance -> newest batch applied
        self._size = 0  # (hash, instance) entries

    def __len__(self) -> int:
        return self._size

    def blocks_of(self, instance_id: str) -> int:
        held = self._held.get(instance_id)
        return len(held) if held is not None else 0

    # -- updates ------------------------------------------------------------------------------

    def apply(self, batch: KvEventBatch, known: bool) -> None:
        """Apply one instance's batch of KV events; `known`: the router knows that instance."""
        stats = self.stats
        instance_id, model = batch.instance_id, batch.model
        if not (isinstance(instance_id, str) and instance_id and isinstance(model, str) and model
                and type(batch.seq) is int and isinstance(batch.events, tuple)):
            stats.malformed += 1
            return
        if not known:
            stats.unknown_instance += 1
            return
        if self._model_of.get(instance_id, model) != model:
            stats.malformed += 1  # an instance serves one model
            return
        if batch.seq <= self._seq.get(instance_id, 0):
            stats.stale += 1  # redelivered or overtaken: its events are already reflected, or superseded
            return
        self._seq[instance_id] = batch.seq
        stats.batches += 1
        for event in batch.events:
            if not isinstance(event, KvBlockEvent):
                stats.malformed += 1
                continue
            kind = event.kind
            hashes = event.block_hashes
            if kind is KvEventKind.CLEARED:
                self.forget(instance_id, keep_seq=True)
                continue
            medium = event.medium
            if not isinstance(medium, str):
                stats.malformed += 1
                continue
            if medium not in _GPU_MEDIA:
                # Only GPU-resident blocks are indexed: a host-tier block is no prefill skipped for free
                # (it is loaded over PCIe), and one index of both tiers would lose a block held in both.
                stats.other_medium += 1
                continue
            if not isinstance(hashes, tuple) or not hashes or not all(_valid_hash(h) for h in hashes):
                stats.malformed += 1
                continue
            if kind is KvEventKind.STORED:
                stats.stored += self._add(model, instance_id, hashes, refuse_over=True)
            elif kind is KvEventKind.REMOVED:
                self._remove(model, instance_id, hashes)
            else:
                stats.malformed += 1

    def note_routed(self, model: str, instance_id: str, hashes: Sequence[int]) -> None:
        """The router sent a request with these prefix hashes to `instance_id`: expect them there."""
        if hashes:
            self.stats.routed += self._add(model, instance_id, hashes, refuse_over=False)

    def forget(self, instance_id: str, keep_seq: bool = False) -> None:
        """Drop every entry of `instance_id` (it left, or cleared its cache)."""
        held = self._held.pop(instance_id, None)
        model = self._model_of.get(instance_id)
        if not keep_seq:
            self._model_of.pop(instance_id, None)
            self._seq.pop(instance_id, None)
        if held is None or model is None:
            return
        holders = self._holders.get(model, {})
        for h in held:
            owners = holders.get(h)
            if owners is not None:
                owners.discard(instance_id)
                if not owners:
                    del holders[h]
        self._size -= len(held)

    def _add(self, model: str, instance_id: str, hashes: Sequence[int], refuse_over: bool) -> int:
        """Add (or refresh) entries; returns how many were new. With `refuse_over` (events) a new entry
        past max_blocks is refused and counted; dispatches never grow the index past it either."""
        self._model_of.setdefault(instance_id, model)
        holders = self._holders.get(model)
        if holders is None:
            holders = self._holders[model] = {}
        held = self._held.get(instance_id)
        if held is None:
            held = self._held[instance_id] = OrderedDict()
        added = 0
        cap = self.max_blocks_per_instance
        for h in hashes:
            if h in held:
                held.move_to_end(h)
                continue
            if self._size >= self.max_blocks:
                if refuse_over:
                    self.stats.overflow += 1
                continue
            if len(held) >= cap:  # this instance's oldest entry makes way
                old, _ = held.popitem(last=False)
                owners = holders.get(old)
                if owners is not None:
                    owners.discard(instance_id)
                    if not owners:
                        del holders[old]
                self._size -= 1
                self.stats.evicted += 1
            held[h] = None
            owners = holders.get(h)
            if owners is None:
                holders[h] = {instance_id}
            else:
                owners.add(instance_id)
            self._size += 1
            added += 1
        return added

    def _remove(self, model: str, instance_id: str, hashes: Sequence[int]) -> None:
        held = self._held.get(instance_id)
        holders = self._holders.get(model, {})
        for h in hashes:
            if held is None or h not in held:
                self.stats.out_of_order += 1  # never stored, or removed twice
                continue
            del held[h]
            owners = holders[h]
            owners.discard(instance_id)
            if not owners:
                del holders[h]
            self._size -= 1
            self.stats.removed += 1

    # -- queries ------------------------------------------------------------------------------

    def match(self, model: str, hashes: Sequence[int]) -> list[tuple[int, set[str]]]:
        """The instances holding a leading run of `hashes`, grouped by its length: [(blocks, instances)],
        shortest first; an instance appears in one group only, its longest run."""
        holders = self._holders.get(model)
        if not holders or not hashes:
            return []
        active = holders.get(hashes[0])
        if not active:
            return []
        groups: list[tuple[int, set[str]]] = []
        depth = 1
        for h in hashes[1:]:
            owners = holders.get(h)
            if not owners:
                break
            if not active <= owners:
                left = active - owners
                groups.append((depth, left))
                active = active & owners
                if not active:
                    return groups
            depth += 1
        groups.append((depth, active))
        return groups

    def matched_blocks(self, model: str, hashes: Sequence[int]) -> dict[str, int]:
        """Instance -> leading blocks of `hashes` it holds (those holding none are absent)."""
        return {i: depth for depth, members in self.match(model, hashes) for i in members}
