"""A simulated vLLM-like inference engine: continuous batching, paged KV cache, chunked prefill,
recompute preemption, prefix caching and prefill/decode roles; event-compressed so that a busy engine
costs a few events per request.

Scheduling (one iteration, at a step boundary), as vLLM's chunked-prefill scheduler does it:
1. every running sequence whose prefill is complete decodes one token; if the KV cache cannot hold
   the step, the most recently admitted running sequences are preempted (recompute: KV freed, back to
   the front of the waiting queue, prompt + generated tokens to prefill again) until it can;
2. running sequences still in prefill take prefill chunks, oldest first, within the token budget
   (max_batched_tokens minus the decode tokens);
3. unless step 1 preempted, waiting requests are admitted first-come first-served while the budget,
   max_num_seqs and the KV cache allow; admission reserves KV blocks for the whole prefill.
A sequence whose prefill completes produces a token at the end of that iteration (the first output
token the first time).

Prefix caching (`EngineConfig.enable_prefix_caching`): the KV of every full prompt block a sequence
computes is registered under its prefix hash (see opscale.engine.prefix_cache). At admission, the
leading cached blocks of a prompt are reused: they are not prefilled (the prefill starts after them
and attends over them) but still occupy KV, shared by every sequence using them. At least one prompt
token is always computed, for its logits. Unused cached blocks fill the free KV space and are evicted,
least recently released first, whenever running sequences need it, so caching never delays a request.

Roles (`Role`): a `unified` engine does both phases. A `prefill` engine runs prefills only: when one
completes it emits `PrefillDone` with the prompt's KV size, frees the KV and forgets the request. A
`decode` engine takes requests through `submit_prefilled(request, now_s, kv_ready_s)`: at admission it
reserves the prompt's KV and the transfer starts; the request joins the decode batch at the first step
boundary at or after its KV has landed, emitting the first token there (the prefill engine's token
travels with the KV: the transfer counts towards TTFT), and spends no prefill compute. A decode-side
preemption recomputes locally, as vLLM does; a request still waiting for its KV is never preempted.

Event compression: when no sequence needs prefill work, membership of the batch can only change at
the next completion, KV exhaustion or KV arrival, so the engine computes k, the number of decode steps
until then, and prices the whole run in closed form: a decode step over contexts totalling S costs
fixed + c*S and S grows by the batch size each step, so k steps cost
k*(fixed + c*S0) + c*batch*k*(k-1)/2. The per-sequence counters advance lazily (a global decode-step
counter), KV growth is counted from a histogram of context lengths modulo the block size, and
completions come from a heap: a run costs O(block_size + log batch), not O(batch * k). A request
submitted during a run cuts it at the first step boundary at or after its arrival, where it joins.

Pure: no clock, no I/O; every call carries `now_s`. Times before the last call's are refused.
"""

from __future__ import annotations

import heapq
import math
from array import array
from bisect import bisect_right
from collections import deque
from enum import StrEnum
from functools import reduce
from operator import add

from opscale.engine.config import EngineConfig
from opscale.engine.errors import EngineNotAcceptingError, RequestTooLargeError, WrongRoleError
from opscale.engine.outputs import (
    EngineOutput,
    EngineReport,
    Finished,
    FirstToken,
    Preempted,
    PrefillDone,
    Tokens,
)
from opscale.engine.prefix_cache import PrefixCache
from opscale.model import ModelSpec, Request, Role, Sku
from opscale.perf.latency import LatencyModel
from opscale.perf.operators import Footprint


class EngineState(StrEnum):
    ACCEPTING = "accepting"
    DRAINING = "draining"
    STOPPED = "stopped"


class _Seq:
    """One request inside the engine. Mutable on purpose: this is the hot path's bookkeeping.

    While decoding, `computed` and `generated` are not stored but derived from the engine's global
    decode-step counter D: computed = base + D, generated = gbase + D.

    KV: a running sequence holding x tokens owns ceil(x / block_size) - shared blocks; the `shared`
    ones belong to the prefix-cache entries in `pinned`, counted once however many sequences use them.
    """

    __slots__ = ("req", "rid", "prompt", "output", "target", "computed", "generated", "first_token_s",
                 "admit_no", "decoding", "base", "gbase", "stint", "hashes", "pinned", "shared", "reg",
                 "xfer_s", "kv_at_s")

    def __init__(self, req: Request, hashes: tuple[int, ...]) -> None:
        self.req = req
        self.rid = req.request_id
        self.prompt = req.prompt_tokens
        self.output = req.output_tokens
        self.target = req.prompt_tokens  # tokens to prefill: prompt + tokens generated before preemption
        self.computed = 0  # tokens in the KV cache (while not decoding)
        self.generated = 0  # output tokens so far (while not decoding)
        self.first_token_s: float | None = None
        self.admit_no = -1  # admission order among running sequences; -1 while waiting
        self.decoding = False
        self.base = 0
        self.gbase = 0
        self.stint = 0  # bumped when leaving the decode set: invalidates its heap entry
        self.hashes = hashes  # prefix hashes of its full prompt blocks; () when caching is off
        self.pinned: list[int] | None = None  # prefix-cache entries it uses, in prompt order
        self.shared = 0  # KV blocks of those entries
        self.reg = 0  # prompt blocks [0, reg) are pinned or were offered to the cache
        self.xfer_s: float | None = None  # decode role: KV transfer time, until the KV has landed
        self.kv_at_s = 0.0  # when the KV lands (set at admission)


# The plans below are values, never changed once made, and the engine builds one or two for every event
# it runs. So they are plain slotted classes with their __init__ written out rather than dataclasses:
# a frozen dataclass's __init__ sets each field through object.__setattr__ (about four times as slow
# to build), and the compiled build (opscale._native_modules) compiles a written __init__ but leaves
# the one a dataclass generates at import time interpreted, which makes a plan slower to build there
# than in plain Python. Nothing compares or prints plans, so nothing else of a dataclass is missed.
class _DecodeRun:
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

    def cut(self, steps: int) -> _DecodeRun:
        """The same run stopped after its first `steps` steps."""
        return _DecodeRun(self.start_s, self.start_s + self.elapsed_s(steps), steps, self.batch, self.ctx0,
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


class _Step:
    """One general (mixed) iteration, fully decided at `start_s` and applied at `end_s`."""

    __slots__ = ("start_s", "end_s", "busy_s", "victims", "admits", "hits", "chunks", "batch", "new_blocks")

    def __init__(self, start_s: float, end_s: float, busy_s: float, victims: tuple[_Seq, ...],
                 admits: tuple[_Seq, ...], hits: tuple[int, ...], chunks: tuple[tuple[_Seq, int], ...],
                 batch: int, new_blocks: int) -> None:
        self.start_s = start_s
        self.end_s = end_s
        self.busy_s = busy_s
        self.victims = victims  # most recently admitted first
        # The waiting queue's heads it admits, in order (empty on the lean path, where the admissions
        # are the chunks of sequences not yet admitted).
        self.admits = admits
        self.hits = hits  # cached prefix blocks each admission reuses (empty when caching is off)
        self.chunks = chunks  # prefill chunks: running ones first, then admissions
        self.batch = batch  # decoding sequences after preemption
        self.new_blocks = new_blocks  # KV blocks the decode tokens take


class _Wait:
    """Nothing to compute until a KV transfer lands at `end_s` (decode role)."""

    __slots__ = ("start_s", "end_s")

    def __init__(self, start_s: float, end_s: float) -> None:
        self.start_s = start_s
        self.end_s = end_s


class SimEngine:
    """One simulated engine instance serving `model` on `tp` GPUs of `sku`.

    The shell calls `submit(request, now_s)` on arrival (`submit_prefilled` on a decode engine),
    `advance(now_s)` at `next_event_s()` (or whenever it likes) to collect outputs, and `report(now_s)`
    for heartbeats; `cancel`, `drain` and `stop` end requests or the engine. Outputs produced inside
    `submit`, `cancel` or `stop` (runs that ended before their time) are returned by the next `advance`.

    `footprint` replaces what `sku` and `tp` imply for KV capacity and power, for a deployment whose
    GPUs are not `tp` GPUs of one SKU (an operator-split deployment, see opscale.perf.operators).

    Accounting, as of the last step boundary: `busy_s` (time in iterations), `energy_j` (power
    integrated from the first call, idle draw included), `preemptions`, `prefill_tokens_computed`
    (recomputation included, cached prefix tokens excluded), `output_tokens`, `finished`, `cancelled`,
    `handed_off` (prefill role), `prefix_hit_tokens` and `prefix_queried_tokens` (prompt tokens
    admitted for prefill, recomputation included) with their ratio `prefix_hit_rate`.

    `emit_first_tokens` (default True): a shell that takes first-token times from `Finished` and streams
    nothing (the simulation world) sets it to False, and no `FirstToken` outputs are made: one object
    per request saved on the hottest path.
    """

    def __init__(self, instance_id: str, model: ModelSpec, sku: Sku, tp: int, latency: LatencyModel,
                 config: EngineConfig | None = None, *, role: Role = Role.UNIFIED,
                 footprint: Footprint | None = None) -> None:
        self.instance_id = instance_id
        self.model = model
        self.sku = sku
        self.tp = tp
        self.latency = latency
        self.role = Role(role)
        self.config = config if config is not None else EngineConfig()
        cfg = self.config
        bs = cfg.block_size
        if footprint is None:
            kv_budget_bytes = cfg.gpu_memory_utilization * tp * sku.gpu_memory_gb * 1e9 - model.weight_bytes
            where = (f"{cfg.gpu_memory_utilization:g} x {tp} x {sku.name} "
                     f"({sku.gpu_memory_gb:g} GB each)")
        else:
            kv_budget_bytes = footprint.kv_budget_bytes
            where = "its footprint"
        self.total_blocks = int(kv_budget_bytes // (bs * model.kv_bytes_per_token)) if kv_budget_bytes > 0 else 0
        if self.total_blocks <= 0:
            raise ValueError(
                f"instance {instance_id}: {model.name} weights ({model.weight_bytes / 1e9:.1f} GB) leave no room "
                f"for a KV cache in {where}")
        max_len = cfg.max_model_len if cfg.max_model_len is not None else model.max_context
        # A request must fit the KV cache on its own, or it could never run.
        self.max_request_tokens = min(max_len, self.total_blocks * bs)
        self._bs = bs
        self._max_seqs = cfg.max_num_seqs
        self._budget = cfg.max_batched_tokens
        self._max_run = cfg.max_run_steps
        self._emit_tokens = cfg.emit_tokens
        self.emit_first_tokens = True
        self._prefill_only = self.role is Role.PREFILL
        self._decode_only = self.role is Role.DECODE
        self._kv_bytes_per_token = model.kv_bytes_per_token
        if footprint is None:
            self._idle_w = sku.idle_power_w * tp
            self._dyn_w = (sku.max_power_w - sku.idle_power_w) * tp
        else:
            self._idle_w = footprint.idle_power_w
            self._dyn_w = footprint.dynamic_power_w
        self._cache: PrefixCache | None = None
        self._pb_tokens = cfg.prefix_block_tokens
        self._pb_blocks = cfg.prefix_block_tokens // bs
        if cfg.enable_prefix_caching:
            self._cache = PrefixCache(cfg.prefix_block_tokens, self._pb_blocks)
        # The common case takes a lean path through planning and commits: no prefix to look up, no
        # prefilled request to receive.
        self._lean = self._cache is None and not self._decode_only

        self._state = EngineState.ACCEPTING
        self._seqs: dict[str, _Seq] = {}  # every request in the engine, by id
        self._waiting: deque[_Seq] = deque()
        self._running: dict[int, _Seq] = {}  # by admission number: insertion order = admission order
        self._prefilling: dict[int, _Seq] = {}  # the running ones whose prefill is incomplete
        self._transferring: dict[int, _Seq] = {}  # the running ones whose KV has not landed (decode role)
        # The last pass that ran no iteration (KV reservations only): when, and the room it left.
        self._zero_pass_s = -math.inf
        self._zero_room = self._zero_free = 0
        self._continuation: _Step | None = None  # the plan that extends that pass, when one does
        self._admissions = 0
        self._used_blocks = 0  # owned by running sequences, plus pinned prefix-cache entries
        # The decode set, kept lazily (see the module docstring).
        self._steps = 0  # D: decode steps taken by the engine so far
        self._dec_n = 0
        self._dec_base_sum = 0  # sum of base over the decode set
        self._dec_left_sum = 0  # sum of output - gbase over the decode set: outputs left, plus D
        self._hist = [0] * bs  # decode-set sequences by base mod block_size
        self._finish_heap: list[tuple[int, int, int, _Seq]] = []  # (finish D, admit_no, stint, seq)
        self._decode_cache: dict[int, tuple[float, float, float, float]] = {}

        self._plan: _DecodeRun | _Step | _Wait | None = None
        self._clock_s = 0.0  # the last step boundary (or the last time seen, while idle)
        self._now_s = 0.0  # the latest time any call carried
        self._pending: list[EngineOutput] = []
        self._cancelled: list[_Seq] = []  # to remove at the next step boundary
        self._started = False  # energy is integrated from the engine's first call...
        self._accounted_s = 0.0  # ...up to here

        # Accounting.
        self.busy_s = 0.0
        self.energy_j = 0.0
        self.preemptions = 0
        self.prefill_tokens_computed = 0
        self.output_tokens = 0
        self.finished = 0
        self.cancelled = 0
        self.handed_off = 0
        self.prefix_hit_tokens = 0
        self.prefix_queried_tokens = 0
        # The runs of the last report_window_s, for reports, from run _win_head on: their ends, in order,
        # and their start, duration and output tokens, three numbers a run. Flat arrays of doubles rather
        # than a deque of tuples: a report reads them all, and contiguous numbers cost far fewer cache
        # misses than an object per run (token counts are whole numbers far below 2**53: exact as
        # doubles); the ends alone, so that the window's edge is a binary search.
        self._win_end = array("d")
        self._win_data = array("d")
        self._win_head = 0
        self._report_window_s = cfg.report_window_s

    # --- the shell's interface ----------------------------------------------------------------------

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def is_idle(self) -> bool:
        return not self._running and not self._waiting

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

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

    def submit(self, request: Request, now_s: float) -> None:
        """Queue `request`, arriving at `now_s`. Raises EngineNotAcceptingError when draining or stopped,
        RequestTooLargeError when it can never fit, WrongRoleError on a decode engine, ValueError for a
        duplicate id or a past time."""
        if self._decode_only:
            raise WrongRoleError(f"instance {self.instance_id} is a decode instance: request "
                                 f"{request.request_id} must come prefilled (submit_prefilled)")
        hashes = self._usable_hashes(request) if self._cache is not None and request.prefix_hashes else ()
        self._enqueue(_Seq(request, hashes), now_s)

    def submit_prefilled(self, request: Request, now_s: float, kv_ready_s: float) -> None:
        """Queue `request`, prefilled elsewhere, on this decode engine at `now_s`; its KV would have
        landed at `kv_ready_s` had the transfer started at now_s.

        The transfer starts when the scheduler reserves the KV at a step boundary (at once on an idle
        engine), so a request that must wait for room or for the boundary has its KV land
        kv_ready_s - now_s after its admission. Raises as `submit` does, WrongRoleError on an engine
        that is not a decode engine, and ValueError when kv_ready_s is before now_s.
        """
        if self.role is not Role.DECODE:
            raise WrongRoleError(f"instance {self.instance_id} is a {self.role} instance: request "
                                 f"{request.request_id} cannot be submitted prefilled")
        if not kv_ready_s >= now_s or not math.isfinite(kv_ready_s):
            raise ValueError(f"request {request.request_id}: kv_ready_s ({kv_ready_s}) must be a time at or "
                             f"after now_s ({now_s})")
        seq = _Seq(request, ())
        seq.xfer_s = kv_ready_s - now_s
        seq.generated = 1  # the prefill engine's token, handed over with the KV
        self._enqueue(seq, now_s)

    def advance(self, now_s: float) -> list[EngineOutput]:
        """Run every iteration that ends at or before `now_s`; return the outputs since the last call."""
        out = self._pending
        self._pending = []
        plan = self._plan
        if plan is not None and plan.end_s > now_s and now_s == self._now_s:
            return out  # already there, and nothing ends by now_s (a shell collecting what a submit made)
        self._advance_to(now_s, out)
        return out

    def next_event_s(self) -> float | None:
        """When the iteration (or run of iterations, or wait for a KV transfer) in flight ends; None
        when idle or stopped."""
        plan = self._plan if self._plan is not None else self._make_plan()
        return None if plan is None else plan.end_s

    def cancel(self, request_id: str, now_s: float) -> bool:
        """Abort a request (its client went away): it leaves the engine at the first step boundary at
        or after `now_s`, freeing its KV blocks, and produces no further outputs after that boundary
        (none at all is promised: no Finished). Returns False when the engine does not hold it."""
        self._advance_to(now_s, self._pending)
        seq = self._seqs.get(request_id)
        if seq is None or seq in self._cancelled:
            return seq is not None
        self._cancelled.append(seq)
        plan = self._plan
        if plan is None or plan.start_s >= now_s or isinstance(plan, _Wait):
            if isinstance(plan, _Wait):
                self._clock_s = max(self._clock_s, now_s)  # waiting is no iteration: leave now
            self._plan = None  # nothing in flight: leave now
            self._apply_cancellations()
        elif isinstance(plan, _DecodeRun):
            steps = plan.steps_by(now_s)
            if steps < plan.k:
                self._plan = plan.cut(steps)
        return True

    def drain(self) -> None:
        """Refuse new requests; those already queued or running still finish."""
        if self._state is EngineState.ACCEPTING:
            self._state = EngineState.DRAINING

    def stop(self, now_s: float) -> list[Request]:
        """Stop the engine at `now_s` and hand back every request it had not finished (the caller
        re-routes or fails them). Outputs up to now_s remain available from `advance`."""
        self._advance_to(now_s, self._pending)
        plan = self._plan
        if isinstance(plan, _Wait):
            self.energy_j += self._idle_w * (now_s - self._accounted_s)
            self._accounted_s = now_s
        elif plan is not None and plan.start_s < now_s:
            # The iteration in flight ran until now at its own power; its outputs are lost.
            elapsed_s = now_s - plan.start_s
            run_s = plan.end_s - plan.start_s
            busy_s = plan.busy_s if isinstance(plan, _Step) else plan.busy_s(plan.k)
            self.energy_j += self._idle_w * (now_s - self._accounted_s) + self._dyn_w * busy_s * elapsed_s / run_s
            self._accounted_s = now_s
            self.busy_s += elapsed_s
        unfinished = [s.req for s in self._running.values()] + [s.req for s in self._waiting]
        self._state = EngineState.STOPPED
        self._plan = None
        self._seqs.clear()
        self._cancelled.clear()
        self._waiting.clear()
        self._running.clear()
        self._prefilling.clear()
        self._transferring.clear()
        self._finish_heap.clear()
        if self._cache is not None:
            self._cache.clear()
        self._hist = [0] * self._bs
        self._dec_n = self._dec_base_sum = self._dec_left_sum = self._used_blocks = 0
        return unfinished

    def report(self, now_s: float) -> EngineReport:
        """Load and power at `now_s`, as the node-agent publishes them (state as of the last boundary)."""
        window_s = self.config.report_window_s
        since = now_s - window_s
        self._forget_runs_before(since)
        tokens = 0
        busy = 0.0
        ends, data, head = self._win_end, self._win_data, self._win_head
        runs = len(ends)
        if runs > head and ends[-1] <= now_s:
            # The usual case (runs are disjoint, in time order, and all over by now_s): only the first
            # run ending after `since` can be cut by the window; every later one counts whole. Summed in
            # the same order as the general loop below, so the figures are the same to the last bit.
            first = bisect_right(ends, since, head)
            if first < runs:
                start = data[3 * first]
                busy = ends[first] - (start if start > since else since)
                busy = reduce(add, data[3 * first + 4::3], busy)  # busy += each later duration, in C
                tokens = int(sum(data[3 * first + 2::3]))
        else:
            for i in range(head, runs):
                end = ends[i]
                if end > since:
                    busy += min(end, now_s) - max(data[3 * i], since)
                    if end <= now_s:
                        tokens += int(data[3 * i + 2])
        stopped = self._state is EngineState.STOPPED
        plan = None if stopped else (self._plan if self._plan is not None else self._make_plan())
        power_w = 0.0 if stopped else self._idle_w
        if plan is not None and not isinstance(plan, _Wait):
            if plan.start_s < now_s:
                busy += max(0.0, min(plan.end_s, now_s) - max(plan.start_s, since))
            run_s = plan.end_s - plan.start_s
            busy_s = plan.busy_s if isinstance(plan, _Step) else plan.busy_s(plan.k)
            power_w = self._idle_w + self._dyn_w * (busy_s / run_s if run_s > 0 else 0.0)
        return EngineReport(
            instance_id=self.instance_id,
            queued=len(self._waiting),
            running=len(self._running),
            outstanding_tokens=self.outstanding_tokens(),
            kv_used_frac=self._used_blocks / self.total_blocks,
            tokens_per_s=tokens / window_s,
            busy_frac=min(1.0, busy / window_s),
            power_w=power_w,
            idle=self.is_idle,
        )

    def outstanding_tokens(self) -> int:
        """Tokens still to process: prefill left plus output left, over queued and running requests
        (a prefilled request's prompt is not prefill work here)."""
        # The decode set's share comes from a running sum (each decoding sequence has output - (gbase + D)
        # left); only the queue and the sequences in prefill or awaiting their KV are walked.
        total = self._dec_left_sum - self._dec_n * self._steps
        for s in self._waiting:
            total += s.output - s.generated if s.xfer_s is not None else s.target + s.output - s.generated
        for s in self._prefilling.values():
            total += s.target - s.computed + s.output - s.generated
        for s in self._transferring.values():
            total += s.output - s.generated
        return total

    # --- arrivals -------------------------------------------------------------------------------------

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

    def _enqueue(self, seq: _Seq, now_s: float) -> None:
        request = seq.req
        if self._state is not EngineState.ACCEPTING:
            raise EngineNotAcceptingError(f"instance {self.instance_id} is {self._state}; request "
                                          f"{request.request_id} refused")
        total = request.prompt_tokens + request.output_tokens
        if total > self.max_request_tokens:
            raise RequestTooLargeError(
                f"request {request.request_id}: prompt_tokens + output_tokens = {total} exceeds this "
                f"instance's limit of {self.max_request_tokens} tokens ({self.model.name} on {self.sku.name})")
        self._advance_to(now_s, self._pending)
        if request.request_id in self._seqs:
            raise ValueError(f"request {request.request_id} is already in instance {self.instance_id}")
        plan = self._plan
        if plan is not None:
            if isinstance(plan, _Step):
                if plan.start_s >= now_s:
                    self._plan = None  # decided at this very instant: decide again with the newcomer
            elif isinstance(plan, _Wait):
                # Waiting for a transfer is no iteration: the scheduler can take the newcomer now.
                self._plan = None
                self._clock_s = max(self._clock_s, now_s)
            elif (not self._waiting and len(self._running) < self._max_seqs
                  and (plan.batch < self._budget or seq.xfer_s is not None)):
                # The newcomer may be admitted: stop the run at the first boundary at or after now_s.
                # (With a non-empty queue its head is blocked until the run ends, so is the newcomer.)
                steps = plan.steps_by(now_s)
                if steps == 0:
                    self._plan = None
                elif steps < plan.k:
                    self._plan = plan.cut(steps)
        self._seqs[seq.rid] = seq
        self._waiting.append(seq)

    # --- time -----------------------------------------------------------------------------------------

    def _advance_to(self, now_s: float, out: list[EngineOutput]) -> None:
        if now_s < self._now_s:
            raise ValueError(f"instance {self.instance_id}: time went backwards ({now_s} < {self._now_s})")
        self._now_s = now_s
        if self._state is EngineState.STOPPED:
            return
        if not self._started:
            self._started = True
            self._accounted_s = now_s
            self._clock_s = now_s
        while True:
            plan = self._plan if self._plan is not None else self._make_plan()
            if plan is None:
                self.energy_j += self._idle_w * (now_s - self._accounted_s)
                self._accounted_s = now_s
                self._clock_s = now_s
                return
            if plan.end_s > now_s:
                return
            self._plan = None
            if isinstance(plan, _DecodeRun):
                self._commit_run(plan, out)
            elif isinstance(plan, _Step):
                self._commit_step(plan, out)
            else:
                self._commit_wait(plan, out)
            self._clock_s = plan.end_s
            if self._cancelled:
                self._apply_cancellations()

    def _account(self, start_s: float, end_s: float, busy_s: float, tokens: int) -> None:
        # Idle draw from the last accounted instant to the start, then the run's own draw.
        self.energy_j += self._idle_w * (end_s - self._accounted_s) + self._dyn_w * busy_s
        self._accounted_s = end_s
        duration_s = end_s - start_s
        self.busy_s += duration_s
        self.output_tokens += tokens
        ends = self._win_end
        ends.append(end_s)
        self._win_data.extend((start_s, duration_s, tokens))
        if len(ends) >= 4096:  # an engine nobody asks for reports: keep the window bounded all the same
            self._forget_runs_before(end_s - self._report_window_s)

    def _forget_runs_before(self, since_s: float) -> None:
        """Runs that ended by `since_s` leave the report window (reports ignore them); the arrays are
        compacted now and then. Done when a report is made, not per run: a report comes every few
        seconds, runs a few times per request."""
        ends = self._win_end
        head = bisect_right(ends, since_s, self._win_head)
        if head >= 256:
            del ends[:head], self._win_data[:3 * head]
            head = 0
        self._win_head = head

    # --- planning (reads state, never changes it) -------------------------------------------------------

    def _make_plan(self) -> _DecodeRun | _Step | _Wait | None:
        if self._state is EngineState.STOPPED or (not self._running and not self._waiting):
            return None
        if self._zero_pass_s == self._clock_s and self._waiting:
            step = self._continue_zero_pass()
            if step is not None:
                self._plan = step
                return step
        batch = self._dec_n
        if not self._prefilling and not (
                self._waiting and self._head_admissible(batch, self._hist[-self._steps % self._bs])):
            if batch:
                k = self._decode_run_len(batch)
                if k > 0:
                    fixed_s, per_ctx_s, busy_fixed_s, busy_per_ctx_s = (
                        self._decode_cache.get(batch) or self._decode_coeffs(batch))
                    ctx0 = self._dec_base_sum + batch * (self._steps + 1)
                    elapsed_s = k * fixed_s + per_ctx_s * (k * ctx0 + batch * k * (k - 1) / 2)
                    run = _DecodeRun(self._clock_s, self._clock_s + elapsed_s, k, batch, ctx0, fixed_s,
                                     per_ctx_s, busy_fixed_s, busy_per_ctx_s)
                    if self._transferring:
                        # A KV landing mid-run joins at the first boundary at or after it: cut there.
                        landing_s = min(s.kv_at_s for s in self._transferring.values())
                        steps = max(1, run.steps_by(landing_s))
                        if steps < k:
                            run = run.cut(steps)
                    self._plan = run
                    return run
            elif self._transferring:
                wait = _Wait(self._clock_s, min(s.kv_at_s for s in self._transferring.values()))
                self._plan = wait
                return wait
        step = self._plan_step()
        self._plan = step
        return step

    def _head_admissible(self, batch: int, new_blocks: int) -> bool:
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

    def _hits(self, seq: _Seq) -> int:
        """Leading prefix blocks of `seq` in the cache; at least one prompt token is left to compute."""
        cache = self._cache
        assert cache is not None  # only sequences with hashes ask, and they exist only with a cache
        return cache.lookup(seq.hashes, min(len(seq.hashes), (seq.target - 1) // self._pb_tokens))

    def _reused_blocks(self, seq: _Seq, hit: int, taken: set[int] | None) -> int:
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

    def _plan_step(self) -> _Step:
        bs, d = self._bs, self._steps
        free = self.total_blocks - self._used_blocks
        batch = self._dec_n
        new_blocks = self._hist[-d % bs]
        ctx = self._dec_base_sum + batch * (d + 1)
        victims: list[_Seq] = []
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
        chunks: list[tuple[_Seq, int]] = []
        prefill = prefill_ctx = pairs = 0
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
        admits: list[_Seq] = []
        hits: list[int] = []
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
                if caching:
                    hits.append(hit)
                cached = hit * self._pb_tokens
                n = min(seq.target - cached, budget)
                chunks.append((seq, n))
                budget -= n
                prefill += n
                prefill_ctx += cached
                pairs += n * cached + n * (n + 1) // 2
        if prefill:
            cost = self.latency.iteration_cost(prefill, prefill_ctx, batch, ctx, prefill_attn_pairs=pairs)
            time_s, busy_s = cost.time_s, cost.busy_s
        elif batch or victims:
            fixed_s, per_ctx_s, busy_fixed_s, busy_per_ctx_s = self._decode_coeffs(batch)
            time_s = fixed_s + per_ctx_s * ctx
            busy_s = busy_fixed_s + busy_per_ctx_s * ctx
        else:
            time_s = busy_s = 0.0  # it only reserves KV for prefilled requests: no iteration runs
        start = self._clock_s
        return _Step(start, start + time_s, busy_s, tuple(victims), tuple(admits) if admits else (),
                     tuple(hits) if hits else (), tuple(chunks),
                     batch, new_blocks)

    def _continue_zero_pass(self) -> _Step | None:
        """Prefilled requests that arrive at the instant of a zero-time admission pass join that pass.

        A pass that only reserves KV for prefilled requests runs no iteration, so it is committed at the
        very instant it is decided, before any other arrival at that instant is known. The scheduler
        decides once per instant with everything that has arrived by then: a newcomer at the same
        instant is admitted as if it had been in that pass (no decode step in between), with the room
        that pass had left: sequences and KV blocks released by joins since then are not seen."""
        free_now, room = self._zero_free, self._zero_room
        admits: list[_Seq] = []
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
        start = self._clock_s
        self._continuation = _Step(start, start, 0.0, (), tuple(admits), hits, (), 0, 0)
        return self._continuation

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

    # --- commits (the only code that changes sequences) -------------------------------------------------

    def _commit_run(self, run: _DecodeRun, out: list[EngineOutput]) -> None:
        k, end = run.k, run.end_s
        self._used_blocks += self._new_blocks(k)
        if self._cache is not None:
            # Cached prefixes make way as the KV grows; nothing is released before the run's end.
            self._cache.evict_to(self.total_blocks - self._used_blocks)
        self._steps += k
        # run.busy_s(k), written out (the same expression): once per decode run.
        busy_s = k * run.busy_fixed_s + run.busy_per_ctx_s * (k * run.ctx0 + run.batch * k * (k - 1) / 2)
        self._account(run.start_s, end, busy_s, run.batch * k)
        if self._emit_tokens:
            for seq in self._running.values():
                if seq.decoding:
                    out.append(Tokens(seq.rid, k, end))
        heap = self._finish_heap
        if heap and heap[0][0] <= self._steps:
            self._pop_finished(end, out)
        if self._transferring:
            self._join_landed(end, out)

    def _commit_step(self, step: _Step, out: list[EngineOutput]) -> None:
        start, end = step.start_s, step.end_s
        if end == start:
            if step is not self._continuation:
                self._zero_room = self._max_seqs - len(self._running)
                self._zero_free = self.total_blocks - self._used_blocks
            self._zero_pass_s = end
            self._zero_room -= len(step.admits)
            self._zero_free -= sum(-(-seq.target // self._bs) for seq in step.admits)
        if step.victims:
            for seq in step.victims:
                self._preempt(seq)
                out.append(Preempted(seq.rid, start))
            # extendleft reverses: the oldest victim ends up first in the queue.
            self._waiting.extendleft(step.victims)
        tokens = step.batch
        if step.batch:
            self._used_blocks += step.new_blocks
            self._steps += 1
            if self._emit_tokens:
                for seq in self._running.values():
                    if seq.decoding:
                        out.append(Tokens(seq.rid, 1, end))
        if not self._lean:
            if step.admits:
                self._admit(step)
            if self._cache is not None:
                # Evict when the KV is taken (decode growth, admissions), before this boundary frees any.
                self._cache.evict_to(self.total_blocks - self._used_blocks)
        d = self._steps
        waiting = self._waiting
        prefill_only = self._prefill_only
        for seq, n in step.chunks:
            if seq.admit_no < 0:
                # Lean path: an admission (the queue's heads, in order), reserving its whole prefill.
                waiting.popleft()
                self._admissions += 1
                seq.admit_no = self._admissions
                self._running[seq.admit_no] = seq
                self._prefilling[seq.admit_no] = seq
                self._used_blocks += -(-seq.target // self._bs)
            seq.computed += n
            self.prefill_tokens_computed += n
            if seq.hashes and seq.reg < len(seq.hashes):
                self._register(seq)
            if seq.computed < seq.target:
                continue
            # Prefill complete: this iteration samples the sequence's next token.
            del self._prefilling[seq.admit_no]
            seq.generated += 1
            tokens += 1
            if prefill_only:
                self._hand_off(seq, end, out)
                continue
            if seq.first_token_s is None:
                seq.first_token_s = end
                if self.emit_first_tokens:
                    out.append(FirstToken(seq.rid, end))
            elif self._emit_tokens:
                out.append(Tokens(seq.rid, 1, end))
            if seq.generated >= seq.output:
                self._release(seq, seq.target)
                self._finish(seq, end, out)
                continue
            seq.decoding = True
            seq.base = seq.computed - d
            seq.gbase = seq.generated - d
            self._dec_n += 1
            self._dec_base_sum += seq.base
            self._dec_left_sum += seq.output - seq.gbase
            self._hist[seq.base % self._bs] += 1
            heapq.heappush(self._finish_heap, (seq.output - seq.gbase, seq.admit_no, seq.stint, seq))
        self._account(start, end, step.busy_s, tokens)
        heap = self._finish_heap
        if heap and heap[0][0] <= self._steps:
            self._pop_finished(end, out)
        if self._transferring:
            self._join_landed(end, out)

    def _commit_wait(self, wait: _Wait, out: list[EngineOutput]) -> None:
        self.energy_j += self._idle_w * (wait.end_s - self._accounted_s)
        self._accounted_s = wait.end_s
        self._join_landed(wait.end_s, out)

    def _admit(self, step: _Step) -> None:
        """The step's admissions, at its start: KV reserved, cached prefix blocks pinned, transfers begun."""
        bs, waiting, cache = self._bs, self._waiting, self._cache
        for i, seq in enumerate(step.admits):
            waiting.popleft()  # admissions are the queue's heads, in order
            self._admissions += 1
            seq.admit_no = self._admissions
            self._running[seq.admit_no] = seq
            blocks = -(-seq.target // bs)
            if seq.xfer_s is not None:
                seq.kv_at_s = step.start_s + seq.xfer_s
                self._transferring[seq.admit_no] = seq
                self._used_blocks += blocks
                continue
            self._prefilling[seq.admit_no] = seq
            if cache is not None:
                self.prefix_queried_tokens += seq.target
                hit = step.hits[i]
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
            self._used_blocks += blocks

    def _register(self, seq: _Seq) -> None:
        """Offer the cache the full prompt blocks `seq` has computed since last time."""
        cache = self._cache
        assert cache is not None
        full = min(len(seq.hashes), seq.computed // self._pb_tokens)
        while seq.reg < full:
            block_hash = seq.hashes[seq.reg]
            seq.reg += 1
            if cache.register(block_hash):
                # Its blocks change owner, from the sequence to the entry: used blocks are unchanged.
                if seq.pinned is None:
                    seq.pinned = []
                seq.pinned.append(block_hash)
                seq.shared += self._pb_blocks

    def _start_decoding(self, seq: _Seq) -> None:
        # The same as the end of a prefill in _commit_step, kept inline there for speed.
        d = self._steps
        seq.decoding = True
        seq.base = seq.computed - d
        seq.gbase = seq.generated - d
        self._dec_n += 1
        self._dec_base_sum += seq.base
        self._dec_left_sum += seq.output - seq.gbase
        self._hist[seq.base % self._bs] += 1
        heapq.heappush(self._finish_heap, (seq.output - seq.gbase, seq.admit_no, seq.stint, seq))

    def _join_landed(self, end: float, out: list[EngineOutput]) -> None:
        """Prefilled requests whose KV has landed by this boundary join the decode batch, in admission
        order; the first token, handed over with the KV, reaches the client now."""
        landed = [seq for seq in self._transferring.values() if seq.kv_at_s <= end]
        for seq in landed:
            del self._transferring[seq.admit_no]
            seq.xfer_s = None
            seq.computed = seq.target
            seq.first_token_s = end
            if self.emit_first_tokens:
                out.append(FirstToken(seq.rid, end))
            if seq.generated >= seq.output:
                self._release(seq, seq.computed)
                self._finish(seq, end, out)
            else:
                self._start_decoding(seq)

    def _hand_off(self, seq: _Seq, end: float, out: list[EngineOutput]) -> None:
        """Prefill role: the prefill is done; the KV goes to a decode instance and the request leaves."""
        self._release(seq, seq.target)
        del self._running[seq.admit_no]
        del self._seqs[seq.rid]
        self.handed_off += 1
        out.append(PrefillDone(seq.rid, end, seq.prompt * self._kv_bytes_per_token, end))

    def _pop_finished(self, end: float, out: list[EngineOutput]) -> None:
        heap, d = self._finish_heap, self._steps
        while heap and heap[0][0] <= d:
            _, _, stint, seq = heapq.heappop(heap)
            if seq.stint == stint and seq.decoding:
                self._leave_decode(seq)
                seq.generated = seq.output
                self._finish(seq, end, out)

    def _leave_decode(self, seq: _Seq) -> None:
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

    def _release(self, seq: _Seq, held_tokens: int) -> None:
        """Free the KV blocks `seq` owns for `held_tokens` tokens and let go of its prefix entries."""
        self._used_blocks -= -(-held_tokens // self._bs) - seq.shared
        if seq.pinned:
            self._unpin(seq)

    def _unpin(self, seq: _Seq) -> None:
        """Let go of the prefix entries `seq` uses; those nobody else uses become evictable free space."""
        cache = self._cache
        assert cache is not None and seq.pinned is not None
        self._used_blocks -= cache.release(seq.pinned)
        seq.pinned = None
        seq.shared = 0
        seq.reg = 0

    def _finish(self, seq: _Seq, end: float, out: list[EngineOutput]) -> None:
        """Forget a finished sequence; its KV blocks were already freed by the caller."""
        del self._running[seq.admit_no]
        del self._seqs[seq.rid]
        self.finished += 1
        first = seq.first_token_s if seq.first_token_s is not None else end
        out.append(Finished(seq.rid, end, first, seq.output, seq.prompt))

    def _apply_cancellations(self) -> None:
        for seq in self._cancelled:
            if self._seqs.get(seq.rid) is not seq:
                continue  # it finished before it could be cancelled
            if seq.admit_no < 0:
                self._waiting.remove(seq)
            else:
                if seq.decoding:
                    self._leave_decode(seq)
                elif seq.xfer_s is not None:
                    del self._transferring[seq.admit_no]
                    self._release(seq, seq.target)
                else:
                    del self._prefilling[seq.admit_no]
                    self._release(seq, seq.target)
                del self._running[seq.admit_no]
            del self._seqs[seq.rid]
            self.cancelled += 1
        self._cancelled.clear()

    def _preempt(self, seq: _Seq) -> None:
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
