"""KV events of the simulated engine (vLLM's model): blocks stored with chained parents, evictions as
BlockRemoved, a stop as AllBlocksCleared; nothing kept when events are off."""

from __future__ import annotations

import dataclasses

import pytest

from opscale.engine import EngineConfig, SimEngine
from opscale.engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored
from opscale.model import Request
from opscale.perf import RooflineLatencyModel, load_catalog

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
MODEL = CATALOG.model("Llama-3-8B")
H100 = CATALOG.sku("H100-80GB")
EVENTS = EngineConfig(enable_prefix_caching=True, kv_events=True, emit_tokens=False)


def engine(config: EngineConfig = EVENTS, memory_gb: float = 80.0) -> SimEngine:
    sku = dataclasses.replace(H100, gpu_memory_gb=memory_gb)
    return SimEngine("i-1", MODEL, sku, 1, RooflineLatencyModel(MODEL, sku, 1), config)


def req(i: int, hashes: tuple[int, ...], prompt: int = 1600, at_s: float = 0.0) -> Request:
    return Request(f"r{i}", MODEL.name, "interactive", "eu", at_s, prompt, 4, hashes)


def run(e: SimEngine) -> None:
    while (at := e.next_event_s()) is not None:
        e.advance(at)


def test_stored_blocks_name_their_chain() -> None:
    e = engine()
    e.submit(req(0, (10, 11, 12, 13)), 0.0)  # 1600 tokens: three full 512-token blocks
    run(e)
    stored = [ev for ev in e.take_kv_events() if isinstance(ev, BlockStored)]
    assert [h for ev in stored for h in ev.block_hashes] == [10, 11, 12]
    assert stored[0].parent_block_hash is None and stored[0].block_size == 512 and stored[0].medium == "GPU"
    e.submit(req(1, (10, 11, 20, 21), at_s=5.0), 5.0)  # shares two blocks, stores one more after 11
    run(e)
    later = e.take_kv_events()
    assert later == [BlockStored((20,), 11, (), 512)]
    assert e.take_kv_events() == []


def test_evictions_and_stop_are_reported_in_order() -> None:
    e = engine(memory_gb=18.5)  # 0.9 x 18.5 GB leaves KV for about 4,500 tokens beside the weights
    blocks = e.total_blocks * 16 // 512
    for i in range(blocks + 4):  # more distinct prompts than the cache holds, one after the other
        e.submit(req(i, (1000 + 2 * i, 1001 + 2 * i), prompt=1100, at_s=float(i)), float(i))
        run(e)
    events = e.take_kv_events()
    removed = [h for ev in events if isinstance(ev, BlockRemoved) for h in ev.block_hashes]
    stored = [h for ev in events if isinstance(ev, BlockStored) for h in ev.block_hashes]
    assert removed and set(removed) <= set(stored)
    assert removed[0] == 1001  # least recently released first, the deepest block of a prompt first
    first_removal = next(i for i, ev in enumerate(events) if isinstance(ev, BlockRemoved))
    assert any(isinstance(ev, BlockStored) and 1001 in ev.block_hashes for ev in events[:first_removal])
    e.stop(1e6)
    assert e.take_kv_events()[-1] == AllBlocksCleared()


def test_no_events_unless_asked() -> None:
    e = engine(EngineConfig(enable_prefix_caching=True))
    e.submit(req(0, (1, 2, 3, 4)), 0.0)
    run(e)
    assert e.take_kv_events() == []
    with pytest.raises(ValueError, match="kv_events"):
        EngineConfig(kv_events=True)
