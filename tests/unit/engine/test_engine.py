"""Behaviour of the simulated engine: latency shapes, KV pressure, lifecycle, accounting and reports."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.engine import (
    EngineConfig,
    EngineNotAcceptingError,
    Finished,
    FirstToken,
    Preempted,
    RequestTooLargeError,
    SimEngine,
    Tokens,
    replay,
)
from opscale.engine.outputs import EngineOutput
from opscale.model import Request
from opscale.perf import RooflineLatencyModel, load_catalog

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
LLAMA3_8B = CATALOG.model("Llama-3-8B")
H100 = CATALOG.sku("H100-80GB")
LATENCY = RooflineLatencyModel(LLAMA3_8B, H100, 1)


def engine(config: EngineConfig | None = None) -> SimEngine:
    return SimEngine("i-1", LLAMA3_8B, H100, 1, LATENCY, config or EngineConfig())


def req(i: int, at_s: float = 0.0, prompt: int = 512, output: int = 64) -> Request:
    return Request(f"r{i}", LLAMA3_8B.name, "interactive", "eu", at_s, prompt, output)


def by_type(outputs: list[EngineOutput], kind: type) -> dict[str, EngineOutput]:
    return {o.request_id: o for o in outputs if isinstance(o, kind)}


def ttft(outputs: list[EngineOutput], requests: list[Request]) -> dict[str, float]:
    first = by_type(outputs, FirstToken)
    return {r.request_id: first[r.request_id].at_s - r.arrival_s for r in requests}


def tbt(outputs: list[EngineOutput]) -> dict[str, float]:
    return {rid: (f.at_s - f.first_token_s) / (f.output_tokens - 1)
            for rid, f in by_type(outputs, Finished).items()}


# --- latency shapes -----------------------------------------------------------------------------------


def test_ttft_grows_with_prompt_length() -> None:
    ttfts = []
    for prompt in (16, 256, 1024, 4096, 8000):
        requests = [req(0, prompt=prompt, output=1)]
        ttfts.append(ttft(replay(engine(), requests), requests)["r0"])
    assert ttfts == sorted(ttfts)
    assert len(set(ttfts)) == len(ttfts)


def test_idle_engine_ttft_is_one_prefill_iteration() -> None:
    requests = [req(0, at_s=5.0, prompt=1000, output=1)]
    assert ttft(replay(engine(), requests), requests)["r0"] == pytest.approx(LATENCY.prefill_s(1000))


def test_long_prompt_is_prefilled_in_chunks() -> None:
    config = EngineConfig(max_batched_tokens=1024, max_num_seqs=64)
    e = engine(config)
    requests = [req(0, prompt=3000, output=1)]
    got = ttft(replay(e, requests), requests)["r0"]
    expected = LATENCY.prefill_s(1024, 0) + LATENCY.prefill_s(1024, 1024) + LATENCY.prefill_s(952, 2048)
    assert got == pytest.approx(expected)
    assert e.prefill_tokens_computed == 3000


def test_ttft_grows_with_queueing() -> None:
    # One sequence at a time: the n-th request waits for the n-1 before it.
    requests = [req(i, prompt=256, output=32) for i in range(6)]
    times = ttft(replay(engine(EngineConfig(max_num_seqs=1, max_batched_tokens=1024)), requests), requests)
    ordered = [times[r.request_id] for r in requests]
    assert all(a < b for a, b in zip(ordered, ordered[1:], strict=False))


def test_tbt_grows_with_batch_size() -> None:
    means = []
    for batch in (1, 8, 64, 256):
        requests = [req(i, prompt=512, output=200) for i in range(batch)]
        per_request = tbt(replay(engine(), requests))
        means.append(sum(per_request.values()) / len(per_request))
    assert all(a < b for a, b in zip(means, means[1:], strict=False))


def test_throughput_saturates_as_load_rises() -> None:
    def throughput(rate_rps: float) -> float:
        n = 600
        requests = [req(i, at_s=i / rate_rps, prompt=512, output=128) for i in range(n)]
        outputs = replay(engine(), requests)
        end = max(o.at_s for o in outputs)
        return n * 128 / end

    low, mid, high, very_high = (throughput(r) for r in (1.0, 10.0, 200.0, 2000.0))
    assert low == pytest.approx(128.0, rel=0.05)  # an idle engine keeps up with light load
    assert mid == pytest.approx(1280.0, rel=0.05)
    assert very_high < 1.25 * high  # past capacity, more load adds little throughput
    assert high < 200 * 128  # and the engine cannot keep up with 200 rps of these


# --- KV cache and preemption --------------------------------------------------------------------------


def small_kv_engine(block_size: int = 16) -> SimEngine:
    # 0.23 of 80 GB leaves ~2.3 GB of KV: about 18k tokens of Llama-3-8B.
    return engine(EngineConfig(gpu_memory_utilization=0.23, block_size=block_size))


def test_kv_blocks_follow_memory_left_after_weights() -> None:
    e = engine()
    kv_bytes = 0.9 * 80e9 - LLAMA3_8B.weight_bytes
    assert e.total_blocks == int(kv_bytes // (16 * LLAMA3_8B.kv_bytes_per_token))


def test_kv_exhaustion_preempts_yet_every_request_finishes() -> None:
    e = small_kv_engine()
    requests = [req(i, at_s=0.01 * i, prompt=1500, output=600) for i in range(40)]
    outputs = replay(e, requests)
    assert e.preemptions > 0
    assert sum(isinstance(o, Preempted) for o in outputs) == e.preemptions
    finished = [o for o in outputs if isinstance(o, Finished)]
    assert sorted(f.request_id for f in finished) == sorted(r.request_id for r in requests)
    # Preempted sequences are recomputed: more prefill than prompts.
    assert e.prefill_tokens_computed > sum(r.prompt_tokens for r in requests)
    assert e.is_idle and e.kv_used_frac == 0.0


def test_preempted_request_is_requeued_and_keeps_its_tokens() -> None:
    e = small_kv_engine()
    requests = [req(i, prompt=1500, output=800) for i in range(20)]
    outputs = replay(e, requests)
    victims = {o.request_id for o in outputs if isinstance(o, Preempted)}
    assert victims
    counts = {r.request_id: 0 for r in requests}
    for o in outputs:
        if isinstance(o, FirstToken):
            counts[o.request_id] += 1
        elif isinstance(o, Tokens):
            counts[o.request_id] += o.count
    assert all(counts[r.request_id] == r.output_tokens for r in requests)
    # Only one FirstToken per request, even for those prefilled twice.
    assert sum(isinstance(o, FirstToken) for o in outputs) == len(requests)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 2), st.integers(1, 3000), st.integers(1, 1500)), min_size=1, max_size=40),
    st.sampled_from([0.23, 0.3, 0.9]),
    st.sampled_from([None, 1, 7]),
)
def test_every_request_finishes_exactly_once_with_its_tokens(
    shapes: list[tuple[float, int, int]], memory: float, max_run_steps: int | None,
) -> None:
    e = engine(EngineConfig(gpu_memory_utilization=memory, max_run_steps=max_run_steps,
                            max_num_seqs=32, max_batched_tokens=2048))
    requests = [req(i, at_s=at, prompt=p, output=o)
                for i, (at, p, o) in enumerate(sorted(shapes, key=lambda s: s[0]))]
    outputs = replay(e, requests)
    finished = [o for o in outputs if isinstance(o, Finished)]
    assert sorted(f.request_id for f in finished) == sorted(r.request_id for r in requests)
    tokens = {r.request_id: 0 for r in requests}
    last_s = {r.request_id: r.arrival_s for r in requests}
    for o in outputs:
        if isinstance(o, FirstToken | Tokens):
            tokens[o.request_id] += o.count if isinstance(o, Tokens) else 1
            assert o.at_s >= last_s[o.request_id]
            last_s[o.request_id] = o.at_s
    for r in requests:
        assert tokens[r.request_id] == r.output_tokens
    for f in finished:
        assert f.at_s == last_s[f.request_id]
        assert f.output_tokens == tokens[f.request_id]
    assert e.output_tokens == sum(r.output_tokens for r in requests)
    assert e.is_idle and e.kv_used_frac == 0.0


# --- event compression ----------------------------------------------------------------------------------


def count_events(e: SimEngine, requests: list[Request]) -> int:
    for r in requests:
        e.submit(r, r.arrival_s)
    events = 0
    while (at := e.next_event_s()) is not None:
        e.advance(at)
        events += 1
    return events


def test_a_decode_run_is_one_event_not_one_per_token() -> None:
    requests = [req(0, prompt=100, output=1000), req(1, prompt=100, output=400)]
    # Prefill iteration, a run to the first completion, a run to the second.
    assert count_events(engine(), requests) == 3
    assert count_events(engine(EngineConfig(max_run_steps=1)), requests) == 1000


def test_max_run_steps_one_streams_every_token() -> None:
    outputs = replay(engine(EngineConfig(max_run_steps=1)), [req(0, prompt=64, output=50)])
    tokens = [o for o in outputs if isinstance(o, Tokens)]
    assert len(tokens) == 49 and all(t.count == 1 for t in tokens)
    assert [t.at_s for t in tokens] == sorted({t.at_s for t in tokens})


def test_arrival_during_a_run_joins_at_the_next_step_boundary() -> None:
    e = engine()
    first = req(0, prompt=100, output=500)
    e.submit(first, 0.0)
    t_first = e.advance(e.next_event_s())[0].at_s  # the prefill iteration
    fixed_s, per_ctx_s = LATENCY.decode_step_coeffs(1)
    # Step j (1-based) of the lone decoder attends over 100 + j tokens.
    boundaries = [t_first]
    for j in range(1, 40):
        boundaries.append(boundaries[-1] + fixed_s + per_ctx_s * (100 + j))
    arrival = (boundaries[20] + boundaries[21]) / 2
    e.submit(req(1, at_s=arrival, prompt=300, output=5), arrival)
    outputs = []
    while (at := e.next_event_s()) is not None:
        outputs += e.advance(at)
    joined = boundaries[21]
    mixed = LATENCY.iteration_s(300, 0, 1, 100 + 22)
    assert by_type(outputs, FirstToken)["r1"].at_s == pytest.approx(joined + mixed)


def test_outputs_produced_inside_submit_come_back_from_the_next_advance() -> None:
    e = engine()
    e.submit(req(0, prompt=100, output=1), 0.0)
    e.submit(req(1, at_s=10.0, prompt=100, output=1), 10.0)  # r0 finished long before
    outputs = e.advance(10.0)
    assert {o.request_id for o in outputs if isinstance(o, Finished)} == {"r0"}


# --- lifecycle and errors -------------------------------------------------------------------------------


def test_drain_refuses_new_requests_but_finishes_queued_ones() -> None:
    e = engine(EngineConfig(max_num_seqs=1, max_batched_tokens=512))
    for i in range(3):
        e.submit(req(i), 0.0)
    e.drain()
    with pytest.raises(EngineNotAcceptingError, match="draining"):
        e.submit(req(9), 0.0)
    outputs = []
    while (at := e.next_event_s()) is not None:
        outputs += e.advance(at)
    assert len(by_type(outputs, Finished)) == 3
    assert e.is_idle


def test_stop_hands_back_unfinished_requests() -> None:
    e = engine(EngineConfig(max_num_seqs=1, max_batched_tokens=512))
    requests = [req(i, output=500) for i in range(3)]
    for r in requests:
        e.submit(r, 0.0)
    unfinished = e.stop(0.05)
    assert {r.request_id for r in unfinished} == {"r0", "r1", "r2"}
    assert e.next_event_s() is None
    with pytest.raises(EngineNotAcceptingError, match="stopped"):
        e.submit(req(7), 1.0)


def test_request_longer_than_the_model_allows_is_refused() -> None:
    e = engine()
    with pytest.raises(RequestTooLargeError, match="r0.*8192"):
        e.submit(req(0, prompt=8000, output=500), 0.0)
    e_short = engine(EngineConfig(max_model_len=1024))
    with pytest.raises(RequestTooLargeError, match="1024"):
        e_short.submit(req(0, prompt=1000, output=100), 0.0)


def test_duplicate_request_id_and_time_going_backwards_are_refused() -> None:
    e = engine()
    e.submit(req(0), 1.0)
    with pytest.raises(ValueError, match="already"):
        e.submit(req(0), 1.0)
    with pytest.raises(ValueError, match="backwards"):
        e.advance(0.5)


def test_weights_that_do_not_fit_are_a_clear_error() -> None:
    model = CATALOG.model("Llama-3-70B")
    sku = CATALOG.sku("A10G")
    with pytest.raises(ValueError, match="Llama-3-70B.*no room"):
        SimEngine("x", model, sku, 1, RooflineLatencyModel(model, sku, 1))


def test_config_rejects_a_budget_smaller_than_the_batch() -> None:
    with pytest.raises(ValueError, match="max_batched_tokens"):
        EngineConfig(max_num_seqs=256, max_batched_tokens=128)


# --- accounting and reports ------------------------------------------------------------------------------


def test_idle_engine_draws_idle_power() -> None:
    e = engine()
    e.advance(0.0)
    e.advance(100.0)
    assert e.energy_j == pytest.approx(100.0 * H100.idle_power_w)
    report = e.report(100.0)
    assert report.idle and report.power_w == H100.idle_power_w and report.busy_frac == 0.0


def test_energy_lies_between_idle_and_max_power_and_busy_time_adds_up() -> None:
    e = engine()
    requests = [req(i, at_s=0.05 * i, prompt=800, output=200) for i in range(100)]
    outputs = replay(e, requests)
    end = max(o.at_s for o in outputs)
    assert 0 < e.busy_s <= end
    assert H100.idle_power_w * end < e.energy_j < H100.max_power_w * end
    assert e.output_tokens == 100 * 200


def test_report_of_a_busy_engine() -> None:
    e = engine(EngineConfig(max_num_seqs=8, max_batched_tokens=1024))
    for i in range(20):
        e.submit(req(i, prompt=400, output=300), 0.0)
    e.advance(5.0)
    report = e.report(5.0)
    assert report.instance_id == "i-1"
    assert report.running == 8 and report.queued > 0
    assert not report.idle
    assert 0 < report.kv_used_frac < 1
    assert report.busy_frac == pytest.approx(0.5, rel=1e-6)  # busy for all 5 s of the 10 s window
    assert report.tokens_per_s > 0
    assert H100.idle_power_w < report.power_w < H100.max_power_w
    # outstanding: queued requests' prompts and outputs plus the running ones' remaining work
    assert report.outstanding_tokens > report.queued * 700
    assert math.isfinite(report.outstanding_tokens)


def test_an_id_may_come_back_once_its_request_has_finished() -> None:
    e = engine()
    e.submit(req(0, prompt=100, output=1), 0.0)
    e.submit(req(0, at_s=10.0, prompt=100, output=1), 10.0)  # r0's first life ended long before
    outputs = e.advance(10.0)
    while (at := e.next_event_s()) is not None:
        outputs += e.advance(at)
    assert sum(isinstance(o, Finished) for o in outputs) == 2


def test_stopping_mid_iteration_counts_the_energy_spent_so_far() -> None:
    e = engine()
    e.submit(req(0, prompt=8000, output=10), 0.0)
    end_s = e.next_event_s()
    assert end_s is not None
    e.stop(end_s / 2)
    assert e.busy_s == pytest.approx(end_s / 2)
    assert H100.idle_power_w * end_s / 2 < e.energy_j < H100.max_power_w * end_s / 2


def drain_events(e: SimEngine) -> list[EngineOutput]:
    outputs: list[EngineOutput] = []
    while (at := e.next_event_s()) is not None:
        outputs += e.advance(at)
    return outputs


def test_cancel_removes_waiting_running_and_prefilling_requests() -> None:
    e = engine(EngineConfig(max_num_seqs=2, max_batched_tokens=512))
    for i, (prompt, output) in enumerate([(100, 2000), (3000, 50), (200, 40), (200, 40)]):
        e.submit(req(i, prompt=prompt, output=output), 0.0)
    outputs = e.advance(0.05)  # r0 decoding, r1 in chunked prefill, r2 and r3 waiting
    assert e.running == 2 and e.queued == 2
    assert e.cancel("r2", 0.05)  # waiting
    assert e.cancel("r1", 0.06)  # mid-prefill
    assert e.cancel("r0", 0.5)  # mid decode run
    assert not e.cancel("nope", 0.5)
    outputs += drain_events(e)
    finished = {o.request_id for o in outputs if isinstance(o, Finished)}
    assert finished == {"r3"}
    assert e.cancelled == 3
    assert e.is_idle and e.kv_used_frac == 0.0
    # Nothing of a cancelled request comes after the boundary that follows its cancellation.
    assert max(o.at_s for o in outputs if o.request_id == "r0") < 0.6


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 3), st.integers(1, 2000), st.integers(1, 800), st.booleans()),
                min_size=1, max_size=30),
       st.floats(0, 2))
def test_random_cancellations_keep_the_books_straight(
    shapes: list[tuple[float, int, int, bool]], cancel_after_s: float,
) -> None:
    e = engine(EngineConfig(gpu_memory_utilization=0.23, max_num_seqs=16, max_batched_tokens=1024))
    shapes = sorted(shapes, key=lambda s: s[0])
    requests = [req(i, at_s=at, prompt=p, output=o) for i, (at, p, o, _) in enumerate(shapes)]
    doomed = {r.request_id for r, (*_, cancel) in zip(requests, shapes, strict=True) if cancel}
    events: list[tuple[float, int, Request]] = [(r.arrival_s, 0, r) for r in requests]
    events += [(r.arrival_s + cancel_after_s, 1, r) for r in requests if r.request_id in doomed]
    outputs: list[EngineOutput] = []
    for at, kind, r in sorted(events, key=lambda ev: (ev[0], ev[1])):
        while (next_s := e.next_event_s()) is not None and next_s <= at:
            outputs += e.advance(next_s)
        if kind == 0:
            e.submit(r, at)
        else:
            e.cancel(r.request_id, at)
    outputs += drain_events(e)
    finished = {o.request_id for o in outputs if isinstance(o, Finished)}
    assert {r.request_id for r in requests} - doomed <= finished
    assert len(finished) + e.cancelled == len(requests)
    assert e.is_idle and e.kv_used_frac == 0.0
