"""Whole-iteration terms of the latency model (host floor, serial host work, long-prompt attention) and
their fit (`opscale.perf.iteration_fit`), on synthetic iterations: no data needed."""

from __future__ import annotations

import pytest

from opscale.perf import LatencyModel, RooflineLatencyModel, RooflineParams, calibrated_params, load_catalog
from opscale.perf.iteration_fit import (
    IterationSample,
    fit_iteration,
    iteration_mape,
    kernel_params,
    leave_one_tp_out,
    parse_splitwise_csv,
    predict_iterations,
)
from opscale.perf.latency import attn_pairs, whole_iteration_s

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
LLAMA2_70B = CATALOG.model("Llama-2-70B")
A100 = CATALOG.sku("A100-80GB")
KERNEL = kernel_params(calibrated_params(A100.name))
TRUTH = KERNEL.model_copy(update={"host_layer_s": 4e-4, "sequence_overhead_s": 2e-4,
                                  "prefill_overhead_s": 0.012, "prefill_pair_s": 1e-10})


def at(tp: int, params: RooflineParams) -> LatencyModel:
    return RooflineLatencyModel(LLAMA2_70B, A100, tp, params)


def synthetic(params: RooflineParams) -> list[IterationSample]:
    """Splitwise-shaped iterations at TP 2/4/8 priced by `params` itself."""
    shapes = [IterationSample("prefill", tp, p, 1, 0, 1.0) for tp in (2, 4, 8) for p in (128, 512, 2048, 8192)]
    shapes += [IterationSample("decode", tp, 512, b, b * 576, 1.0) for tp in (2, 4, 8) for b in (1, 4, 16, 64)]
    times = predict_iterations(shapes, at, params)
    return [IterationSample(s.phase, s.tp, s.prompt_tokens, s.batch, s.ctx_tokens, t) for s, t in zip(shapes, times, strict=True)]


def test_whole_iteration_s_overlaps_the_host_floor_and_adds_serial_work() -> None:
    params = RooflineParams(iteration_overhead_s=0.004, sequence_overhead_s=0.00025, prefill_overhead_s=0.01)
    assert whole_iteration_s(params, 0.040, 0.011, 8, prefill=False) == pytest.approx(0.040 + 0.004 + 0.002)
    assert whole_iteration_s(params, 0.040, 0.090, 8, prefill=False) == pytest.approx(0.090 + 0.004 + 0.002)
    assert whole_iteration_s(params, 0.0, 0.011, 1, prefill=True) == pytest.approx(0.011 + 0.004 + 0.00025 + 0.01)


def test_default_params_have_no_whole_iteration_terms() -> None:
    p = RooflineParams()
    assert (p.host_layer_s, p.sequence_overhead_s, p.prefill_overhead_s, p.prefill_pair_s) == (0, 0, 0, 0)
    assert kernel_params(TRUTH) == KERNEL


def test_a_host_floor_stops_decode_from_speeding_up_with_tp() -> None:
    # 80 layers at 0.4 ms: a 32 ms floor. The weights' read time at TP 4 and 8 is below it.
    steps = {tp: at(tp, TRUTH).decode_step_coeffs(1)[0] for tp in (2, 4, 8)}
    assert steps[4] == pytest.approx(steps[8])
    assert steps[2] > steps[4]
    kernel_steps = {tp: at(tp, KERNEL).decode_step_coeffs(1)[0] for tp in (4, 8)}
    assert kernel_steps[8] < 0.8 * kernel_steps[4]


def test_decode_stays_linear_in_context_with_the_terms() -> None:
    lm = at(4, TRUTH)
    for batch in (1, 33, 256):
        fixed_s, per_ctx_s = lm.decode_step_coeffs(batch)
        for ctx in (batch * 100, batch * 3000):
            assert lm.iteration_s(0, 0, batch, ctx) == pytest.approx(fixed_s + per_ctx_s * ctx, rel=1e-12)
    # Each sequence adds its host time (and, at a batch this small, nothing on the GPU side binds).
    assert lm.decode_step_coeffs(9)[0] - lm.decode_step_coeffs(8)[0] == pytest.approx(2e-4, rel=1e-6)


def test_prefill_pays_the_prefill_overhead_and_the_unsharded_pair_time() -> None:
    base, priced = at(8, KERNEL), at(8, TRUTH)
    pairs = attn_pairs(8192, 0)
    # At 8192 tokens the GPU time is far above the host floor: the difference is the serial terms.
    extra = priced.prefill_s(8192) - base.prefill_s(8192)
    assert extra == pytest.approx(2e-4 + 0.012 + 1e-10 * LLAMA2_70B.layers * pairs)
    # A mixed iteration counts each decode sequence and the prefill's as sequences.
    mixed = priced.iteration_s(512, 0, 8, 8 * 600) - base.iteration_s(512, 0, 8, 8 * 600)
    assert mixed >= 9 * 2e-4 + 0.012


def test_the_fit_recovers_the_terms_that_generated_the_iterations() -> None:
    fit = fit_iteration(synthetic(TRUTH), LLAMA2_70B, at, KERNEL)
    assert fit.params.host_layer_s == pytest.approx(4e-4, abs=5e-6)
    assert fit.params.sequence_overhead_s == pytest.approx(2e-4, rel=0.02)
    assert fit.params.prefill_overhead_s == pytest.approx(0.012, rel=0.02)
    assert fit.params.prefill_pair_s == pytest.approx(1e-10, rel=0.02)
    assert max(fit.mape.values()) < 0.01
    # The kernel calibration it started from is kept.
    assert kernel_params(fit.params) == KERNEL


def test_leave_one_tp_out_never_fits_on_the_degree_it_judges() -> None:
    samples = synthetic(TRUTH)
    held_out = leave_one_tp_out(samples, LLAMA2_70B, at, KERNEL)
    assert sorted(held_out) == [2, 4, 8]
    for tp, (params, held) in held_out.items():
        assert {s.tp for s in held} == {tp}
        assert max(iteration_mape(held, at, params).values()) < 0.02
    with pytest.raises(ValueError, match="two TP degrees"):
        leave_one_tp_out([s for s in samples if s.tp == 2], LLAMA2_70B, at, KERNEL)
    with pytest.raises(ValueError, match="no whole-iteration samples"):
        fit_iteration([], LLAMA2_70B, at, KERNEL)


def test_bad_samples_are_refused() -> None:
    with pytest.raises(ValueError, match="phase"):
        IterationSample("both", 2, 512, 1, 0, 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        IterationSample("decode", 2, 512, 0, 0, 0.1)


def test_splitwise_rows_are_averaged_and_prefills_kept_at_batch_one() -> None:
    text = """\
model,hardware,prompt_size,batch_size,token_size,prompt_time,token_time,tensor_parallel
llama2-70b,a100-80gb,512,1,128,100,40,4
llama2-70b,a100-80gb,512,1,128,110,50,4
llama2-70b,a100-80gb,512,8,128,700,45,4
bloom-176b,a100-80gb,512,1,128,300,90,8
llama2-70b,a40,512,1,128,300,90,4
"""
    samples = parse_splitwise_csv(text, {"a100-80gb": "A100-80GB"}, {"llama2-70b": "Llama-2-70B"})
    assert list(samples) == [("A100-80GB", "Llama-2-70B")]
    got = {(s.phase, s.batch, s.ctx_tokens): s.measured_s for s in samples[("A100-80GB", "Llama-2-70B")]}
    assert got == {("decode", 1, 576): pytest.approx(0.045), ("prefill", 1, 0): pytest.approx(0.105),
                   ("decode", 8, 8 * 576): pytest.approx(0.045)}

