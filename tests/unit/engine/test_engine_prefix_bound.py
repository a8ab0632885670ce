"""The prefix reuse a trace allows (opscale.traces.prefix_reuse) and what one engine with an unbounded
cache reaches on the real Mooncake heads: the same, or the engine (or the reader) loses reuse."""

from __future__ import annotations

import dataclasses

import pytest
from _paths import SHARED_DATA

from opscale.engine import EngineConfig, SimEngine, replay
from opscale.model import Request
from opscale.perf import RooflineLatencyModel, load_catalog
from opscale.traces.mooncake import read_mooncake_trace
from opscale.traces.prefix_reuse import prefix_reuse_bound

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
QWEN = CATALOG.model("Qwen2-7B")
H100 = CATALOG.sku("H100-80GB")
HEADS = SHARED_DATA / "samples" / "mooncake_fast25"


def req(i: int, prompt: int, hashes: tuple[int, ...]) -> Request:
    return Request(f"r{i}", QWEN.name, "interactive", "eu", float(i), prompt, 4, hashes)


def test_bound_counts_leading_full_blocks_seen_before() -> None:
    requests = [req(0, 1024, (1, 2)), req(1, 1536, (1, 2, 3)), req(2, 1024, (1, 2))]
    # the third is fully cached, but its last token is computed: its last block is too
    assert prefix_reuse_bound(requests) == pytest.approx((1024 + 512) / (1024 + 1536 + 1024))
    assert prefix_reuse_bound([req(0, 100, (1,)), req(1, 100, (1,))]) == 0.0  # no full block
    assert prefix_reuse_bound([]) == 0.0
    # a cache of 2 blocks: the second prompt's third block pushes block 1 out, and the third prompt misses
    assert prefix_reuse_bound(requests, capacity_blocks=2) == pytest.approx(1024 / (1024 + 1536 + 1024))
    assert prefix_reuse_bound(requests, capacity_blocks=3) == prefix_reuse_bound(requests)


def unbounded_hit_rate(requests: list[Request]) -> float:
    """One Qwen2-7B engine whose GPU memory holds every block of the trace, fed in arrival order."""
    sku = dataclasses.replace(H100, gpu_memory_gb=100_000.0)
    engine = SimEngine("i-1", QWEN, sku, 1, RooflineLatencyModel(QWEN, sku, 1),
                       EngineConfig(enable_prefix_caching=True, emit_tokens=False, max_model_len=QWEN.max_context * 2))
    replay(engine, requests)
    assert engine.finished == len(requests) and engine.preemptions == 0
    return engine.prefix_hit_tokens / sum(r.prompt_tokens for r in requests)


@pytest.mark.parametrize(("name", "expected"), [("conversation_trace_head2000.jsonl", 0.29),
                                                ("synthetic_trace_head2000.jsonl", 0.34)])
def test_one_unbounded_instance_reaches_the_bound(name: str, expected: float) -> None:
    path = HEADS / name
    if not path.exists():
        pytest.skip(f"{path} absent (the shared data is not beside the repository)")
    requests = [dataclasses.replace(r, model=QWEN.name) for r in read_mooncake_trace(path)]
    bound = prefix_reuse_bound(requests)
    assert bound == pytest.approx(expected, abs=0.01)  # what issue 15 quotes
    assert unbounded_hit_rate(requests) == pytest.approx(bound, abs=0.005)
