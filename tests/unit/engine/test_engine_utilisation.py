"""The two utilisation figures of a simulated engine and its token rates, law by law: GPU utilisation
(time busy, as nvidia-smi) against SM activity (compute used over peak), decode against prefill work,
prefix-cache hits against computed prompt tokens (HeteroScale's metric study, PAPERS.md section 3.4)."""

from __future__ import annotations

import pytest

from opscale.engine import EngineConfig, SimEngine, replay
from opscale.engine.outputs import EngineReport
from opscale.model import Request, Role
from opscale.perf import RooflineLatencyModel, load_catalog
from opscale.perf.flops import ModelFlops
from opscale.perf.operators import OperatorSplitLatencyModel, roofline_factory, split_groups
from opscale.perf.transfer import Link

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
LLAMA3_8B = CATALOG.model("Llama-3-8B")
H100 = CATALOG.sku("H100-80GB")
LATENCY = RooflineLatencyModel(LLAMA3_8B, H100, 1)


def req(i: int, at_s: float = 0.0, prompt: int = 512, output: int = 64, hashes: tuple[int, ...] = ()) -> Request:
    return Request(f"r{i}", LLAMA3_8B.name, "interactive", "eu", at_s, prompt, output, hashes)


def engine(role: Role = Role.UNIFIED, config: EngineConfig | None = None) -> SimEngine:
    return SimEngine("i", LLAMA3_8B, H100, 1, LATENCY, config or EngineConfig(), role=role)


def drive(e: SimEngine, requests: list[Request], until_s: float) -> EngineReport:
    """Submit those of `requests` that arrive by `until_s` (prefilled, landing at once, on a decode
    engine) and run to `until_s`; the engine's report there."""
    for r in (r for r in requests if r.arrival_s <= until_s):
        while (event_s := e.next_event_s()) is not None and event_s <= r.arrival_s:
            e.advance(event_s)
        if e.role is Role.DECODE:
            e.submit_prefilled(r, r.arrival_s, r.arrival_s)
        else:
            e.submit(r, r.arrival_s)
    while (event_s := e.next_event_s()) is not None and event_s <= until_s:
        e.advance(event_s)
    e.advance(until_s)
    return e.report(until_s)


@pytest.mark.parametrize("max_run_steps", [None, 1])
def test_a_full_decode_batch_keeps_the_gpu_busy_at_a_small_fraction_of_its_compute(max_run_steps: int | None) -> None:
    # 256 sequences decoding for the whole window: busy all the time, memory-bound all the time.
    e = engine(Role.DECODE, EngineConfig(max_run_steps=max_run_steps))
    report = drive(e, [req(i, prompt=512, output=2000) for i in range(256)], until_s=20.0)
    assert e.running == 256
    assert report.busy_frac == pytest.approx(1.0)
    assert 0.02 < report.sm_activity < 0.3 * report.busy_frac
    assert report.prefill_tps == report.prefill_missed_tps == 0.0
    # Every sequence makes one token a step, so the window's rate is the batch over the step time, which
    # grows with the context; counted alike whether the steps ran one event each or as one closed-form
    # run still in flight at the report.
    fixed_s, per_ctx_s = LATENCY.decode_step_coeffs(256)
    shortest_s, longest_s = fixed_s + per_ctx_s * 256 * 513, fixed_s + per_ctx_s * 256 * 2513
    assert 256 / longest_s <= report.decode_tps <= 256 / shortest_s


def test_a_prefill_heavy_load_uses_most_of_the_compute_it_keeps_busy() -> None:
    # Long prompts, one output token, arriving faster than they can be prefilled: compute-bound GEMMs.
    e = engine()
    report = drive(e, [req(i, at_s=0.05 * i, prompt=4000, output=1) for i in range(400)], until_s=15.0)
    assert report.busy_frac == pytest.approx(1.0)
    # The roofline reaches compute_efficiency of the peak on compute-bound work; overhead takes a little.
    ceiling = LATENCY.params.compute_efficiency
    assert 0.8 * ceiling < report.sm_activity <= ceiling
    assert report.prefill_tps == report.prefill_missed_tps > 0  # no prefix cache: every token computed
    assert report.decode_tps == 0.0  # one output token each: sampled by the prefill, no decode step


def test_decode_engines_sm_activity_is_far_below_a_prefill_engines_at_the_same_busy_time() -> None:
    decode = engine(Role.DECODE)
    decode_report = drive(decode, [req(i, prompt=512, output=2000) for i in range(256)], until_s=20.0)
    prefill = engine(Role.PREFILL)
    prefill_report = drive(prefill, [req(i, at_s=0.05 * i, prompt=4000, output=50) for i in range(400)], until_s=15.0)
    assert decode_report.busy_frac == pytest.approx(prefill_report.busy_frac)
    assert decode_report.sm_activity < 0.4 * prefill_report.sm_activity
    assert prefill_report.decode_tps == 0.0 and prefill_report.prefill_tps > 0


def shared_prefix_requests(n: int) -> list[Request]:
    """Every request starts with the same 4 prefix blocks (2048 tokens) and adds one block of its own."""
    return [req(i, at_s=0.2 * i, prompt=2500, output=20, hashes=(1, 2, 3, 4, 100 + i)) for i in range(n)]


def test_prefix_cache_hits_lower_the_missed_prefill_rate_but_not_the_prefill_rate() -> None:
    requests = shared_prefix_requests(40)
    window = EngineConfig(report_window_s=100.0)  # one window over the whole run
    plain = engine(config=window)
    plain_report = drive(plain, requests, until_s=50.0)
    cached = engine(config=EngineConfig(report_window_s=100.0, enable_prefix_caching=True))
    cached_report = drive(cached, requests, until_s=50.0)

    assert cached.prefix_hit_tokens == 39 * 2048  # all but the first reuse the shared prefix
    assert cached.prefill_tokens == plain.prefill_tokens == 40 * 2500
    assert cached.prefill_tokens_computed == plain.prefill_tokens_computed - cached.prefix_hit_tokens
    assert cached_report.prefill_tps == plain_report.prefill_tps == 40 * 2500 / 100.0
    assert plain_report.prefill_missed_tps == plain_report.prefill_tps
    assert cached_report.prefill_missed_tps == (40 * 2500 - 39 * 2048) / 100.0
    assert cached.flops < plain.flops  # a hit's tokens are not computed
    assert cached_report.decode_tps == plain_report.decode_tps  # the same tokens decoded


def test_an_idle_engine_reports_zero_for_every_figure() -> None:
    e = engine()
    for now_s in (0.0, 5.0):
        e.advance(now_s)
        report = e.report(now_s)
        assert (report.busy_frac, report.sm_activity, report.tokens_per_s, report.decode_tps, report.prefill_tps,
                report.prefill_missed_tps) == (0.0,) * 6
    assert e.flops == e.busy_s == 0.0 and e.decode_tokens == e.prefill_tokens == 0
    # After work, once the window has moved past it, the figures are 0 again.
    replay(e, [req(0, at_s=6.0)])
    later = e.report(30.0)
    assert (later.busy_frac, later.sm_activity, later.decode_tps, later.prefill_tps) == (0.0,) * 4
    assert e.flops > 0 and e.decode_tokens == 63 and e.prefill_tokens == 512


def test_a_window_over_the_whole_run_reports_the_engines_totals() -> None:
    requests = [req(i, at_s=0.01 * i, prompt=300 + 37 * i, output=20 + i) for i in range(120)]
    e = engine(config=EngineConfig(report_window_s=1000.0))
    replay(e, requests)
    report = e.report(1000.0)
    assert report.sm_activity == pytest.approx(e.flops / (1000.0 * e.peak_flops_per_s), rel=1e-9)
    assert report.decode_tps * 1000.0 == pytest.approx(e.decode_tokens)
    assert report.prefill_tps * 1000.0 == pytest.approx(e.prefill_tokens)
    assert e.decode_tokens == sum(r.output_tokens - 1 for r in requests)  # the prefill samples the first
    assert e.output_tokens == sum(r.output_tokens for r in requests)
    assert e.prefill_tokens == e.prefill_tokens_computed == sum(r.prompt_tokens for r in requests)


def test_closed_form_decode_runs_count_the_flops_of_their_steps_one_by_one() -> None:
    requests = [req(i, at_s=0.02 * i, prompt=200 + 50 * i, output=100 + 13 * i) for i in range(40)]
    compressed, stepwise = engine(), engine(config=EngineConfig(max_run_steps=1))
    replay(compressed, requests)
    replay(stepwise, requests)
    assert compressed.flops == pytest.approx(stepwise.flops, rel=1e-9)
    assert compressed.decode_tokens == stepwise.decode_tokens
    # And the FLOP count is the model's: prompts' GEMMs, logits and causal attention, then each decode step.
    flops = ModelFlops.of(LLAMA3_8B)
    assert compressed.flops > sum(flops.per_token * (r.prompt_tokens + r.output_tokens - 1) for r in requests)


def test_a_stopped_run_counts_the_flops_of_the_time_it_ran() -> None:
    e = engine()
    e.submit(req(0, prompt=8000, output=1), 0.0)
    step_s = e.next_event_s()
    assert step_s is not None
    e.stop(step_s / 2)
    whole = engine()
    replay(whole, [req(0, prompt=8000, output=1)])
    assert e.flops == pytest.approx(whole.flops / 2, rel=1e-9)
    assert e.prefill_tokens == 0  # its outputs are lost: no tokens


def test_an_operator_split_engine_measures_against_every_gpu_it_holds() -> None:
    split = OperatorSplitLatencyModel(roofline_factory(LLAMA3_8B),
                                      split_groups((H100, 1, 1), (H100, 1, 2)), Link(gbps=400.0, latency_s=5e-6))
    footprint = split.footprint()
    assert footprint.peak_flops_per_s == 3 * H100.peak_tflops * 1e12
    e = SimEngine("s", LLAMA3_8B, H100, 1, split, footprint=footprint)
    assert e.peak_flops_per_s == footprint.peak_flops_per_s
