"""Prefix caching: the reference-counted LRU itself, and what an engine does with it."""

from __future__ import annotations

import pytest

from opscale.engine import EngineConfig, Finished, FirstToken, PrefixCache, SimEngine
from opscale.engine.outputs import EngineOutput
from opscale.model import Request
from opscale.perf import RooflineLatencyModel, load_catalog

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
LLAMA3_8B = CATALOG.model("Llama-3-8B")
H100 = CATALOG.sku("H100-80GB")
LATENCY = RooflineLatencyModel(LLAMA3_8B, H100, 1)
CACHING = EngineConfig(enable_prefix_caching=True)


def engine(config: EngineConfig = CACHING) -> SimEngine:
    return SimEngine("i-1", LLAMA3_8B, H100, 1, LATENCY, config)


def req(i: int, hashes: tuple[int, ...], at_s: float = 0.0, prompt: int = 1500, output: int = 10) -> Request:
    return Request(f"r{i}", LLAMA3_8B.name, "interactive", "eu", at_s, prompt, output, hashes)


def drain(e: SimEngine) -> list[EngineOutput]:
    outputs: list[EngineOutput] = []
    while (at := e.next_event_s()) is not None:
        outputs += e.advance(at)
    return outputs


def ttft(e: SimEngine, request: Request) -> float:
    e.submit(request, request.arrival_s)
    first = next(o for o in drain(e) if isinstance(o, FirstToken))
    return first.at_s - request.arrival_s


# --- the cache -------------------------------------------------------------------------------------------


def test_cache_pins_releases_and_evicts_least_recently_released_deepest_first() -> None:
    cache = PrefixCache(block_tokens=512, kv_blocks_per_entry=32)
    for h in (1, 2, 3):
        assert cache.register(h)
    assert not cache.register(2)  # already cached: the caller keeps its own copy
    assert cache.lookup((1, 2, 3, 4), limit=4) == 3
    assert cache.lookup((1, 9, 3), limit=3) == 1  # stops at the first miss
    assert cache.lookup((1, 2, 3), limit=2) == 2
    assert cache.evictable_blocks == 0 and cache.is_pinned(1)
    assert cache.release([1, 2, 3]) == 96  # nobody uses them any more: free space, evictable
    assert not cache.is_pinned(1) and 1 in cache and len(cache) == 3
    assert cache.pin(1) == 32  # back in use: its blocks leave the evictable pool
    assert cache.pin(1) == 0  # a second user costs nothing more
    assert cache.references(1) == 2
    cache.evict_to(32)  # room for one entry: the deepest block of the prompt goes first
    assert 3 not in cache and 2 in cache and cache.evictable_blocks == 32
    cache.evict_to(0)
    assert 2 not in cache and 1 in cache  # pinned entries are never evicted
    cache.clear()
    assert len(cache) == 0 and cache.evictable_blocks == 0


def test_prefix_block_must_be_whole_kv_blocks() -> None:
    with pytest.raises(ValueError, match=r"prefix_block_tokens \(500\) must be a multiple of block_size \(16\)"):
        EngineConfig(enable_prefix_caching=True, prefix_block_tokens=500)
    EngineConfig(prefix_block_tokens=500)  # irrelevant while caching is off


# --- the engine ------------------------------------------------------------------------------------------


def test_a_repeated_prompt_skips_its_cached_blocks() -> None:
    e = engine()
    cold = ttft(e, req(0, (1, 2, 3), prompt=1500))
    warm = ttft(e, req(1, (1, 2, 3), at_s=10.0, prompt=1500))
    # 1500 tokens hold two full 512-token blocks; the second request computes only the other 476.
    assert cold == pytest.approx(LATENCY.prefill_s(1500))
    assert warm == pytest.approx(LATENCY.prefill_s(476, 1024))
    assert e.prefix_hit_tokens == 1024 and e.prefix_queried_tokens == 3000
    assert e.prefix_hit_rate == pytest.approx(1024 / 3000)
    assert e.prefill_tokens_computed == 1500 + 476


def test_a_fully_cached_prompt_still_computes_its_last_block() -> None:
    e = engine()
    ttft(e, req(0, (1, 2), prompt=1024))
    warm = ttft(e, req(1, (1, 2), at_s=10.0, prompt=1024))
    # Its logits need at least one computed token: the last block is prefilled again.
    assert warm == pytest.approx(LATENCY.prefill_s(512, 512))
    assert e.prefix_hit_tokens == 512


def test_without_caching_hashes_are_ignored() -> None:
    e = engine(EngineConfig())
    ttft(e, req(0, (1, 2, 3)))
    assert ttft(e, req(1, (1, 2, 3), at_s=10.0)) == pytest.approx(LATENCY.prefill_s(1500))
    assert e.prefix_hit_tokens == 0 and e.prefix_hit_rate == 0.0 and e.prefix_cached_blocks == 0


def test_hashes_past_the_prompt_or_repeated_do_not_count() -> None:
    e = engine()
    ttft(e, req(0, (7, 7, 8, 9), prompt=1500))  # a malformed trace: block 7 twice
    assert e.prefix_cached_blocks == 1  # only the first block, up to the repeat
    ttft(e, req(1, (5, 6, 11, 12, 13), at_s=10.0, prompt=1100))  # 2 full blocks; 3 hashes too many
    assert 11 not in e._cache and 5 in e._cache and 6 in e._cache  # type: ignore[operator]


def test_concurrent_sharers_hold_one_copy_of_the_shared_blocks() -> None:
    shared = (1, 2, 3, 4)

    def kv_of_two_sharers(e: SimEngine) -> float:
        for i in (1, 2):
            e.submit(req(i, shared + (100 + i,), at_s=10.0, prompt=2600, output=400), 10.0)
        e.advance(10.5)
        return e.kv_used_frac

    cached = engine()
    ttft(cached, req(0, shared + (100,), prompt=2600, output=1))  # leaves the shared blocks cached
    plain = engine(EngineConfig())
    # Four 512-token blocks (2048 tokens = 128 KV blocks) are counted once instead of twice.
    assert kv_of_two_sharers(plain) - kv_of_two_sharers(cached) == pytest.approx(128 / cached.total_blocks)
    drain(cached)
    assert cached.kv_used_frac == 0.0
    assert cached.prefix_cached_blocks == 7  # the 4 shared blocks and each request's own 5th


def test_cancel_and_stop_let_go_of_cached_blocks() -> None:
    e = engine()
    ttft(e, req(0, (1, 2, 3), prompt=1600, output=1))
    e.submit(req(1, (1, 2, 3), at_s=5.0, prompt=1600, output=1000), 5.0)
    e.advance(5.2)
    assert e.kv_used_frac > 0
    assert e.cancel("r1", 5.2)
    e.advance(6.0)
    assert e.kv_used_frac == 0.0 and e.prefix_cached_blocks == 3
    e.submit(req(2, (1, 2, 3), at_s=6.0, prompt=1600, output=1000), 6.0)
    e.advance(6.2)
    unfinished = e.stop(6.3)
    assert [r.request_id for r in unfinished] == ["r2"]
    assert e.prefix_cached_blocks == 0


def test_finished_requests_report_their_own_first_token() -> None:
    e = engine()
    e.submit(req(0, (1, 2, 3), output=5), 0.0)
    e.submit(req(1, (1, 2, 3), output=5), 0.0)
    finished = {o.request_id: o for o in drain(e) if isinstance(o, Finished)}
    assert set(finished) == {"r0", "r1"}
    # Admitted together, neither found the other's blocks cached: both prefilled in full.
    assert e.prefix_hit_tokens == 0 and e.prefill_tokens_computed == 3000
