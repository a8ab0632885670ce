"""The simulated engine's scheduler: what the next general iteration does, decided at a step boundary
as vLLM's chunked-prefill scheduler decides it.

One iteration:
1. every running sequence whose prefill is complete decodes one token; if the KV cache cannot hold
   the step, the most recently admitted running sequences are preempted (recompute: KV freed, back to
   the front of the waiting queue, prompt + generated tokens to prefill again) until it can;
2. running sequences still in prefill take prefill chunks, oldest first, within the token budget
   (max_batched_tokens minus the decode tokens);
3. unless step 1 preempted, waiting requests are admitted first-come first-served while the budget,
   max_num_seqs and the KV cache allow; admission reserves KV blocks for the whole prefill.
A sequence whose prefill completes produces a token at the end of that iteration (the first output
token the first time).

A decode engine's prefilled requests need no prefill: admission reserves their KV and starts the
transfer. A pass that only does that runs no iteration (zero time); prefilled requests arriving at
that very instant join it (`_continue_zero_pass`).

`Scheduler` is a layer of SimEngine (opscale.engine.sim), on top of the decode set
(opscale.engine.decode_run) and the KV accounting (opscale.engine.kv). Planning reads state and never
changes it: a plan (`Step`, `Wait`) is a value that the engine commits at its end. No clock, no I/O.
"""

from __future__ import annotations

import math

from opscale.engine.config import EngineConfig
from opscale.engine.decode_run import DecodeSet
from opscale.engine.sequence import Seq
from opscale.perf.flops import ModelFlops
from opscale.perf.latency import LatencyModel


# A value built per event, as opscale.engine.decode_run.DecodeRun is, for the same reasons.
class Step:
    """One general (mixed) iteration, fully decided at `start_s` and applied at `end_s`."""

    __slots__ = ("start_s", "end_s", "busy_s", "attention", "victims", "admits", "hits", "chunks", "batch",
                 "new_blocks", "prefill_tokens", "cached_tokens", "host_hits")

    def __init__(self, start_s: float, end_s: float, busy_s: float, attention: int, victims: tuple[Seq, ...],
                 admits: tuple[Seq, ...], hits: tuple[int, ...], chunks: tuple[tuple[Seq, int], ...],
                 batch: int, new_blocks: int, prefill_tokens: int, cached_tokens: int,
                 host_hits: tuple[int, ...] = ()) -> None:
        self.start_s = start_s
        self.end_s = end_s
        self.busy_s = busy_s
        self.attention = attention  # (query, key) pairs its attention spans: prefill chunks' and decode contexts'
        self.victims = victims  # most recently admitted first
        # The waiting queue's heads it admits, in order (empty on the lean path, where the admissions
        # are the chunks of sequences not yet admitted).
        self.admits = admits
        self.hits = hits  # cached prefix blocks each admission reuses (empty when caching is off)
        self.chunks = chunks  # prefill chunks: running ones first, then admissions
        self.batch = batch  # decoding sequences after preemption
        self.new_blocks = new_blocks  # KV blocks the decode tokens take
        self.prefill_tokens = prefill_tokens  # prompt tokens the chunks compute (the sum of chunks' n)
        self.cached_tokens = cached_tokens  # prompt tokens the admissions take from the prefix cache (and host tier)
        self.host_hits = host_hits  # blocks each admission loads back from the host tier (empty without one)

    def flops(self, flops: ModelFlops) -> float:
        """Its FLOPs: its decode tokens and prefill chunks through the GEMMs, logits for the decode tokens
        and the prefill's last token (as the roofline counts them), and its attention."""
        prefill = self.prefill_tokens
        return flops.of_work(prefill + self.batch, self.batch + (1 if prefill else 0), self.attention)


class Wait:
    """Nothing to compute until a KV transfer lands at `end_s` (decode role)."""

    __slots__ = ("start_s", "end_s")

    def __init__(self, start_s: float, end_s: float) -> None:
        self.start_s = start_s
        self.end_s = end_s


class Scheduler(DecodeSet):
    """Admission and preemption: the general iteration's plan, and the preemptions it decides.

    `decode_only`: a decode engine, whose requests come prefilled. The common case (no prefix cache, not
    a decode engine) takes a lean path through planning and commits: no prefix to look up, no
    prefilled request to receive.
    """

    def __init__(self, config: EngineConfig, total_blocks: int, latency: LatencyModel, flops: ModelFlops, *,
                 decode_only: bool) -> None:
        super().__init__(config, total_blocks, latency, flops)
        self._max_seqs = config.max_num_seqs
        self._budget = config.max_batched_tokens
        self._lean = self._cache is None and not decode_only
        # The last pass that ran no iteration (KV reservations only): when, and the room it left.
        self._zero_pass_s = -math.inf
        self._zero_room = self._zero_free = 0
        self._continuation: Step | None = None  # the plan that extends that pass, when one does
        self.preemptions = 0

    def _head_admissible(self, batch: int, new_blocks: int) -> bool:
        """Whether the queue's head could be admitted next to a decode step of `batch` sequences that
        takes `new_blocks` KV blocks."""
        waiting = self._waiting
        if not waiting or len(self._running) >= self._max_seqs:
            return False
        head = waiting[0]
        if batch >= self._budget and head.xfer_s is None:
            return False
        blocks = -(-head.target // self._bs)
        if head.hashes:
            blocks -= self._reused_blocks(head, self._hits(head), None)
        return blocks <= self.total_blocks - self._used_blocks - new_blocks

    def _plan_step(self, start_s: float) -> Step:
        """The general iteration starting at `start_s` (see the module docstring)."""
        bs, d = self._bs, self._steps
        free = self.total_blocks - self._used_blocks
        batch = self._dec_n
        new_blocks = self._hist[-d % bs]
        ctx = self._dec_base_sum + batch * (d + 1)
        victims: list[Seq] = []
        if new_blocks > free:
            drops: dict[int, int] = {}  # references to prefix entries the victims so far give up
            for seq in reversed(self._running.values()):
                if seq.xfer_s is not None:
                    continue  # waiting for its KV: not preemptible (vLLM keeps it out of `running`)
                victims.append(seq)
                if seq.decoding:
                    computed = seq.base + d
                    free += -(-computed // bs) - seq.shared
                    batch -= 1
                    ctx -= computed + 1
                    if computed % bs == 0:
                        new_blocks -= 1
                else:
                    free += -(-seq.target // bs) - seq.shared
                if seq.pinned:
                    free += self._entries_freed(seq.pinned, drops)
                if new_blocks <= free:
                    break
        budget = self._budget - batch
        chunks: list[tuple[Seq, int]] = []
        prefill = prefill_ctx = pairs = cached_total = 0
        for seq in self._prefilling.values():
            if budget <= 0:
                break
            if victims and seq in victims:
                continue
            n = min(seq.target - seq.computed, budget)
            chunks.append((seq, n))
            budget -= n
            prefill += n
            prefill_ctx += seq.computed
            pairs += n * seq.computed + n * (n + 1) // 2
        admits: list[Seq] = []
        hits: list[int] = []
        host_hits: list[int] = []
        load_s = 0.0  # copying host-tier blocks back over PCIe, before the iteration's compute
        if not victims and self._lean:
            # Admissions stay in `chunks` only; the commit admits each as it meets it.
            free_now = free - new_blocks
            room = self._max_seqs - len(self._running)
            admitted = 0
            for seq in self._waiting:
                if budget <= 0 or admitted >= room:
                    break
                blocks = -(-seq.target // bs)
                if blocks > free_now:
                    break
                free_now -= blocks
                admitted += 1
                n = min(seq.target, budget)
                chunks.append((seq, n))
                budget -= n
                prefill += n
                pairs += n * (n + 1) // 2
        elif not victims:
            free_now = free - new_blocks
            room = self._max_seqs - len(self._running)
            caching = self._cache is not None
            taken: set[int] | None = None  # evictable entries that admissions of this step pin
            for seq in self._waiting:
                if len(admits) >= room:
                    break
                blocks = -(-seq.target // bs)
                if seq.xfer_s is not None:
                    # A prefilled request only needs room for the KV it is about to receive.
                    if blocks > free_now:
                        break
                    free_now -= blocks
                    admits.append(seq)
                    if caching:
                        hits.append(0)
                        host_hits.append(0)
                    continue
                if budget <= 0:
                    break
                hit = self._hits(seq) if seq.hashes else 0
                if hit:
                    blocks -= self._reused_blocks(seq, hit, taken)
                if blocks > free_now:
                    break
                if hit:
                    if taken is None:
                        taken = set()
                    taken.update(seq.hashes[:hit])
                free_now -= blocks
                admits.append(seq)
                loaded = self._host_hits(seq, hit) if self._host is not None and seq.hashes else 0
                if caching:
                    hits.append(hit)
                    host_hits.append(loaded)
                load_s += loaded * self._host_block_s
                cached = (hit + loaded) * self._pb_tokens
                n = min(seq.target - cached, budget)
                chunks.append((seq, n))
                budget -= n
                prefill += n
                prefill_ctx += cached
                cached_total += cached
                pairs += n * cached + n * (n + 1) // 2
        if prefill:
            cost = self.latency.iteration_cost(prefill, prefill_ctx, batch, ctx, prefill_attn_pairs=pairs)
            time_s, busy_s = cost.time_s, cost.busy_s
            attention = pairs + ctx
        elif batch or victims:
            fixed_s, per_ctx_s, busy_fixed_s, busy_per_ctx_s = self._decode_coeffs(batch)
            time_s = fixed_s + per_ctx_s * ctx
            busy_s = busy_fixed_s + busy_per_ctx_s * ctx
            attention = ctx
        else:
            time_s = busy_s = 0.0  # it only reserves KV for prefilled requests: no iteration runs
            attention = 0
        return Step(start_s, start_s + time_s + load_s, busy_s, attention, tuple(victims),
                    tuple(admits) if admits else (), tuple(hits) if hits else (), tuple(chunks),
                    batch, new_blocks, prefill, cached_total, tuple(host_hits) if load_s else ())

    def _continue_zero_pass(self, start_s: float) -> Step | None:
        """Prefilled requests that arrive at the instant of a zero-time admission pass join that pass.

        A pass that only reserves KV for prefilled requests runs no iteration, so it is committed at the
        very instant it is decided, before any other arrival at that instant is known. The scheduler
        decides once per instant with everything that has arrived by then: a newcomer at the same
        instant is admitted as if it had been in that pass (no decode step in between), with the room
        that pass had left: sequences and KV blocks released by joins since then are not seen."""
        free_now, room = self._zero_free, self._zero_room
        admits: list[Seq] = []
        for seq in self._waiting:
            if len(admits) >= room or seq.xfer_s is None:
                break
            blocks = -(-seq.target // self._bs)
            if blocks > free_now:
                break
            free_now -= blocks
            admits.append(seq)
        if not admits:
            return None
        hits = (0,) * len(admits) if self._cache is not None else ()
        self._continuation = Step(start_s, start_s, 0.0, 0, (), tuple(admits), hits, (), 0, 0, 0, 0)
        return self._continuation

    def _note_zero_pass(self, step: Step) -> None:
        """A zero-time `step` is being committed (before its admissions): the room its pass leaves."""
        if step is not self._continuation:
            self._zero_room = self._max_seqs - len(self._running)
            self._zero_free = self.total_blocks - self._used_blocks
        self._zero_pass_s = step.end_s
        self._zero_room -= len(step.admits)
        self._zero_free -= sum(-(-seq.target // self._bs) for seq in step.admits)

    def _preempt(self, seq: Seq) -> None:
        """Recompute preemption: `seq` frees its KV and is to prefill its prompt and output so far again."""
        if seq.decoding:
            self._leave_decode(seq)
        else:
            del self._prefilling[seq.admit_no]
            self._release(seq, seq.target)
        del self._running[seq.admit_no]
        seq.admit_no = -1
        seq.computed = 0
        seq.target = seq.prompt + seq.generated
        self.preemptions += 1
