"""The closed-form decode run of the simulated engine, and the lazily advanced decode set it runs over.

Event compression: when no sequence needs prefill work, membership of the batch can only change at
the next completion, KV exhaustion or KV arrival, so the engine computes k, the number of decode steps
until then, and prices the whole run in closed form (`DecodeRun`): a decode step over contexts totalling
S costs fixed + c*S and S grows by the batch size each step, so k steps cost
k*(fixed + c*S0) + c*batch*k*(k-1)/2. The per-sequence counters advance lazily (a global decode-step
counter), KV growth is counted from a histogram of context lengths modulo the block size, and
completions come from a heap (`DecodeSet`): a run costs O(block_size + log batch), not O(batch * k). A
request submitted during a run cuts it at the first step boundary at or after its arrival, where it
joins.

`DecodeSet` is a layer of SimEngine (opscale.engine.sim), on top of the KV accounting
(opscale.engine.kv): it owns the decode set's counters and moves sequences in and out of it; what to
run, and when, is decided above it. No clock, no I/O.
"""

from __future__ import annotations

import heapq
import math

from opscale.engine.config import EngineConfig
from opscale.engine.kv import KvAccounting
from opscale.engine.sequence import Seq
from opscale.perf.flops import ModelFlops
from opscale.perf.latency import LatencyModel


# The plans are values, never changed once made, and the engine builds one or two for every event it
# runs. So they are plain slotted classes with their __init__ written out rather than dataclasses: a
# frozen dataclass's __init__ sets each field through object.__setattr__ (about four times as slow to
# build), and the compiled build (opscale._native_modules) compiles a written __init__ but leaves the
# one a dataclass generates at import time interpreted, which makes a plan slower to build there than
# in plain Python. Nothing compares or prints plans, so nothing else of a dataclass is missed.
class DecodeRun:
    """k decode steps of a fixed batch, starting at `start_s` (nothing mutated until commit)."""

    __slots__ = ("start_s", "end_s", "k", "batch", "ctx0", "fixed_s", "per_ctx_s", "busy_fixed_s",
                 "busy_per_ctx_s")

    def __init__(self, start_s: float, end_s: float, k: int, batch: int, ctx0: int, fixed_s: float,
                 per_ctx_s: float, busy_fixed_s: float, busy_per_ctx_s: float) -> None:
        self.start_s = start_s
        self.end_s = end_s
        self.k = k
        self.batch = batch
        self.ctx0 = ctx0  # total KV context of the batch at the first step, sum of (computed + 1)
        self.fixed_s = fixed_s
        self.per_ctx_s = per_ctx_s
        self.busy_fixed_s = busy_fixed_s
        self.busy_per_ctx_s = busy_per_ctx_s

    def elapsed_s(self, steps: int) -> float:
        """Time of the first `steps` steps: steps*(fixed + c*S0) + c*batch*steps*(steps-1)/2."""
        return steps * self.fixed_s + self.per_ctx_s * (steps * self.ctx0 + self.batch * steps * (steps - 1) / 2)

    def busy_s(self, steps: int) -> float:
        return steps * self.busy_fixed_s + self.busy_per_ctx_s * (
            steps * self.ctx0 + self.batch * steps * (steps - 1) / 2)

    def flops(self, steps: int, flops: ModelFlops) -> float:
        """FLOPs of the first `steps` steps: batch*steps decode tokens, attending over the context summed
        over the steps (it grows by the batch each step, as in `elapsed_s`)."""
        tokens = self.batch * steps
        return flops.of_work(tokens, tokens, steps * self.ctx0 + self.batch * steps * (steps - 1) / 2)

    def cut(self, steps: int) -> DecodeRun:
        """The same run stopped after its first `steps` steps."""
        return DecodeRun(self.start_s, self.start_s + self.elapsed_s(steps), steps, self.batch, self.ctx0,
                         self.fixed_s, self.per_ctx_s, self.busy_fixed_s, self.busy_per_ctx_s)

    def steps_by(self, now_s: float) -> int:
        """The fewest steps whose end is at or after `now_s` (0 when now_s <= start): where a request
        arriving at now_s can join. Inverts the quadratic, then corrects for rounding."""
        dt = now_s - self.start_s
        if dt <= 0:
            return 0
        a = self.per_ctx_s * self.batch / 2
        b = self.fixed_s + self.per_ctx_s * self.ctx0 - a
        guess = dt / b if a <= 0 else (-b + math.sqrt(b * b + 4 * a * dt)) / (2 * a)
        k = self.k
        m = min(k, max(0, math.ceil(guess) - 1))
        # elapsed_s(m) written out (the same expression, so the same rounding): this runs per arrival.
        start, fixed_s, per_ctx_s, ctx0, batch = self.start_s, self.fixed_s, self.per_ctx_s, self.ctx0, self.batch
        while m < k and start + (m * fixed_s + per_ctx_s * (m * ctx0 + batch * m * (m - 1) / 2)) < now_s:
            m += 1
        while m > 0:
            j = m - 1
            if start + (j * fixed_s + per_ctx_s * (j * ctx0 + batch * j * (j - 1) / 2)) < now_s:
                break
            m = j
        return m


class DecodeSet(KvAccounting):
    """The sequences whose prefill is complete and whose KV is in place, decoding one token a step.

    Kept lazily: `_steps` is D, the decode steps the engine has taken; a decoding sequence stores
    `base` and `gbase` instead of its counters (computed = base + D, generated = gbase + D), and the
    set keeps running sums over them, a histogram of base mod block_size (which sequences take a new
    KV block at which step) and a heap of finishing steps.
    """

    def __init__(self, config: EngineConfig, total_blocks: int, latency: LatencyModel, flops: ModelFlops) -> None:
        super().__init__(config, total_blocks)
        self.latency = latency
        self.flops_model = flops
        self._max_run = config.max_run_steps
        self._steps = 0  # D: decode steps taken by the engine so far
        self._dec_n = 0
        self._dec_base_sum = 0  # sum of base over the decode set
        self._dec_left_sum = 0  # sum of output - gbase over the decode set: outputs left, plus D
        self._hist = [0] * self._bs  # decode-set sequences by base mod block_size
        self._finish_heap: list[tuple[int, int, int, Seq]] = []  # (finish D, admit_no, stint, seq)
        self._decode_cache: dict[int, tuple[float, float, float, float]] = {}

    def _forget_all(self) -> None:
        super()._forget_all()
        self._finish_heap.clear()
        self._hist = [0] * self._bs
        self._dec_n = self._dec_base_sum = self._dec_left_sum = 0

    def _decode_run_len(self, batch: int) -> int:
        """Decode steps until the first completion, KV exhaustion or max_run_steps."""
        heap = self._finish_heap
        while heap and (heap[0][3].stint != heap[0][2] or not heap[0][3].decoding):
            heapq.heappop(heap)  # an entry left behind by a preempted sequence
        k = heap[0][0] - self._steps
        if self._max_run is not None and self._max_run < k:
            k = self._max_run
        # KV: steps 1..j need batch*q + C[r] new blocks for j = q*bs + r, where C[r] counts the
        # sequences whose next block boundary comes within their first r steps.
        bs = self._bs
        q, rem = divmod(self.total_blocks - self._used_blocks, batch)
        if q * bs >= k:
            return k
        hist, d = self._hist, self._steps
        within = 0
        r_max = bs - 1
        for r in range(1, bs):
            within += hist[(1 - r - d) % bs]
            if within > rem:
                r_max = r - 1
                break
        return min(k, q * bs + r_max)

    def _new_blocks(self, steps: int) -> int:
        """KV blocks the decode set takes over its next `steps` steps."""
        bs = self._bs
        q, r = divmod(steps, bs)
        if not r:
            return self._dec_n * q
        # Sequences with base = -d - y (mod bs) cross a block boundary at step y + 1: for y < r, that is
        # the buckets (-d) % bs down to (-d - r + 1) % bs, summed as one or two slices.
        hist, top = self._hist, -self._steps % bs
        low = top - r + 1
        within = sum(hist[low:top + 1]) if low >= 0 else sum(hist[:top + 1]) + sum(hist[low + bs:])
        return self._dec_n * q + within

    def _decode_coeffs(self, batch: int) -> tuple[float, float, float, float]:
        # The planner reads _decode_cache itself first and calls this only on a miss.
        cached = self._decode_cache.get(batch)
        if cached is None:
            fixed_s, per_ctx_s = self.latency.decode_step_coeffs(batch)
            busy_fixed_s, busy_per_ctx_s = self.latency.decode_busy_coeffs(batch)
            cached = (fixed_s, per_ctx_s, busy_fixed_s, busy_per_ctx_s)
            self._decode_cache[batch] = cached
        return cached

    def _start_decoding(self, seq: Seq) -> None:
        # The same as the end of a prefill in SimEngine._commit_step, kept inline there for speed.
        d = self._steps
        seq.decoding = True
        seq.base = seq.computed - d
        seq.gbase = seq.generated - d
        self._dec_n += 1
        self._dec_base_sum += seq.base
        self._dec_left_sum += seq.output - seq.gbase
        self._hist[seq.base % self._bs] += 1
        heapq.heappush(self._finish_heap, (seq.output - seq.gbase, seq.admit_no, seq.stint, seq))

    def _leave_decode(self, seq: Seq) -> None:
        """Take `seq` out of the decode set, materialising its counters and freeing its KV blocks."""
        d = self._steps
        seq.computed = seq.base + d
        seq.generated = seq.gbase + d
        seq.decoding = False
        seq.stint += 1
        self._dec_n -= 1
        self._dec_base_sum -= seq.base
        self._dec_left_sum -= seq.output - seq.gbase
        self._hist[seq.base % self._bs] -= 1
        self._used_blocks -= -(-seq.computed // self._bs) - seq.shared
        if seq.pinned:
            self._unpin(seq)
