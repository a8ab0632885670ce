"""The FLOP count of an iteration (opscale.perf.flops): the model's arithmetic, the roofline's compute."""

from __future__ import annotations

import dataclasses

import pytest

from opscale.perf import RooflineLatencyModel, RooflineParams, attn_pairs, load_catalog
from opscale.perf.flops import ModelFlops

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
LLAMA3_8B = CATALOG.model("Llama-3-8B")
H100 = CATALOG.sku("H100-80GB")


def test_llama3_8b_counts_as_the_docstring_works_it_out() -> None:
    flops = ModelFlops.of(LLAMA3_8B)
    assert flops.per_token == pytest.approx(1.40e10, rel=0.01)
    assert flops.per_logit == 2 * 128256 * 4096
    assert flops.per_pair == 4 * 32 * 128 * 32
    # A fresh 1000-token prompt: its GEMMs, one logit, causal attention over 1000*1001/2 pairs.
    assert flops.iteration(1000, 0, 0, attn_pairs(1000, 0)) == (
        1000 * flops.per_token + flops.per_logit + 500_500 * flops.per_pair)


def test_a_decode_iteration_is_linear_in_the_context_and_the_same_asked_either_way() -> None:
    flops = ModelFlops.of(LLAMA3_8B)
    assert flops.iteration(0, 8, 4000, 0) == flops.decode_step(8, 4000)
    step = flops.decode_step(8, 4000)
    assert flops.decode_step(8, 4008) - step == pytest.approx(8 * flops.per_pair)
    assert flops.decode_step(0, 0) == 0.0


def test_a_mixture_of_experts_counts_only_the_experts_a_token_uses() -> None:
    mixtral = CATALOG.model("Mixtral-8x7B")
    flops = ModelFlops.of(mixtral)
    dense_mlp = 3 * mixtral.hidden * mixtral.intermediate * mixtral.layers
    attn = mixtral.attn_params_per_layer * mixtral.layers
    assert flops.per_token == 2.0 * (attn + dense_mlp * mixtral.experts_per_token)


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("shape", [(4000, 0, 0, 0), (512, 1500, 32, 20_000), (0, 0, 256, 300_000), (0, 0, 1, 50)])
def test_the_roofline_never_computes_faster_than_its_derated_peak(tp: int, shape: tuple[int, int, int, int]) -> None:
    # Busy time covers at least the compute time of the FLOPs counted, so SM activity cannot pass
    # compute_efficiency times GPU utilisation; a large prefill is compute-bound and comes close.
    prefill, ctx, batch, decode_ctx = shape
    roofline = RooflineLatencyModel(LLAMA3_8B, H100, tp, RooflineParams())
    cost = roofline.iteration_cost(prefill, ctx, batch, decode_ctx)
    pairs = attn_pairs(prefill, ctx)
    compute_s = ModelFlops.of(LLAMA3_8B).iteration(prefill, batch, decode_ctx, pairs) / (
        H100.peak_tflops * 1e12 * roofline.params.compute_efficiency * tp)
    assert compute_s <= cost.busy_s * (1 + 1e-12)
    if shape == (4000, 0, 0, 0):
        assert compute_s > 0.9 * cost.busy_s
    if batch and not prefill:
        assert compute_s < 0.5 * cost.busy_s  # decode reads weights and KV for a few FLOPs a byte


def test_a_mixtures_shared_expert_is_priced_with_its_routed_experts() -> None:
    """Qwen2-57B-A14B runs 8 of 64 routed experts and an always-on shared expert as large as those 8
    together: 14.2B parameters active per token by its model card, the embedding included."""
    from opscale.perf.latency import dense_layer_work

    model = CATALOG.model("Qwen2-57B-A14B")
    flops = ModelFlops.of(model)
    active = flops.per_token / 2 + flops.per_logit / 2 + model.vocab * model.hidden  # + the embedding
    assert active == pytest.approx(14.2e9, rel=0.01)
    without_shared = dataclasses.replace(model, shared_expert_intermediate=0)
    work, lighter = dense_layer_work(model, 2, 1), dense_layer_work(without_shared, 2, 1)
    assert work.gemm_flops[1] == pytest.approx(2 * lighter.gemm_flops[1])  # shared = the 8 routed ones
    assert work.gemm_bytes[1] > lighter.gemm_bytes[1]
    assert RooflineLatencyModel(model, H100, 2).iteration_s(0, 0, 8, 8 * 1024) > \
        RooflineLatencyModel(without_shared, H100, 2).iteration_s(0, 0, 8, 8 * 1024)
