"""The host-memory KV tier: blocks the GPU cache evicts are kept in host memory (up to its size) and
loaded back over PCIe instead of recomputed; hits from each tier are counted apart."""

from __future__ import annotations

import dataclasses

import pytest

from opscale.engine import EngineConfig, FirstToken, SimEngine
from opscale.engine.host_tier import HostTier
from opscale.engine.kv_events import BlockStored
from opscale.model import Request
from opscale.perf import RooflineLatencyModel, load_catalog

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
MODEL = CATALOG.model("Llama-3-8B")
SMALL = dataclasses.replace(CATALOG.sku("H100-80GB"), gpu_memory_gb=18.5)  # KV for about 4,500 tokens


def engine(host_gb: float, gbps: float | None = None, events: bool = False) -> SimEngine:
    config = EngineConfig(enable_prefix_caching=True, host_kv_cache_gb=host_gb, host_kv_load_gbps=gbps,
                          kv_events=events)
    return SimEngine("i-1", MODEL, SMALL, 1, RooflineLatencyModel(MODEL, SMALL, 1), config)


def ttft(e: SimEngine, i: int, hashes: tuple[int, ...], at_s: float, prompt: int = 2600) -> float:
    e.submit(Request(f"r{i}", MODEL.name, "interactive", "eu", at_s, prompt, 2, hashes), at_s)
    first = None
    while (t := e.next_event_s()) is not None:
        for out in e.advance(t):
            if isinstance(out, FirstToken) and out.request_id == f"r{i}":
                first = out.at_s
    assert first is not None
    return first - at_s


def replay(e: SimEngine) -> tuple[float, float]:
    """Prompt A, then enough other prompts to push A out of the GPU, then A again: (cold, again) TTFT."""
    a = (1, 2, 3, 4, 5, 6)
    cold = ttft(e, 0, a, 0.0)
    for k in range(1, 4):
        ttft(e, k, tuple(100 * k + j for j in range(6)), 10.0 * k)
    return cold, ttft(e, 9, a, 100.0)


def test_evicted_blocks_come_back_from_host_memory_faster_than_recomputed() -> None:
    plain, tiered = engine(0.0), engine(1.0)
    cold, again = replay(plain)
    assert plain.prefix_hit_tokens == 0 and again == pytest.approx(cold, rel=0.05)  # evicted: recomputed
    _, loaded = replay(tiered)
    assert tiered.prefix_host_hit_tokens == 5 * 512 and tiered.prefix_hit_tokens == 0  # counted apart
    assert loaded < again
    # the copy is priced at the link: a slower one costs more time
    _, slow = replay(engine(1.0, gbps=1.0))
    assert loaded < slow


def test_a_host_tier_reports_its_blocks_as_cpu_events() -> None:
    e = engine(1.0, events=True)
    replay(e)
    cpu = [ev for ev in e.take_kv_events() if isinstance(ev, BlockStored) and ev.medium == "CPU"]
    assert cpu and 5 in {h for ev in cpu for h in ev.block_hashes}


def test_the_host_tier_keeps_the_most_recent_blocks() -> None:
    tier = HostTier(2)
    assert tier.put(1) == [] and tier.put(2) == []
    tier.touch([1])
    assert tier.put(3) == [2]
    assert tier.run_from((1, 3, 2), 0, 3) == 2 and tier.run_from((9, 1), 1, 2) == 1
    with pytest.raises(ValueError, match="host_kv_cache_gb"):
        EngineConfig(host_kv_cache_gb=10.0)
