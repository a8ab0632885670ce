"""A whole engine on an SM-share partition of one GPU (`perf.sm_share.partition_engine_sku`): its latency
model prices an iteration as the operator planner prices a stage of every operator at that share, and it
never holds more than its share of the GPU's memory, power or price."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opscale.engine import SimEngine
from opscale.perf import default_catalog
from opscale.perf.operators import ALL_OPERATORS
from opscale.perf.profiled import latency_model_for
from opscale.perf.sm_share import SmShareParams, partition_engine_sku
from opscale.perf.stage_costs import StageCosts

pytestmark = pytest.mark.unit

CATALOG = default_catalog()
MODEL, SKU = CATALOG.model("Qwen2-7B"), CATALOG.sku("H100-80GB")
PARAMS = SmShareParams()


@pytest.mark.parametrize("share", [0.25, 0.5, 0.75, 1.0])
def test_an_engine_on_a_partition_runs_at_the_planner_s_prices(share: float) -> None:
    latency = latency_model_for(MODEL, partition_engine_sku(SKU, share, PARAMS), 1)
    costs = StageCosts(MODEL, SKU)
    for prompt in (128, 1155, 4096):
        assert latency.prefill_s(prompt) == pytest.approx(costs.prefill_s(ALL_OPERATORS, 1, 1, prompt, share), rel=1e-6)
    for batch in (1, 32, 128):
        ctx = 1260
        step = latency.iteration_cost(0, 0, batch, batch * ctx).time_s
        assert step == pytest.approx(costs.decode_s(ALL_OPERATORS, 1, batch, ctx, share), rel=1e-6)


@given(st.lists(st.sampled_from(PARAMS.shares), min_size=1, max_size=4))
def test_engines_on_partitions_of_one_gpu_never_hold_more_than_the_gpu(shares: list[float]) -> None:
    """Partitions whose shares fit one GPU hold at most its memory (weights plus KV), its power and its
    price, and a partition's KV room is what its share of the memory leaves beside the weights."""
    if sum(shares) > 1.0 + 1e-9:
        shares = shares[:1]
    skus = [partition_engine_sku(SKU, s, PARAMS) for s in shares]
    assert sum(p.gpu_memory_gb for p in skus) <= SKU.gpu_memory_gb + 1e-9
    assert sum(p.max_power_w for p in skus) <= SKU.max_power_w + 1e-9
    assert sum(p.price_usd_per_h for p in skus) <= SKU.price_usd_per_h + 1e-9
    assert all(p.peak_tflops <= SKU.peak_tflops * s + 1e-9 and p.mem_bandwidth_gbps <= SKU.mem_bandwidth_gbps * s + 1e-9
               for p, s in zip(skus, shares, strict=True))
    held = 0.0
    for share, part in zip(shares, skus, strict=True):
        if share * 0.9 * SKU.gpu_memory_gb * 1e9 <= MODEL.weight_bytes:
            continue  # too small to hold the weights: the engine refuses to start (below)
        engine = SimEngine("e", MODEL, part, 1, latency_model_for(MODEL, part, 1))
        kv = engine.total_blocks * engine.config.block_size * MODEL.kv_bytes_per_token
        held += MODEL.weight_bytes + kv
        assert MODEL.weight_bytes + kv <= share * engine.config.gpu_memory_utilization * SKU.gpu_memory_gb * 1e9
    assert held <= SKU.gpu_memory_gb * 1e9


def test_a_partition_too_small_for_the_weights_is_refused_by_name() -> None:
    part = partition_engine_sku(SKU, 0.1, PARAMS)
    with pytest.raises(ValueError, match="leave no room for a KV cache"):
        SimEngine("e", MODEL, part, 1, latency_model_for(MODEL, part, 1))
