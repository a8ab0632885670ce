"""A simulated vLLM-like inference engine: continuous batching, paged KV cache, chunked prefill,
recompute preemption, prefix caching and prefill/decode roles; event-compressed so that a busy engine
costs a few events per request.

`SimEngine` orchestrates: it takes the shell's calls, keeps the time, chooses the next plan and commits
each plan at its end. The engine's concepts live in its layers, each a module of its own:
- opscale.engine.kv: the request tables and KV blocks, prefix-cache entries included (admission,
  registration and release of KV);
- opscale.engine.decode_run: the closed-form decode run (event compression) and the lazily advanced
  decode set it runs over;
- opscale.engine.scheduler: the general iteration (vLLM's chunked-prefill scheduling: preemption,
  prefill chunks, admissions);
- opscale.engine.usage: busy time, energy and the runs a load report reads.

Roles (`Role`): a `unified` engine does both phases. A `prefill` engine runs prefills only: when one
completes it emits `PrefillDone` with the prompt's KV size, frees the KV and forgets the request. A
`decode` engine takes requests through `submit_prefilled(request, now_s, kv_ready_s)`: at admission it
reserves the prompt's KV and the transfer starts; the request joins the decode batch at the first step
boundary at or after its KV has landed, emitting the first token there (the prefill engine's token
travels with the KV: the transfer counts towards TTFT), and spends no prefill compute. A decode-side
preemption recomputes locally, as vLLM does; a request still waiting for its KV is never preempted.

Pure: no clock, no I/O; every call carries `now_s`. Times before the last call's are refused.
"""

from __future__ import annotations

import heapq
import math
from enum import StrEnum

from opscale.engine.config import EngineConfig
from opscale.engine.decode_run import DecodeRun
from opscale.engine.errors import EngineNotAcceptingError, RequestTooLargeError, WrongRoleError
from opscale.engine.host_tier import HostTier
from opscale.engine.outputs import (
    EngineOutput,
    EngineReport,
    Finished,
    FirstToken,
    Preempted,
    PrefillDone,
    Tokens,
)
from opscale.engine.scheduler import Scheduler, Step, Wait
from opscale.engine.sequence import Seq
from opscale.engine.usage import UsageMeter
from opscale.model import ModelSpec, OperatorReplicas, Request, Role, Sku
from opscale.perf.flops import ModelFlops
from opscale.perf.latency import LatencyModel
from opscale.perf.operator_replicas import with_operator_replicas
from opscale.perf.operators import Footprint
from opscale.perf.transfer import PCIE_P2P_GBPS

# A KV landing this little after a step boundary joins at that boundary. A landing time is the admission
# time plus a transfer recovered from absolute times (kv_ready_s - now_s), so two transfers of the same
# length land an ulp or two apart; without the slack the later one misses the boundary the other joins
# at and waits a whole decode step (tens of ms) for a difference of 1e-16 s. 1 ns is far above the
# rounding of any simulated time (an ulp of 1e6 s is 1e-10 s) and far below any step.
LANDING_SLACK_S = 1e-9


class EngineState(StrEnum):
    ACCEPTING = "accepting"
    DRAINING = "draining"
    STOPPED = "stopped"


class SimEngine(Scheduler):
    """One simulated engine instance serving `model` on `tp` GPUs of `sku`.

    The shell calls `submit(request, now_s)` on arrival (`submit_prefilled` on a decode engine),
    `advance(now_s)` at `next_event_s()` (or whenever it likes) to collect outputs, and `report(now_s)`
    for heartbeats; `cancel`, `drain` and `stop` end requests or the engine. Outputs produced inside
    `submit`, `cancel` or `stop` (runs that ended before their time) are returned by the next `advance`.

    `footprint` replaces what `sku` and `tp` imply for KV capacity and power, for a deployment whose
    GPUs are not `tp` GPUs of one SKU (an operator-split deployment, see opscale.perf.operators).

    Accounting, as of the last step boundary: `busy_s` (time in iterations), `energy_j` (power
    integrated from the first call, idle draw included), `flops` (arithmetic done, over
    `peak_flops_per_s` of its GPUs: SM activity), `preemptions`, `prefill_tokens` (prompt tokens
    prefilled, cached prefix tokens and recomputation included), `prefill_tokens_computed`
    (recomputation included, cached prefix tokens excluded), `output_tokens`, `decode_tokens` (the
    output tokens of decode steps, i.e. all but the token a prefill samples), `finished`, `cancelled`,
    `handed_off` (prefill role), `prefix_hit_tokens` and `prefix_queried_tokens` (prompt tokens
    admitted for prefill, recomputation included) with their ratio `prefix_hit_rate`. The meter
    (opscale.engine.usage) says what GPU utilisation and SM activity mean.

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
        total_blocks = int(kv_budget_bytes // (bs * model.kv_bytes_per_token)) if kv_budget_bytes > 0 else 0
        if total_blocks <= 0:
            raise ValueError(
                f"instance {instance_id}: {model.name} weights ({model.weight_bytes / 1e9:.1f} GB) leave no room "
                f"for a KV cache in {where}")
        self._prefill_only = self.role is Role.PREFILL
        self._decode_only = self.role is Role.DECODE
        super().__init__(cfg, total_blocks, latency, ModelFlops.of(model), decode_only=self._decode_only)
        self._own_latency = latency
        self.operator_replicas: tuple[OperatorReplicas, ...] = ()
        max_len = cfg.max_model_len if cfg.max_model_len is not None else model.max_context
        self.max_model_len = max_len
        # A request must fit the KV cache on its own, or it could never run.
        self.max_request_tokens = min(max_len, total_blocks * bs)
        self._emit_tokens = cfg.emit_tokens
        self.emit_first_tokens = True
        self._kv_bytes_per_token = model.kv_bytes_per_token
        if cfg.host_kv_cache_gb > 0 and self._cache is not None:
            block_bytes = cfg.prefix_block_tokens * model.kv_bytes_per_token
            capacity = int(cfg.host_kv_cache_gb * 1e9 // block_bytes)
            if capacity < 1:
                raise ValueError(f"host_kv_cache_gb ({cfg.host_kv_cache_gb:g}) holds no {cfg.prefix_block_tokens}-token "
                                 f"block of {model.name} ({block_bytes / 1e9:.3f} GB each)")
            gbps = cfg.host_kv_load_gbps if cfg.host_kv_load_gbps is not None else PCIE_P2P_GBPS
            self._host = HostTier(capacity)
            self._host_block_s = block_bytes / (gbps * 1e9)
        if footprint is None:
            self._usage = UsageMeter(sku.idle_power_w * tp, (sku.max_power_w - sku.idle_power_w) * tp,
                                     cfg.report_window_s, self.flops_model)
            self.peak_flops_per_s = sku.peak_tflops * 1e12 * tp
        else:
            self._usage = UsageMeter(footprint.idle_power_w, footprint.dynamic_power_w, cfg.report_window_s,
                                     self.flops_model)
            self.peak_flops_per_s = footprint.peak_flops_per_s

        self._state = EngineState.ACCEPTING
        self._plan: DecodeRun | Step | Wait | None = None
        self._clock_s = 0.0  # the last step boundary (or the last time seen, while idle)
        self._now_s = 0.0  # the latest time any call carried
        self._pending: list[EngineOutput] = []
        self._cancelled: list[Seq] = []  # to remove at the next step boundary
        self._started = False  # energy is integrated from the engine's first call

        # Accounting (the KV layer counts prefix hits, the scheduler preemptions, the meter the rest).
        self.finished = 0
        self.cancelled = 0
        self.handed_off = 0

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
    def busy_s(self) -> float:
        """Time spent in iterations."""
        return self._usage.busy_s

    @property
    def energy_j(self) -> float:
        """Power integrated from the engine's first call, idle draw included."""
        return self._usage.energy_j

    @property
    def flops(self) -> float:
        """Floating-point work done in iterations (opscale.perf.flops)."""
        return self._usage.flops

    @property
    def output_tokens(self) -> int:
        return self._usage.output_tokens

    @property
    def decode_tokens(self) -> int:
        return self._usage.decode_tokens

    @property
    def prefill_tokens(self) -> int:
        return self._usage.prefill_tokens

    @property
    def prefill_tokens_computed(self) -> int:
        return self._usage.prefill_computed_tokens

    def submit(self, request: Request, now_s: float) -> None:
        """Queue `request`, arriving at `now_s`. Raises EngineNotAcceptingError when draining or stopped,
        RequestTooLargeError when it can never fit, WrongRoleError on a decode engine, ValueError for a
        duplicate id or a past time."""
        if self._decode_only:
            raise WrongRoleError(f"instance {self.instance_id} is a decode instance: request "
                                 f"{request.request_id} must come prefilled (submit_prefilled)")
        hashes = self._usable_hashes(request) if self._cache is not None and request.prefix_hashes else ()
        self._enqueue(Seq(request, hashes), now_s)

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
        seq = Seq(request, ())
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
        if plan is None or plan.start_s >= now_s or isinstance(plan, Wait):
            if isinstance(plan, Wait):
                self._clock_s = max(self._clock_s, now_s)  # waiting is no iteration: leave now
            self._plan = None  # nothing in flight: leave now
            self._apply_cancellations()
        elif isinstance(plan, DecodeRun):
            steps = plan.steps_by(now_s)
            if steps < plan.k:
                self._plan = plan.cut(steps)
        return True

    def set_operator_replicas(self, replicas: tuple[OperatorReplicas, ...]) -> None:
        """Iterations from the next one on run with these elastic operator replicas serving beside the
        engine (opscale.perf.operator_replicas prices them); () gives the engine its own model back.
        The engine is not restarted: queued and running requests stay. Its power and KV cache stay the
        base instance's: the replicas' GPUs are accounted by whoever holds them."""
        if replicas == self.operator_replicas:
            return
        self.operator_replicas = replicas
        self.latency = with_operator_replicas(self._own_latency, self.model, self.sku, self.tp, replicas)
        self._decode_cache.clear()

    def drain(self) -> None:
        """Refuse new requests; those already queued or running still finish."""
        if self._state is EngineState.ACCEPTING:
            self._state = EngineState.DRAINING

    def stop(self, now_s: float) -> list[Request]:
        """Stop the engine at `now_s` and hand back every request it had not finished (the caller
        re-routes or fails them). Outputs up to now_s remain available from `advance`."""
        self._advance_to(now_s, self._pending)
        plan = self._plan
        if isinstance(plan, Wait):
            self._usage.idle_until(now_s)
        elif plan is not None and plan.start_s < now_s:
            # The iteration in flight ran until now at its own power; its outputs are lost.
            if isinstance(plan, Step):
                busy_s, flops = plan.busy_s, plan.flops(self.flops_model)
            else:
                busy_s, flops = plan.busy_s(plan.k), plan.flops(plan.k, self.flops_model)
            self._usage.record_interrupted(plan.start_s, now_s, plan.end_s - plan.start_s, busy_s, flops)
        unfinished = [s.req for s in self._running.values()] + [s.req for s in self._waiting]
        self._state = EngineState.STOPPED
        self._plan = None
        self._cancelled.clear()
        self._forget_all()
        return unfinished

    def report(self, now_s: float) -> EngineReport:
        """Load and power at `now_s`, as the node-agent publishes them (state as of the last boundary)."""
        usage = self._usage
        window_s = usage.window_s
        since = now_s - window_s
        done = usage.window(now_s)
        busy, flops = done.busy_s, done.flops
        stopped = self._state is EngineState.STOPPED
        plan = None if stopped else (self._plan if self._plan is not None else self._make_plan())
        power_w = 0.0 if stopped else usage.idle_w
        decode_tokens = done.decode_tokens
        if plan is not None and not isinstance(plan, Wait):
            run_s = plan.end_s - plan.start_s
            if plan.start_s < now_s:
                # The run in flight counts its time inside the window, and its FLOPs in proportion;
                # a decode run, also the tokens of its steps over by now_s (it may run for many seconds).
                inside_s = max(0.0, min(plan.end_s, now_s) - max(plan.start_s, since))
                busy += inside_s
                if run_s > 0:
                    plan_flops = plan.flops(self.flops_model) if isinstance(plan, Step) else plan.flops(
                        plan.k, self.flops_model)
                    flops += plan_flops * inside_s / run_s
                if isinstance(plan, DecodeRun):
                    steps = _steps_over(plan, now_s) - (_steps_over(plan, since) if plan.start_s < since else 0)
                    decode_tokens += plan.batch * steps
            busy_s = plan.busy_s if isinstance(plan, Step) else plan.busy_s(plan.k)
            power_w = usage.idle_w + usage.dynamic_w * (busy_s / run_s if run_s > 0 else 0.0)
        return EngineReport(
            instance_id=self.instance_id,
            queued=len(self._waiting),
            running=len(self._running),
            outstanding_tokens=self.outstanding_tokens(),
            kv_used_frac=self._used_blocks / self.total_blocks,
            tokens_per_s=done.output_tokens / window_s,
            busy_frac=min(1.0, busy / window_s),
            power_w=power_w,
            idle=self.is_idle,
            sm_activity=min(1.0, flops / (window_s * self.peak_flops_per_s)),
            decode_tps=decode_tokens / window_s,
            prefill_tps=done.prefill_tokens / window_s,
            prefill_missed_tps=done.prefill_computed_tokens / window_s,
            kv_capacity_tokens=self.total_blocks * self._bs,
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

    def _enqueue(self, seq: Seq, now_s: float) -> None:
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
            if isinstance(plan, Step):
                if plan.start_s >= now_s:
                    self._plan = None  # decided at this very instant: decide again with the newcomer
            elif isinstance(plan, Wait):
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
            self._usage.start(now_s)
            self._clock_s = now_s
        while True:
            plan = self._plan if self._plan is not None else self._make_plan()
            if plan is None:
                self._usage.idle_until(now_s)
                self._clock_s = now_s
                return
            if plan.end_s > now_s:
                return
            self._plan = None
            if isinstance(plan, DecodeRun):
                self._commit_run(plan, out)
            elif isinstance(plan, Step):
                self._commit_step(plan, out)
            else:
                self._commit_wait(plan, out)
            self._clock_s = plan.end_s
            if self._cancelled:
                self._apply_cancellations()

    # --- planning (reads state, never changes it) -------------------------------------------------------

    def _make_plan(self) -> DecodeRun | Step | Wait | None:
        if self._state is EngineState.STOPPED or (not self._running and not self._waiting):
            return None
        if self._zero_pass_s == self._clock_s and self._waiting:
            step = self._continue_zero_pass(self._clock_s)
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
                    run = DecodeRun(self._clock_s, self._clock_s + elapsed_s, k, batch, ctx0, fixed_s,
                                    per_ctx_s, busy_fixed_s, busy_per_ctx_s)
                    if self._transferring:
                        # A KV landing mid-run joins at the first boundary at or after it: cut there.
                        landing_s = min(s.kv_at_s for s in self._transferring.values()) - LANDING_SLACK_S
                        steps = max(1, run.steps_by(landing_s))
                        if steps < k:
                            run = run.cut(steps)
                    self._plan = run
                    return run
            elif self._transferring:
                wait = Wait(self._clock_s, min(s.kv_at_s for s in self._transferring.values()))
                self._plan = wait
                return wait
        step = self._plan_step(self._clock_s)
        self._plan = step
        return step

    # --- commits (the only code that changes sequences) -------------------------------------------------

    def _commit_run(self, run: DecodeRun, out: list[EngineOutput]) -> None:
        k, end = run.k, run.end_s
        self._used_blocks += self._new_blocks(k)
        if self._cache is not None:
            # Cached prefixes make way as the KV grows; nothing is released before the run's end.
            self._evict()
        self._steps += k
        # run.busy_s(k), written out (the same expression, so the same rounding): once per decode run.
        # The batch's context summed over the k steps, k * ctx0 + batch * k * (k - 1) / 2, is also the
        # (query, key) pairs of its attention.
        tokens = run.batch * k
        ctx_steps = k * run.ctx0 + tokens * (k - 1) / 2
        busy_s = k * run.busy_fixed_s + run.busy_per_ctx_s * ctx_steps
        self._usage.record_run(run.start_s, end, busy_s, tokens, ctx_steps)
        if self._emit_tokens:
            for seq in self._running.values():
                if seq.decoding:
                    out.append(Tokens(seq.rid, k, end))
        heap = self._finish_heap
        if heap and heap[0][0] <= self._steps:
            self._pop_finished(end, out)
        if self._transferring:
            self._join_landed(end, out)

    def _commit_step(self, step: Step, out: list[EngineOutput]) -> None:
        start, end = step.start_s, step.end_s
        if end == start:
            self._note_zero_pass(step)
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
                self._admit(step.admits, step.hits, step.host_hits, start)
            if self._cache is not None:
                # Evict when the KV is taken (decode growth, admissions), before this boundary frees any.
                self._evict()
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
        computed = step.prefill_tokens
        self._usage.record_run(start, end, step.busy_s, tokens, step.attention, computed + step.cached_tokens,
                               computed, tokens - step.batch)
        heap = self._finish_heap
        if heap and heap[0][0] <= self._steps:
            self._pop_finished(end, out)
        if self._transferring:
            self._join_landed(end, out)

    def _commit_wait(self, wait: Wait, out: list[EngineOutput]) -> None:
        self._usage.idle_until(wait.end_s)
        self._join_landed(wait.end_s, out)

    def _join_landed(self, end: float, out: list[EngineOutput]) -> None:
        """Prefilled requests whose KV has landed by this boundary (within LANDING_SLACK_S) join the
        decode batch, in admission order; the first token, handed over with the KV, reaches the client now."""
        landed = [seq for seq in self._transferring.values() if seq.kv_at_s <= end + LANDING_SLACK_S]
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

    def _hand_off(self, seq: Seq, end: float, out: list[EngineOutput]) -> None:
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

    def _finish(self, seq: Seq, end: float, out: list[EngineOutput]) -> None:
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


def _steps_over(run: DecodeRun, at_s: float) -> int:
    """The steps of `run` that have ended by `at_s`."""
    steps = run.steps_by(at_s)  # the fewest steps ending at or after at_s
    return steps if steps == 0 or run.start_s + run.elapsed_s(steps) <= at_s else steps - 1
