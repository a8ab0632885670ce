"""The event-compressed SimEngine against a plain step-by-step reference of the same scheduler.

The reference below keeps explicit per-sequence counters and KV blocks and runs one iteration at a
time; the engine advances whole decode runs in closed form, cuts them on arrivals and keeps its
counters lazily. Both must give the same token times on any workload.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from opscale.engine import EngineConfig, Finished, FirstToken, Preempted, SimEngine, Tokens, replay
from opscale.model import Request
from opscale.perf import RooflineLatencyModel, load_catalog

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
MODEL = CATALOG.model("Llama-2-7B")
SKU = CATALOG.sku("A10G")
LATENCY = RooflineLatencyModel(MODEL, SKU, 1)


@dataclass
class RefSeq:
    request: Request
    target: int
    computed: int = 0
    generated: int = 0
    held: int = 0
    token_times: list[float] = field(default_factory=list)
    preemptions: int = 0

    @property
    def prefilled(self) -> bool:
        return self.computed >= self.target


def reference_run(requests: list[Request], config: EngineConfig, total_blocks: int) -> dict[str, RefSeq]:
    """One iteration at a time: decodes (preempting the newest on KV shortage), running prefills,
    then FCFS admissions reserving KV for the whole prefill."""
    bs = config.block_size
    waiting: deque[RefSeq] = deque()
    running: list[RefSeq] = []
    done: dict[str, RefSeq] = {}
    arrivals = deque(requests)
    t = 0.0
    while arrivals or waiting or running:
        if not waiting and not running:
            t = max(t, arrivals[0].arrival_s)
        while arrivals and arrivals[0].arrival_s <= t:
            request = arrivals.popleft()
            waiting.append(RefSeq(request, target=request.prompt_tokens))
        decoders = [s for s in running if s.prefilled]
        need = sum(1 for s in decoders if s.computed % bs == 0)
        free = total_blocks - sum(s.held for s in running)
        victims: list[RefSeq] = []
        while need > free:
            victim = running.pop()
            victims.append(victim)
            free += victim.held
            if victim in decoders:
                decoders.remove(victim)
                if victim.computed % bs == 0:
                    need -= 1
            victim.held = 0
            victim.computed = 0
            victim.target = victim.request.prompt_tokens + victim.generated
            victim.preemptions += 1
        budget = config.max_batched_tokens - len(decoders)
        chunks: list[tuple[RefSeq, int]] = []
        for s in running:
            if not s.prefilled and budget > 0:
                n = min(s.target - s.computed, budget)
                chunks.append((s, n))
                budget -= n
        admitted: list[RefSeq] = []
        if not victims:
            free_now = free - need
            for s in waiting:
                blocks = math.ceil(s.target / bs)
                if budget <= 0 or len(running) + len(admitted) >= config.max_num_seqs or blocks > free_now:
                    break
                free_now -= blocks
                admitted.append(s)
                n = min(s.target, budget)
                chunks.append((s, n))
                budget -= n
        prefill = sum(n for _, n in chunks)
        prefill_ctx = sum(s.computed for s, _ in chunks)
        pairs = sum(n * s.computed + n * (n + 1) // 2 for s, n in chunks)
        ctx = sum(s.computed + 1 for s in decoders)
        end = t + LATENCY.iteration_s(prefill, prefill_ctx, len(decoders), ctx, prefill_attn_pairs=pairs)
        waiting.extendleft(victims)
        for s in admitted:
            waiting.popleft()
            running.append(s)
            s.held = math.ceil(s.target / bs)
        for s in decoders:
            s.computed += 1
            s.held = math.ceil(s.computed / bs)
            s.generated += 1
            s.token_times.append(end)
        for s, n in chunks:
            s.computed += n
            if s.prefilled:
                s.generated += 1
                s.token_times.append(end)
        for s in [s for s in running if s.generated >= s.request.output_tokens]:
            running.remove(s)
            done[s.request.request_id] = s
        t = end
    return done


def _requests(draw: st.DrawFn, limit: int) -> list[Request]:
    n = draw(st.integers(1, 24))
    t = 0.0
    requests = []
    for i in range(n):
        t += draw(st.sampled_from([0.0, 0.003, 0.02, 0.1, 0.5, 2.0])) * draw(st.floats(0.5, 1.5))
        prompt = draw(st.integers(1, min(600, limit - 1)))
        output = draw(st.integers(1, min(300, limit - prompt)))
        requests.append(Request(f"r{i}", MODEL.name, "interactive", "eu", t, prompt, output))
    return requests


@st.composite
def workloads(draw: st.DrawFn) -> tuple[EngineConfig, list[Request]]:
    max_num_seqs = draw(st.sampled_from([1, 2, 4, 16]))
    config = EngineConfig(
        max_num_seqs=max_num_seqs,
        max_batched_tokens=draw(st.sampled_from([16, 64, 512])) + max_num_seqs,
        block_size=draw(st.sampled_from([1, 4, 16])),
        # 0.58 .. 0.7 of an A10G leaves 25 .. 450 blocks of 16 tokens: KV pressure and preemptions.
        gpu_memory_utilization=draw(st.sampled_from([0.58, 0.6, 0.65, 0.7])),
        max_run_steps=draw(st.sampled_from([None, None, 1, 3])),
    )
    engine = SimEngine("probe", MODEL, SKU, 1, LATENCY, config)
    return config, _requests(draw, engine.max_request_tokens)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_closed_form_engine_matches_step_by_step_reference(workload: tuple[EngineConfig, list[Request]]) -> None:
    config, requests = workload
    engine = SimEngine("e", MODEL, SKU, 1, LATENCY, config)
    expected = reference_run(requests, config, engine.total_blocks)
    outputs = replay(engine, requests)

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
            assert o.at_s == pytest.approx(expected[rid].token_times[produced[rid] - 1], rel=1e-9, abs=1e-9)

    assert sorted(finished) == sorted(expected)
    for rid, ref in expected.items():
        assert len(ref.token_times) == ref.request.output_tokens
        assert first[rid] == pytest.approx(ref.token_times[0], rel=1e-9, abs=1e-9)
        assert finished[rid].at_s == pytest.approx(ref.token_times[-1], rel=1e-9, abs=1e-9)
        assert finished[rid].output_tokens == ref.request.output_tokens
        assert produced[rid] == ref.request.output_tokens
        assert preempted.get(rid, 0) == ref.preemptions
    assert engine.preemptions == sum(ref.preemptions for ref in expected.values())
    event("preemptions" if engine.preemptions else "no preemption")
    assert engine.is_idle
    assert engine.kv_used_frac == 0.0
