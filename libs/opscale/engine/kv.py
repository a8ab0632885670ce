"""KV and admission accounting of the simulated engine: which requests it holds and where each stands
(waiting, prefilling, awaiting its KV, decoding), and which KV blocks each holds, prefix-cache entries
included.

Paged KV: a sequence holding x tokens needs ceil(x / block_size) blocks. Admission reserves the blocks
of its whole prefill (prompt, plus what it had generated before a preemption); decode growth takes a
block whenever a sequence crosses a block boundary (counted by opscale.engine.decode_run); a sequence
that leaves frees what it owns.

Prefix caching (`EngineConfig.enable_prefix_caching`): the KV of every full prompt block a sequence
computes is registered under its prefix hash (see opscale.engine.prefix_cache). At admission, the
leading cached blocks of a prompt are reused: they are not prefilled (the prefill starts after them
and attends over them) but still occupy KV, shared by every sequence using them. At least one prompt
token is always computed, for its logits. Unused cached blocks fill the free KV space and are evicted,
least recently released first, whenever running sequences need it, so caching never delays a request.

This is the base layer of SimEngine (opscale.engine.sim): it keeps the counts and moves blocks between
owners when told to; which requests to admit or preempt, and when, is the scheduler's decision
(opscale.engine.scheduler). No clock, no I/O.
"""

from __future__ import annotations

from collections import deque

from opscale.engine.config import EngineConfig
from opscale.engine.host_tier import HostTier
from opscale.engine.kv_events import CPU, AllBlocksCleared, BlockRemoved, BlockStored, KvCacheEvent
from opscale.engine.prefix_cache import PrefixCache
from opscale.engine.sequence import Seq
from opscale.model import Request


class KvAccounting:
    """The request tables and KV block counts of an engine with `total_blocks` KV blocks.

    `_used_blocks` counts the blocks owned by running sequences plus those of pinned prefix-cache
    entries; cached prefixes nobody uses are free space. `prefix_hit_tokens` and
    `prefix_queried_tokens` (prompt tokens admitted for prefill, recomputation included) count the
    cache's use.
    """

    def __init__(self, config: EngineConfig, total_blocks: int) -> None:
        self.total_blocks = total_blocks
        self._bs = config.block_size
        self._used_blocks = 0  # owned by running sequences, plus pinned prefix-cache entries
        self._seqs: dict[str, Seq] = {}  # every request in the engine, by id
        self._waiting: deque[Seq] = deque()
        self._running: dict[int, Seq] = {}  # by admission number: insertion order = admission order
        self._prefilling: dict[int, Seq] = {}  # the running ones whose prefill is incomplete
        self._transferring: dict[int, Seq] = {}  # the running ones whose KV has not landed (decode role)
        self._admissions = 0
        self._cache: PrefixCache | None = None
        self._pb_tokens = config.prefix_block_tokens
        self._pb_blocks = config.prefix_block_tokens // self._bs
        # KV events (EngineConfig.kv_events): stores are recorded as they happen, evictions by the cache.
        self._kv_events: list[KvCacheEvent] | None = [] if config.kv_events else None
        if config.enable_prefix_caching:
            self._cache = PrefixCache(config.prefix_block_tokens, self._pb_blocks,
                                      track_evictions=config.kv_events or config.host_kv_cache_gb > 0)
        # The host-memory tier (EngineConfig.host_kv_cache_gb), set up by the engine, which knows the
        # model's KV bytes: blocks it holds and the seconds one takes to load back over PCIe.
        self._host: HostTier | None = None
        self._host_block_s = 0.0
        self.prefix_hit_tokens = 0  # from the GPU cache
        self.prefix_host_hit_tokens = 0  # loaded back from the host tier
        self.prefix_queried_tokens = 0

    @property
    def kv_used_frac(self) -> float:
        """KV blocks held by running sequences (cached prefixes nobody uses are free space)."""
        return self._used_blocks / self.total_blocks

    @property
    def prefix_hit_rate(self) -> float:
        """Cached prompt tokens over prompt tokens admitted for prefill; 0 before any admission."""
        return self.prefix_hit_tokens / self.prefix_queried_tokens if self.prefix_queried_tokens else 0.0

    @property
    def prefix_cached_blocks(self) -> int:
        """Prefix blocks in the cache, used or not."""
        return len(self._cache) if self._cache is not None else 0

    def _usable_hashes(self, request: Request) -> tuple[int, ...]:
        """The prefix hashes of the request's full prompt blocks, up to the first repeat (a block cannot
        be its own prefix twice; a malformed trace must not make one entry count twice)."""
        hashes = request.prefix_hashes[:request.prompt_tokens // self._pb_tokens]
        if len(set(hashes)) < len(hashes):
            seen: set[int] = set()
            for i, block_hash in enumerate(hashes):
                if block_hash in seen:
                    return hashes[:i]
                seen.add(block_hash)
        return hashes

    def take_kv_events(self) -> list[KvCacheEvent]:
        """The KV events since the last call, in order (empty unless EngineConfig.kv_events): what a
        node-agent forwards to the routers, batched."""
        events = self._kv_events
        if not events and (self._cache is None or not self._cache.evicted):
            return []
        self._flush_evictions()
        assert events is not None  # evictions are tracked only with events on
        self._kv_events = []
        return events

    def _evict(self) -> None:
        """Evict unused prefix entries until the running sequences' KV fits; with a host tier, what
        leaves the GPU is kept in host memory (what that pushes out of host memory is gone)."""
        cache = self._cache
        assert cache is not None
        evicted = cache.evicted
        if evicted is None:
            cache.evict_to(self.total_blocks - self._used_blocks)
            return
        before = len(evicted)
        cache.evict_to(self.total_blocks - self._used_blocks)
        host = self._host
        if host is None or len(evicted) == before:
            return
        moved = evicted[before:]
        events = self._kv_events
        if events is None:
            evicted.clear()  # kept only to move them here
        else:
            self._flush_evictions()
        dropped: list[int] = []
        for block_hash in moved:
            dropped += host.put(block_hash)
        if events is not None:
            events.append(BlockStored(tuple(moved), None, (), self._pb_tokens, CPU))
            if dropped:
                events.append(BlockRemoved(tuple(dropped), CPU))

    def _host_hits(self, seq: Seq, hit: int) -> int:
        """Prompt blocks of `seq` after its `hit` GPU-cached ones that the host tier holds (at least one
        prompt token is left to compute)."""
        host = self._host
        assert host is not None
        return host.run_from(seq.hashes, hit, min(len(seq.hashes), (seq.target - 1) // self._pb_tokens))

    def _flush_evictions(self) -> None:
        """Turn the cache's evictions so far into one BlockRemoved, keeping the events in order."""
        cache, events = self._cache, self._kv_events
        if cache is not None and cache.evicted and events is not None:
            events.append(BlockRemoved(tuple(cache.evicted)))
            cache.evicted.clear()

    # --- what an admission would take (reads state, never changes it) --------------------------------

    def _hits(self, seq: Seq) -> int:
        """Leading prefix blocks of `seq` in the cache; at least one prompt token is left to compute."""
        cache = self._cache
        assert cache is not None  # only sequences with hashes ask, and they exist only with a cache
        return cache.lookup(seq.hashes, min(len(seq.hashes), (seq.target - 1) // self._pb_tokens))

    def _reused_blocks(self, seq: Seq, hit: int, taken: set[int] | None) -> int:
        """KV blocks an admission of `seq` with `hit` cached blocks need not find free: those of entries
        already pinned (by running sequences or, `taken`, by admissions earlier in the same step). A hit
        on an evictable entry still takes its blocks out of the free space."""
        cache = self._cache
        assert cache is not None
        reused = 0
        for block_hash in seq.hashes[:hit]:
            if cache.is_pinned(block_hash) or (taken is not None and block_hash in taken):
                reused += self._pb_blocks
        return reused

    def _entries_freed(self, pinned: list[int], drops: dict[int, int]) -> int:
        """KV blocks that come free when a victim lets go of `pinned`, given the references that earlier
        victims of the same step gave up (`drops`, updated)."""
        cache = self._cache
        assert cache is not None
        freed = 0
        for block_hash in pinned:
            left = drops.get(block_hash, cache.references(block_hash)) - 1
            drops[block_hash] = left
            if not left:
                freed += self._pb_blocks
        return freed

    # --- moving blocks (the scheduler's decisions, applied) ------------------------------------------

    def _admit(self, admits: tuple[Seq, ...], hits: tuple[int, ...], host_hits: tuple[int, ...],
               start_s: float) -> None:
        """Admit the queue's heads `admits` at `start_s`, `hits` cached prefix blocks each (empty when
        caching is off) and `host_hits` blocks after those loaded back from the host tier (empty without
        one): KV reserved, cached prefix blocks pinned, transfers begun."""
        bs, waiting, cache = self._bs, self._waiting, self._cache
        for i, seq in enumerate(admits):
            waiting.popleft()  # admissions are the queue's heads, in order
            self._admissions += 1
            seq.admit_no = self._admissions
            self._running[seq.admit_no] = seq
            blocks = -(-seq.target // bs)
            if seq.xfer_s is not None:
                seq.kv_at_s = start_s + seq.xfer_s
                self._transferring[seq.admit_no] = seq
                self._used_blocks += blocks
                continue
            self._prefilling[seq.admit_no] = seq
            if cache is not None:
                self.prefix_queried_tokens += seq.target
                hit = hits[i]
                seq.reg = hit  # blocks before it are pinned; those after it are offered as computed
                if hit:
                    pinned = list(seq.hashes[:hit])
                    for block_hash in pinned:
                        blocks += cache.pin(block_hash)  # an evictable entry's blocks become used
                    seq.pinned = pinned
                    seq.shared = hit * self._pb_blocks
                    seq.computed = hit * self._pb_tokens
                    blocks -= seq.shared
                    self.prefix_hit_tokens += seq.computed
                if host_hits and host_hits[i]:
                    # Loaded into blocks of its own, as if computed: registered in the GPU cache at commit.
                    loaded = host_hits[i]
                    assert self._host is not None
                    self._host.touch(seq.hashes[hit:hit + loaded])
                    seq.computed = (hit + loaded) * self._pb_tokens
                    self.prefix_host_hit_tokens += loaded * self._pb_tokens
            self._used_blocks += blocks

    def _register(self, seq: Seq) -> None:
        """Offer the cache the full prompt blocks `seq` has computed since last time."""
        cache = self._cache
        assert cache is not None
        full = min(len(seq.hashes), seq.computed // self._pb_tokens)
        events = self._kv_events
        stored: list[int] | None = [] if events is not None else None  # positions in the prompt
        while seq.reg < full:
            block_hash = seq.hashes[seq.reg]
            seq.reg += 1
            if cache.register(block_hash):
                # Its blocks change owner, from the sequence to the entry: used blocks are unchanged.
                if seq.pinned is None:
                    seq.pinned = []
                seq.pinned.append(block_hash)
                seq.shared += self._pb_blocks
                if stored is not None:
                    stored.append(seq.reg - 1)
        if stored:
            self._record_stored(seq.hashes, stored)

    def _record_stored(self, hashes: tuple[int, ...], positions: list[int]) -> None:
        """One BlockStored per run of consecutive prompt blocks newly cached (a block cached already by
        another sequence splits the run), each naming the block before it as its parent, as vLLM does."""
        events = self._kv_events
        assert events is not None
        self._flush_evictions()  # an eviction before these stores reaches the router before them
        start = 0
        for k in range(1, len(positions) + 1):
            if k == len(positions) or positions[k] != positions[k - 1] + 1:
                first = positions[start]
                events.append(BlockStored(tuple(hashes[p] for p in positions[start:k]),
                                          hashes[first - 1] if first else None, (), self._pb_tokens))
                start = k

    def _release(self, seq: Seq, held_tokens: int) -> None:
        """Free the KV blocks `seq` owns for `held_tokens` tokens and let go of its prefix entries."""
        self._used_blocks -= -(-held_tokens // self._bs) - seq.shared
        if seq.pinned:
            self._unpin(seq)

    def _forget_all(self) -> None:
        """Drop every request and cached prefix (the engine stopped): all KV is free."""
        self._seqs.clear()
        self._waiting.clear()
        self._running.clear()
        self._prefilling.clear()
        self._transferring.clear()
        if self._cache is not None:
            if self._kv_events is not None:
                self._flush_evictions()
                self._kv_events.append(AllBlocksCleared())
            self._cache.clear()
            if self._host is not None:
                self._host.clear()  # the engine's process held it
        self._used_blocks = 0

    def _unpin(self, seq: Seq) -> None:
        """Let go of the prefix entries `seq` uses; those nobody else uses become evictable free space."""
        cache = self._cache
        assert cache is not None and seq.pinned is not None
        self._used_blocks -= cache.release(seq.pinned)
        seq.pinned = None
        seq.shared = 0
        seq.reg = 0
