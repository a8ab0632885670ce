"""The laws a faithful engine obeys, scenario by scenario, on bare engines (no world).

The classic shapes (TTFT grows with prompt length and with queueing, TBT with batch size, throughput
saturates, KV exhaustion preempts yet everything finishes) are in test_engine.py; this file adds the
laws of the engine features: prefill/decode roles and the KV transfer, prefix caching, and
operator-split deployments.
"""

from __future__ import annotations

import random
import statistics

import pytest

from opscale.engine import (
    EngineConfig,
    Finished,
    FirstToken,
    PrefillDone,
    SimEngine,
    Tokens,
    replay,
    replay_disaggregated,
)
from opscale.engine.outputs import EngineOutput
from opscale.model import Request, Role
from opscale.perf import RooflineLatencyModel, load_catalog
from opscale.perf.operators import OperatorSplitLatencyModel, roofline_factory, split_groups
from opscale.perf.transfer import Link, Topology, kv_transfer_s

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
LLAMA3_8B = CATALOG.model("Llama-3-8B")
H100 = CATALOG.sku("H100-80GB")
LATENCY = RooflineLatencyModel(LLAMA3_8B, H100, 1)


def engine(role: Role = Role.UNIFIED, config: EngineConfig | None = None, name: str = "i") -> SimEngine:
    return SimEngine(name, LLAMA3_8B, H100, 1, LATENCY, config or EngineConfig(), role=role)


def req(i: int, at_s: float = 0.0, prompt: int = 512, output: int = 64, hashes: tuple[int, ...] = ()) -> Request:
    return Request(f"r{i}", LLAMA3_8B.name, "interactive", "eu", at_s, prompt, output, hashes)


def first_tokens(outputs: list[EngineOutput]) -> dict[str, float]:
    return {o.request_id: o.at_s for o in outputs if isinstance(o, FirstToken)}


def finished(outputs: list[EngineOutput]) -> dict[str, Finished]:
    return {o.request_id: o for o in outputs if isinstance(o, Finished)}


def ttfts(outputs: list[EngineOutput], requests: list[Request]) -> list[float]:
    first = first_tokens(outputs)
    return [first[r.request_id] - r.arrival_s for r in requests]


def mean_tbt(outputs: list[EngineOutput]) -> float:
    return statistics.fmean((f.at_s - f.first_token_s) / (f.output_tokens - 1)
                            for f in finished(outputs).values() if f.output_tokens > 1)


# --- prefill/decode roles -----------------------------------------------------------------------------


def test_decode_only_engine_spends_no_prefill_compute() -> None:
    requests = [req(i, at_s=0.01 * i, prompt=2000, output=100) for i in range(60)]
    decode = engine(Role.DECODE)
    outputs = replay(decode, requests, lambda r: 0.005)
    unified = engine()
    replay(unified, requests)

    assert decode.prefill_tokens_computed == 0 and decode.preemptions == 0
    assert unified.prefill_tokens_computed == sum(r.prompt_tokens for r in requests)
    assert sorted(finished(outputs)) == sorted(r.request_id for r in requests)
    # The first token of each request was sampled by a prefill engine: the decode engine makes the rest.
    assert decode.output_tokens == sum(r.output_tokens - 1 for r in requests)
    assert all(f.output_tokens == 100 for f in finished(outputs).values())
    assert decode.busy_s < unified.busy_s


def test_prefill_only_engine_spends_no_decode_steps() -> None:
    requests = [req(i, at_s=0.01 * i, prompt=1500, output=300) for i in range(40)]
    prefill = engine(Role.PREFILL)
    outputs = replay(prefill, requests)
    assert all(isinstance(o, PrefillDone) for o in outputs) and len(outputs) == len(requests)
    assert prefill.prefill_tokens_computed == sum(r.prompt_tokens for r in requests)
    assert prefill.output_tokens == len(requests)  # one sampled token each, handed over with the KV
    assert prefill.handed_off == len(requests) and prefill.finished == 0
    assert prefill.is_idle and prefill.kv_used_frac == 0.0


@pytest.mark.parametrize("prompt", [128, 2048, 6000])
def test_pd_transfer_adds_to_ttft_versus_unified(prompt: int) -> None:
    request = req(0, at_s=1.0, prompt=prompt, output=50)
    unified_ttft = ttfts(replay(engine(), [request]), [request])[0]

    previous = unified_ttft
    for topology in (Topology.SAME_HOST, Topology.SAME_SWITCH, Topology.CROSS_SWITCH, Topology.CROSS_REGION):
        transfer = kv_transfer_s(LLAMA3_8B, prompt, topology, sku_name=H100.name)
        outputs = replay_disaggregated(engine(Role.PREFILL, name="p"), engine(Role.DECODE, name="d"), [request],
                                       lambda r, kv_bytes, t=topology: kv_transfer_s(LLAMA3_8B, r.prompt_tokens, t,
                                                                                       sku_name=H100.name))
        pd_ttft = ttfts(outputs, [request])[0]
        # On idle engines the prefill is the same iteration and the decode engine takes the request
        # the moment its KV lands: P/D TTFT is exactly unified TTFT plus the transfer.
        assert pd_ttft == pytest.approx(unified_ttft + transfer, rel=1e-9)
        assert pd_ttft > previous  # and the farther the decode instance, the later the first token
        previous = pd_ttft
        assert finished(outputs)["r0"].output_tokens == 50


def test_pd_keeps_long_prefills_out_of_the_decode_batch() -> None:
    # DistServe's point: a unified engine mixes prompt chunks into decode iterations and every running
    # request's TBT pays for them; a decode engine only decodes.
    rng = random.Random(7)
    requests, t = [], 0.0
    for i in range(150):
        t += rng.expovariate(4.0)
        requests.append(req(i, at_s=t, prompt=rng.randint(3000, 7000), output=rng.randint(100, 400)))
    unified = replay(engine(), requests)
    pd = replay_disaggregated(engine(Role.PREFILL, name="p"), engine(Role.DECODE, name="d"), requests,
                              lambda r, kv_bytes: Link(100e-6, 40.0).transfer_s(kv_bytes))
    assert mean_tbt(pd) < 0.8 * mean_tbt(unified)
    assert sorted(finished(pd)) == sorted(finished(unified))


# --- prefix caching -------------------------------------------------------------------------------------


def shared_prefix_workload(n: int, rate_rps: float, seed: int = 3) -> list[Request]:
    """Chat-like: 6 system prompts of 4 prefix blocks (2048 tokens), each request adding 1 or 2 blocks
    of its own."""
    rng = random.Random(seed)
    requests, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(rate_rps)
        system = rng.randrange(6)
        own_blocks = rng.randint(1, 2)
        prompt = 2048 + 512 * own_blocks - rng.randint(0, 300)
        hashes = tuple(system * 100 + j for j in range(4)) + tuple(10_000 + i * 10 + j for j in range(own_blocks))
        requests.append(req(i, at_s=t, prompt=prompt, output=rng.randint(20, 200), hashes=hashes))
    return requests


def test_prefix_caching_raises_the_hit_rate_and_lowers_ttft_on_shared_prefixes() -> None:
    requests = shared_prefix_workload(400, rate_rps=8.0)
    plain = engine()
    plain_out = replay(plain, requests)
    cached = engine(config=EngineConfig(enable_prefix_caching=True))
    cached_out = replay(cached, requests)

    assert plain.prefix_hit_rate == 0.0 and plain.prefix_hit_tokens == 0
    # Each system prompt misses once; every later request reuses its 2048 tokens of ~2600.
    assert cached.prefix_hit_rate > 0.7
    assert cached.prefill_tokens_computed == plain.prefill_tokens_computed - cached.prefix_hit_tokens
    assert statistics.fmean(ttfts(cached_out, requests)) < 0.6 * statistics.fmean(ttfts(plain_out, requests))
    assert sorted(finished(cached_out)) == sorted(finished(plain_out))
    assert cached.prefix_cached_blocks > 0  # the prefixes stay cached after their requests left


def test_prefix_caching_never_delays_a_workload_with_nothing_to_reuse() -> None:
    # The cache lives in free KV space and makes way whenever the running requests need it, so with
    # nothing to reuse the schedule is the plain one, token for token.
    rng = random.Random(11)
    requests = [req(i, at_s=0.02 * i, prompt=(p := rng.randint(600, 3000)), output=rng.randint(50, 600),
                    hashes=tuple(1000 * i + j for j in range(-(-p // 512)))) for i in range(80)]
    plain = engine()
    cached = engine(config=EngineConfig(enable_prefix_caching=True))
    assert replay(cached, requests) == replay(plain, requests)
    assert cached.prefix_hit_tokens == 0 and cached.prefix_queried_tokens > 0

    # Under KV pressure the only reuse is a preempted request's own prompt when it is recomputed.
    tight = EngineConfig(gpu_memory_utilization=0.23)
    plain = engine(config=tight)
    cached = engine(config=EngineConfig(gpu_memory_utilization=0.23, enable_prefix_caching=True))
    replay(plain, requests)
    outputs = replay(cached, requests)
    assert plain.preemptions > 0 and cached.preemptions > 0 and cached.prefix_hit_tokens > 0
    assert cached.prefill_tokens_computed < plain.prefill_tokens_computed
    assert sorted(finished(outputs)) == sorted(r.request_id for r in requests)


def test_prefix_cache_is_evicted_under_kv_pressure_and_everything_finishes() -> None:
    requests = shared_prefix_workload(200, rate_rps=50.0, seed=5)
    e = engine(config=EngineConfig(enable_prefix_caching=True, gpu_memory_utilization=0.23))
    outputs = replay(e, requests)
    assert sorted(finished(outputs)) == sorted(r.request_id for r in requests)
    assert e.preemptions > 0 and e.prefix_hit_rate > 0.3
    assert e.is_idle and e.kv_used_frac == 0.0
    # What stays cached fits in the KV cache.
    assert e.prefix_cached_blocks * 512 // e.config.block_size <= e.total_blocks


# --- operator-split deployments -------------------------------------------------------------------------


def split(attention_replicas: int, mlp_replicas: int, max_batch: int = 256) -> OperatorSplitLatencyModel:
    groups = split_groups((H100, 1, attention_replicas), (H100, 1, mlp_replicas),
                          attention_max_batch_tokens=max_batch, mlp_max_batch_tokens=max_batch)
    return OperatorSplitLatencyModel(roofline_factory(LLAMA3_8B), groups, Link(20e-6, 360.0))


@pytest.mark.parametrize("ctx_tokens", [512, 8192])
def test_split_throughput_is_bound_by_its_slowest_group(ctx_tokens: int) -> None:
    base = split(2, 2).throughput_bound(ctx_tokens)
    assert base.bottleneck in ("attention", "mlp")
    rates = {s.stage: s.tokens_per_s for s in base.stages}
    assert base.tokens_per_s == min(rates.values())
    fast = "mlp" if base.bottleneck == "attention" else "attention"
    more_fast = split(**{"attention_replicas": 4 if fast == "attention" else 2,
                         "mlp_replicas": 4 if fast == "mlp" else 2}).throughput_bound(ctx_tokens)
    more_slow = split(**{"attention_replicas": 4 if fast == "mlp" else 2,
                         "mlp_replicas": 4 if fast == "attention" else 2}).throughput_bound(ctx_tokens)
    assert more_fast.tokens_per_s == pytest.approx(base.tokens_per_s, rel=1e-12)  # changes nothing
    assert more_slow.tokens_per_s > 1.2 * base.tokens_per_s  # raises the ceiling
    assert more_slow.tokens_per_s <= 2 * base.tokens_per_s * (1 + 1e-12)


def test_long_context_decode_is_attention_bound_short_context_is_not() -> None:
    # P1's finding: attention dominates as the context grows; the weight-bearing MLP does at short ones.
    assert split(1, 1).throughput_bound(16384).bottleneck == "attention"
    assert split(1, 1).throughput_bound(64).bottleneck == "mlp"


def test_split_decode_engine_serves_a_workload_and_scaling_the_slow_group_cuts_tbt() -> None:
    # Long contexts, decode only: the attention group's KV reads dominate each step, while the MLP
    # group reads its weights once per step however the batch is split among its replicas.
    rng = random.Random(2)
    requests = [req(i, at_s=0.15 * i, prompt=rng.randint(4000, 7000), output=rng.randint(200, 400))
                for i in range(120)]

    def run(attention_replicas: int, mlp_replicas: int) -> tuple[SimEngine, list[EngineOutput]]:
        model = split(attention_replicas, mlp_replicas, max_batch=8192)
        e = SimEngine("s", LLAMA3_8B, H100, 1, model, EngineConfig(), role=Role.DECODE,
                      footprint=model.footprint(0.9))
        return e, replay(e, requests, lambda r: 0.002)

    base_engine, base = run(1, 1)
    assert sorted(finished(base)) == sorted(r.request_id for r in requests)
    _, more_attention = run(2, 1)
    _, more_mlp = run(1, 2)
    assert mean_tbt(more_attention) < 0.8 * mean_tbt(base)
    assert mean_tbt(more_mlp) > 0.95 * mean_tbt(base)
    assert base_engine.preemptions == 0 and base_engine.prefill_tokens_computed == 0
    assert base_engine.energy_j > 0 and base_engine.is_idle


def test_split_engine_tokens_all_arrive() -> None:
    model = split(2, 1)
    e = SimEngine("s", LLAMA3_8B, H100, 1, model, EngineConfig(), footprint=model.footprint())
    requests = [req(i, at_s=0.01 * i, prompt=700, output=90) for i in range(30)]
    outputs = replay(e, requests)
    counts: dict[str, int] = {}
    for o in outputs:
        if isinstance(o, FirstToken | Tokens):
            counts[o.request_id] = counts.get(o.request_id, 0) + (o.count if isinstance(o, Tokens) else 1)
    assert counts == {r.request_id: 90 for r in requests}
