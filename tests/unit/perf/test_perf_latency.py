"""The roofline latency model: magnitudes, shapes, and the decode line the engine relies on."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from opscale.perf import IterationCost, LatencyModel, RooflineLatencyModel, RooflineParams, load_catalog

pytestmark = pytest.mark.unit

CATALOG = load_catalog()


def roofline(model: str, sku: str, tp: int = 1, **params: float) -> RooflineLatencyModel:
    return RooflineLatencyModel(CATALOG.model(model), CATALOG.sku(sku), tp, RooflineParams(**params))


def decode_s(lm: RooflineLatencyModel, batch: int, ctx_tokens: int) -> float:
    fixed_s, per_ctx_s = lm.decode_step_coeffs(batch)
    return fixed_s + per_ctx_s * ctx_tokens


def test_llama3_8b_on_h100_decodes_a_token_in_7_to_12_ms() -> None:
    lm = roofline("Llama-3-8B", "H100-80GB")
    assert 0.007 <= decode_s(lm, 1, 512) <= 0.012


def test_llama2_70b_tp4_on_a100_prefills_1024_tokens_in_100_to_250_ms() -> None:
    assert 0.100 <= roofline("Llama-2-70B", "A100-80GB", 4).prefill_s(1024) <= 0.250


def test_it_implements_the_protocol() -> None:
    assert isinstance(roofline("Llama-3-8B", "H100-80GB"), LatencyModel)


def test_decode_iteration_is_exactly_the_linear_decode_line() -> None:
    lm = roofline("Llama-3-70B", "H100-80GB", 4)
    fixed_s, per_ctx_s = lm.decode_step_coeffs(32)
    for ctx in (32, 1000, 100_000):
        assert lm.iteration_s(0, 0, 32, ctx) == fixed_s + per_ctx_s * ctx
    busy_fixed_s, busy_per_ctx_s = lm.decode_busy_coeffs(32)
    assert busy_per_ctx_s == per_ctx_s
    assert lm.iteration_cost(0, 0, 32, 1000).busy_s == busy_fixed_s + busy_per_ctx_s * 1000


def test_decode_is_memory_bound_so_batching_is_nearly_free() -> None:
    lm = roofline("Llama-3-8B", "H100-80GB")
    one, sixty_four = lm.decode_step_coeffs(1)[0], lm.decode_step_coeffs(64)[0]
    assert one <= sixty_four < 1.5 * one
    # ...until the batch is large enough for the weight GEMMs to become compute-bound.
    assert lm.decode_step_coeffs(2048)[0] > 1.5 * one


def test_prefill_grows_with_tokens_and_attention_makes_it_superlinear() -> None:
    lm = roofline("Llama-3-8B", "H100-80GB")
    times = [lm.prefill_s(n) for n in (128, 512, 2048, 8192)]
    assert times == sorted(times)
    overhead = lm.params.iteration_overhead_s
    assert lm.prefill_s(8192) - overhead > 2 * (lm.prefill_s(4096) - overhead)


def test_cached_context_makes_a_chunk_slower() -> None:
    lm = roofline("Llama-3-8B", "H100-80GB")
    assert lm.prefill_s(1024, 6000) > lm.prefill_s(1024, 0)


def test_explicit_attention_pairs_of_many_short_prompts_cost_less_than_one_long_prompt() -> None:
    lm = roofline("Llama-3-8B", "H100-80GB")
    one_long = lm.iteration_s(8000, 0, 0, 0)
    many_short = lm.iteration_s(8000, 0, 0, 0, prefill_attn_pairs=80 * (100 * 101 // 2))
    assert many_short < one_long


def test_tensor_parallelism_speeds_up_but_pays_for_all_reduce() -> None:
    tp1 = roofline("Llama-3-8B", "H100-80GB", 1).prefill_s(4096)
    tp4 = roofline("Llama-3-8B", "H100-80GB", 4).prefill_s(4096)
    assert tp1 / 4 < tp4 < tp1
    slow_link = roofline("Llama-3-8B", "H100-80GB", 4, interconnect_gbps=10).prefill_s(4096)
    assert slow_link > tp4


def test_pcie_cards_default_to_a_slower_interconnect() -> None:
    assert roofline("Llama-3-8B", "L40S", 2).interconnect_gbps < roofline("Llama-3-8B", "H100-80GB", 2).interconnect_gbps


def test_a_small_moe_batch_reads_only_the_experts_it_routes_to() -> None:
    lm = roofline("Mixtral-8x7B", "H100-80GB", 2)
    all_weights_s = CATALOG.model("Mixtral-8x7B").weight_bytes / (2 * 3350e9 * 0.8)
    assert lm.decode_step_coeffs(1)[0] < 0.5 * all_weights_s + lm.params.iteration_overhead_s
    assert lm.decode_step_coeffs(256)[0] > all_weights_s


def test_faster_hardware_is_faster() -> None:
    h100 = roofline("Llama-3-8B", "H100-80GB")
    a10g = roofline("Llama-3-8B", "L40S")
    assert h100.prefill_s(2048) < a10g.prefill_s(2048)
    assert decode_s(h100, 8, 8000) < decode_s(a10g, 8, 8000)


def test_utilisation_is_a_fraction_and_compute_bound_prefill_works_harder_than_decode() -> None:
    lm = roofline("Llama-3-8B", "H100-80GB")
    prefill = lm.iteration_cost(4096, 0, 0, 0)
    decode = lm.iteration_cost(0, 0, 1, 100)
    assert isinstance(prefill, IterationCost)
    for cost in (prefill, decode):
        assert 0 < cost.utilisation <= 1
        assert cost.busy_s < cost.time_s
    assert prefill.utilisation > decode.utilisation


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="tp must be a positive integer"):
        roofline("Llama-3-8B", "H100-80GB", 0)
    with pytest.raises(ValueError, match="prefill_tokens=-1"):
        roofline("Llama-3-8B", "H100-80GB").iteration_s(-1, 0, 0, 0)
    with pytest.raises(ValidationError, match="compute_efficiency"):
        RooflineParams(compute_efficiency=0)
    with pytest.raises(ValidationError, match="extra"):
        RooflineParams(speedup=2)  # type: ignore[call-arg]
