"""The event-compressed SimEngine against a plain step-by-step reference of the same scheduler.

The reference below keeps explicit per-sequence counters, recounts KV blocks from scratch and runs one
iteration at a time; the engine advances whole decode runs in closed form, cuts them on arrivals and KV
landings, keeps its counters lazily and prices admissions before applying them. Both must give the same
token times on any workload: plain, with prefix caching, and on a decode engine fed prefilled requests.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from opscale.engine import (
    EngineConfig,
    Finished,
    FirstToken,
    Preempted,
    PrefillDone,
    SimEngine,
    Tokens,
    replay,
)
from opscale.engine.outputs import EngineOutput
from opscale.model import Request, Role
from opscale.perf import LatencyModel, RooflineLatencyModel, load_catalog
from opscale.perf.operators import Footprint, OperatorSplitLatencyModel, roofline_factory, split_groups
from opscale.perf.transfer import Link

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
MODEL = CATALOG.model("Llama-2-7B")
SKU = CATALOG.sku("A10G")
LATENCY = RooflineLatencyModel(MODEL, SKU, 1)
# Attention and MLP on separate A10Gs, two attention replicas, micro-batches of at most 48 tokens.
SPLIT = OperatorSplitLatencyModel(
    roofline_factory(MODEL), split_groups((SKU, 1, 2), (SKU, 1, 1), attention_max_batch_tokens=48,
                                          mlp_max_batch_tokens=48), Link(30e-6, 40.0))


@dataclass
class RefSeq:
    request: Request
    target: int
    hashes: tuple[int, ...] = ()
    xfer_s: float | None = None  # a prefilled request's KV transfer time, until its KV has landed
    kv_at: float = 0.0
    computed: int = 0
    generated: int = 0
    pinned: list[int] = field(default_factory=list)
    reg: int = 0
    token_times: list[float] = field(default_factory=list)
    preemptions: int = 0

    @property
    def prefilled(self) -> bool:
        return self.xfer_s is None and self.computed >= self.target


@dataclass
class RefResult:
    done: dict[str, RefSeq]
    hit_tokens: int = 0
    queried_tokens: int = 0
    prefill_tokens: int = 0


def reference_run(requests: list[Request], config: EngineConfig, total_blocks: int,
                  transfer_s: dict[str, float] | None = None, latency: LatencyModel = LATENCY) -> RefResult:
    """One iteration at a time: decodes (preempting the newest on KV shortage), running prefills, then
    FCFS admissions reserving KV for the whole prefill, skipping cached prefix blocks. Requests in
    `transfer_s` arrive prefilled: they reserve their KV at admission and join the decoders at the first
    boundary after it has landed, with their first token."""
    bs, p_tokens = config.block_size, config.prefix_block_tokens
    pb = p_tokens // bs
    caching = config.enable_prefix_caching
    transfers = transfer_s or {}
    refs: dict[int, int] = {}  # cached prefix hash -> running sequences using it
    lru: list[int] = []  # cached hashes nobody uses, least recently released first
    result = RefResult({})
    waiting: deque[RefSeq] = deque()
    running: list[RefSeq] = []
    arrivals = deque(requests)

    def usable(request: Request) -> tuple[int, ...]:
        if not caching:
            return ()
        hashes = request.prefix_hashes[:request.prompt_tokens // p_tokens]
        for i, h in enumerate(hashes):
            if h in hashes[:i]:
                return hashes[:i]
        return hashes

    def own(s: RefSeq) -> int:
        if s.xfer_s is not None:
            return math.ceil(s.target / bs)
        held = s.computed if s.prefilled else s.target
        return math.ceil(held / bs) - len(s.pinned) * pb

    def used() -> int:
        return sum(own(s) for s in running) + pb * sum(1 for n in refs.values() if n > 0)

    def release(s: RefSeq) -> None:
        for h in reversed(s.pinned):
            refs[h] -= 1
            if refs[h] == 0:
                lru.append(h)
        s.pinned = []

    def finish(s: RefSeq) -> None:
        release(s)
        running.remove(s)
        result.done[s.request.request_id] = s

    def join(t: float) -> None:
        for s in [s for s in running if s.xfer_s is not None and s.kv_at <= t]:
            s.xfer_s = None
            s.computed = s.target
            s.token_times.append(t)
            if s.generated >= s.request.output_tokens:
                finish(s)

    t = 0.0
    while arrivals or waiting or running:
        while arrivals and arrivals[0].arrival_s <= t:
            request = arrivals.popleft()
            seq = RefSeq(request, target=request.prompt_tokens, hashes=usable(request))
            if request.request_id in transfers:
                seq.xfer_s, seq.generated, seq.hashes = transfers[request.request_id], 1, ()
            waiting.append(seq)
        decoders = [s for s in running if s.prefilled]
        prefilling = [s for s in running if s.xfer_s is None and not s.prefilled]
        need = sum(1 for s in decoders if s.computed % bs == 0)
        victims: list[RefSeq] = []
        while need > total_blocks - used():
            victim = next(s for s in reversed(running) if s.xfer_s is None)
            running.remove(victim)
            victims.append(victim)
            if victim in decoders:
                decoders.remove(victim)
                if victim.computed % bs == 0:
                    need -= 1
            else:
                prefilling.remove(victim)
            release(victim)
            victim.computed = 0
            victim.reg = 0
            victim.target = victim.request.prompt_tokens + victim.generated
            victim.preemptions += 1
        budget = config.max_batched_tokens - len(decoders)
        chunks: list[tuple[RefSeq, int, int]] = []  # (sequence, tokens, cached before the chunk)
        for s in prefilling:
            if budget > 0:
                n = min(s.target - s.computed, budget)
                chunks.append((s, n, s.computed))
                budget -= n
        admitted = 0
        while not victims and waiting and len(running) < config.max_num_seqs:
            s = waiting[0]
            free_now = total_blocks - used() - need
            if s.xfer_s is not None:
                if math.ceil(s.target / bs) > free_now:
                    break
                s.kv_at = t + s.xfer_s
            else:
                if budget <= 0:
                    break
                hit = 0
                limit = min(len(s.hashes), (s.target - 1) // p_tokens)
                while hit < limit and s.hashes[hit] in refs:
                    hit += 1
                cost = math.ceil(s.target / bs) - hit * pb + pb * sum(1 for h in s.hashes[:hit] if refs[h] == 0)
                if cost > free_now:
                    break
                for h in s.hashes[:hit]:
                    if refs[h] == 0:
                        lru.remove(h)
                    refs[h] += 1
                s.pinned = list(s.hashes[:hit])
                s.computed, s.reg = hit * p_tokens, hit
                result.hit_tokens += s.computed
                result.queried_tokens += s.target if caching else 0
                n = min(s.target - s.computed, budget)
                chunks.append((s, n, s.computed))
                budget -= n
            waiting.popleft()
            running.append(s)
            admitted += 1
        if not (chunks or decoders or victims or admitted):
            # Nothing to do: sleep until something arrives or some KV lands.
            wake = [arrivals[0].arrival_s] if arrivals else []
            wake += [s.kv_at for s in running if s.xfer_s is not None]
            t = max(t, min(wake))
            join(t)
            continue
        prefill = sum(n for _, n, _ in chunks)
        prefill_ctx = sum(c for _, _, c in chunks)
        pairs = sum(n * c + n * (n + 1) // 2 for _, n, c in chunks)
        ctx = sum(s.computed + 1 for s in decoders)
        end = t
        if prefill or decoders or victims:
            end += latency.iteration_s(prefill, prefill_ctx, len(decoders), ctx, prefill_attn_pairs=pairs)
        waiting.extendleft(victims)
        for s in decoders:
            s.computed += 1
            s.generated += 1
            s.token_times.append(end)
        room = total_blocks - used()
        while pb * len(lru) > room:
            del refs[lru.pop(0)]
        for s, n, _ in chunks:
            s.computed += n
            result.prefill_tokens += n
            while s.reg < min(len(s.hashes), s.computed // p_tokens):
                h = s.hashes[s.reg]
                s.reg += 1
                if h not in refs:
                    refs[h] = 1
                    s.pinned.append(h)
            if s.prefilled:
                s.generated += 1
                s.token_times.append(end)
                if s.generated >= s.request.output_tokens:
                    finish(s)
        for s in decoders:
            if s.generated >= s.request.output_tokens:
                finish(s)
        join(end)
        t = end
    return result


def check_against_reference(engine: SimEngine, outputs: list[EngineOutput], expected: RefResult) -> None:
    first = {o.request_id: o.at_s for o in outputs if isinstance(o, FirstToken)}
    finished = {o.request_id: o for o in outputs if isinstance(o, Finished)}
    preempted: dict[str, int] = {}
    produced: dict[str, int] = {}
    for o in outputs:
        if isinstance(o, Preempted):
            preempted[o.request_id] = preempted.get(o.request_id, 0) + 1
        elif isinstance(o, FirstToken | Tokens):
            rid = o.request_id
            produced[rid] = produced.get(rid, 0) + (o.count if isinstance(o, Tokens) else 1)
            # The engine says: by at_s, the request has produced `produced` tokens, the last one at at_s.
            assert o.at_s == pytest.approx(expected.done[rid].token_times[produced[rid] - 1], rel=1e-9, abs=1e-9)

    assert sorted(finished) == sorted(expected.done)
    for rid, ref in expected.done.items():
        assert len(ref.token_times) == ref.request.output_tokens
        assert first[rid] == pytest.approx(ref.token_times[0], rel=1e-9, abs=1e-9)
        assert finished[rid].at_s == pytest.approx(ref.token_times[-1], rel=1e-9, abs=1e-9)
        assert finished[rid].output_tokens == ref.request.output_tokens
        assert produced[rid] == ref.request.output_tokens
        assert preempted.get(rid, 0) == ref.preemptions
    assert engine.preemptions == sum(ref.preemptions for ref in expected.done.values())
    assert engine.prefill_tokens_computed == expected.prefill_tokens
    assert engine.prefix_hit_tokens == expected.hit_tokens
    assert engine.prefix_queried_tokens == expected.queried_tokens
    event("preemptions" if engine.preemptions else "no preemption")
    assert engine.is_idle
    assert engine.kv_used_frac == 0.0


def _requests(draw: st.DrawFn, limit: int, prefix_block: int | None = None) -> list[Request]:
    n = draw(st.integers(1, 24))
    t = 0.0
    requests = []
    for i in range(n):
        t += draw(st.sampled_from([0.0, 0.003, 0.02, 0.1, 0.5, 2.0])) * draw(st.floats(0.5, 1.5))
        prompt = draw(st.integers(1, min(600, limit - 1)))
        output = draw(st.integers(1, min(300, limit - prompt)))
        hashes: tuple[int, ...] = ()
        if prefix_block is not None:
            # A few conversations; each request shares its conversation's first `shared` blocks and
            # then diverges (Mooncake-style hash chains).
            blocks = -(-prompt // prefix_block)
            conversation = draw(st.integers(0, 3))
            shared = draw(st.integers(0, blocks))
            hashes = tuple(conversation * 10_000 + j for j in range(shared))
            hashes += tuple(1_000_000 + i * 1000 + j for j in range(blocks - shared))
        requests.append(Request(f"r{i}", MODEL.name, "interactive", "eu", t, prompt, output, hashes))
    return requests


def _config(draw: st.DrawFn, **extra: object) -> EngineConfig:
    max_num_seqs = draw(st.sampled_from([1, 2, 4, 16]))
    return EngineConfig(
        max_num_seqs=max_num_seqs,
        max_batched_tokens=draw(st.sampled_from([16, 64, 512])) + max_num_seqs,
        block_size=draw(st.sampled_from([1, 4, 16])),
        # 0.58 .. 0.7 of an A10G leaves 25 .. 450 blocks of 16 tokens: KV pressure and preemptions.
        gpu_memory_utilization=draw(st.sampled_from([0.58, 0.6, 0.65, 0.7])),
        max_run_steps=draw(st.sampled_from([None, None, 1, 3])),
        **extra,
    )


@st.composite
def workloads(draw: st.DrawFn) -> tuple[EngineConfig, list[Request]]:
    config = _config(draw)
    engine = SimEngine("probe", MODEL, SKU, 1, LATENCY, config)
    return config, _requests(draw, engine.max_request_tokens)


@st.composite
def prefix_workloads(draw: st.DrawFn) -> tuple[EngineConfig, list[Request]]:
    config = _config(draw, enable_prefix_caching=True, prefix_block_tokens=draw(st.sampled_from([16, 32, 64])))
    engine = SimEngine("probe", MODEL, SKU, 1, LATENCY, config)
    return config, _requests(draw, engine.max_request_tokens, config.prefix_block_tokens)


@st.composite
def prefilled_workloads(draw: st.DrawFn) -> tuple[EngineConfig, list[Request], dict[str, float]]:
    config = _config(draw)
    engine = SimEngine("probe", MODEL, SKU, 1, LATENCY, config, role=Role.DECODE)
    requests = _requests(draw, engine.max_request_tokens)
    transfer = {r.request_id: draw(st.sampled_from([0.0, 0.001, 0.01, 0.05, 0.3])) for r in requests}
    return config, requests, transfer


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_closed_form_engine_matches_step_by_step_reference(workload: tuple[EngineConfig, list[Request]]) -> None:
    config, requests = workload
    engine = SimEngine("e", MODEL, SKU, 1, LATENCY, config)
    expected = reference_run(requests, config, engine.total_blocks)
    check_against_reference(engine, replay(engine, requests), expected)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix_workloads())
def test_prefix_caching_engine_matches_step_by_step_reference(workload: tuple[EngineConfig, list[Request]]) -> None:
    config, requests = workload
    engine = SimEngine("e", MODEL, SKU, 1, LATENCY, config)
    expected = reference_run(requests, config, engine.total_blocks)
    check_against_reference(engine, replay(engine, requests), expected)
    event("prefix hits" if engine.prefix_hit_tokens else "no prefix hit")


def _same_instant(outputs: list[int], max_num_seqs: int = 2) -> tuple[EngineConfig, list[Request], dict[str, float]]:
    """Prefilled requests all arriving at t=0 with their KV already there: the scheduler must take them in
    one pass per instant, not one pass per arrival (regression: a second arrival got its first token a
    decode step late)."""
    config = EngineConfig(max_num_seqs=max_num_seqs, max_batched_tokens=18, gpu_memory_utilization=0.58,
                          block_size=1)
    requests = [Request(f"r{i}", MODEL.name, "interactive", "eu", 0.0, 1, n) for i, n in enumerate(outputs)]
    return config, requests, {r.request_id: 0.0 for r in requests}


def _equal_transfers_in_rounding() -> tuple[EngineConfig, list[Request], dict[str, float]]:
    """Two prefilled requests with the same 1 ms transfer, submitted at 0.5 s and 1.0 s and admitted together
    when a long decode frees the KV: their landing times, rebuilt from absolute times, differ by an ulp.
    Both must join at the one boundary (regression: the later by 1e-16 s waited a whole decode step)."""
    config = EngineConfig(max_num_seqs=2, max_batched_tokens=18, gpu_memory_utilization=0.58, block_size=1)
    requests = [Request("r0", MODEL.name, "interactive", "eu", 0.0, 443, 45),
                Request("r1", MODEL.name, "interactive", "eu", 0.0, 404, 1),
                Request("r2", MODEL.name, "interactive", "eu", 0.5, 1, 1),
                Request("r3", MODEL.name, "interactive", "eu", 1.0, 1, 2)]
    return config, requests, {"r0": 0.0, "r1": 0.0, "r2": 0.001, "r3": 0.001}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefilled_workloads())
@example(_equal_transfers_in_rounding())
@example(_same_instant([2, 1]))
@example(_same_instant([1, 2, 1]))
@example(_same_instant([1, 1, 1, 1, 2, 1]))
def test_decode_engine_matches_step_by_step_reference(
    workload: tuple[EngineConfig, list[Request], dict[str, float]],
) -> None:
    config, requests, transfer = workload
    engine = SimEngine("e", MODEL, SKU, 1, LATENCY, config, role=Role.DECODE)
    expected = reference_run(requests, config, engine.total_blocks, transfer)
    outputs = replay(engine, requests, lambda r: transfer[r.request_id])
    check_against_reference(engine, outputs, expected)
    if not engine.preemptions:
        assert engine.prefill_tokens_computed == 0  # a decode engine recomputes only what it preempted


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix_workloads())
def test_prefill_engine_hands_off_when_a_unified_engine_would_emit_the_first_token(
    workload: tuple[EngineConfig, list[Request]],
) -> None:
    # With one output token a unified engine does exactly a prefill engine's work, KV release included.
    config, requests = workload
    one_token = [Request(r.request_id, r.model, r.tier, r.region, r.arrival_s, r.prompt_tokens, 1, r.prefix_hashes)
                 for r in requests]
    unified = SimEngine("u", MODEL, SKU, 1, LATENCY, config)
    prefill = SimEngine("p", MODEL, SKU, 1, LATENCY, config, role=Role.PREFILL)
    first = {o.request_id: o.at_s for o in replay(unified, one_token) if isinstance(o, FirstToken)}
    outputs = replay(prefill, requests)
    done = {o.request_id: o for o in outputs if isinstance(o, PrefillDone)}
    assert all(isinstance(o, PrefillDone) for o in outputs)
    assert sorted(done) == sorted(first)
    for rid, handed in done.items():
        assert handed.at_s == pytest.approx(first[rid], rel=1e-12, abs=1e-12)
        assert handed.first_token_s == handed.at_s
        assert handed.kv_bytes == next(r.prompt_tokens for r in requests if r.request_id == rid) * MODEL.kv_bytes_per_token
    assert prefill.handed_off == len(requests) and prefill.finished == 0
    assert prefill.prefix_hit_tokens == unified.prefix_hit_tokens
    assert prefill.is_idle and prefill.kv_used_frac == 0.0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_operator_split_engine_matches_step_by_step_reference(workload: tuple[EngineConfig, list[Request]]) -> None:
    # The split model is a LatencyModel like any other: the closed form must hold for it too. The
    # footprint keeps the plain engine's KV budget so that preemptions still happen.
    config, requests = workload
    kv_budget = config.gpu_memory_utilization * SKU.gpu_memory_gb * 1e9 - MODEL.weight_bytes
    footprint = Footprint(kv_budget, 2 * SKU.idle_power_w, 2 * (SKU.max_power_w - SKU.idle_power_w), 3,
                          3 * SKU.peak_tflops * 1e12)
    engine = SimEngine("e", MODEL, SKU, 1, SPLIT, config, footprint=footprint)
    expected = reference_run(requests, config, engine.total_blocks, latency=SPLIT)
    check_against_reference(engine, replay(engine, requests), expected)
