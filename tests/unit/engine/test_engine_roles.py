"""Prefill and decode engines: the hand-off, the KV transfer's timing, and their lifecycle and books."""

from __future__ import annotations

import pytest

from opscale.engine import (
    EngineConfig,
    Finished,
    FirstToken,
    PrefillDone,
    SimEngine,
    Tokens,
    WrongRoleError,
    replay,
    replay_disaggregated,
)
from opscale.engine.outputs import EngineOutput
from opscale.model import Request, Role
from opscale.perf import RooflineLatencyModel, load_catalog

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
LLAMA3_8B = CATALOG.model("Llama-3-8B")
H100 = CATALOG.sku("H100-80GB")
LATENCY = RooflineLatencyModel(LLAMA3_8B, H100, 1)


def engine(role: Role, config: EngineConfig | None = None) -> SimEngine:
    return SimEngine(f"{role}-1", LLAMA3_8B, H100, 1, LATENCY, config or EngineConfig(), role=role)


def req(i: int, at_s: float = 0.0, prompt: int = 512, output: int = 64) -> Request:
    return Request(f"r{i}", LLAMA3_8B.name, "interactive", "eu", at_s, prompt, output)


def drain(e: SimEngine) -> list[EngineOutput]:
    outputs: list[EngineOutput] = []
    while (at := e.next_event_s()) is not None:
        outputs += e.advance(at)
    return outputs


def test_engines_refuse_the_wrong_kind_of_submission() -> None:
    with pytest.raises(WrongRoleError, match="decode instance.*r0.*submit_prefilled"):
        engine(Role.DECODE).submit(req(0), 0.0)
    for role in (Role.UNIFIED, Role.PREFILL):
        with pytest.raises(WrongRoleError, match=f"{role} instance.*r0"):
            engine(role).submit_prefilled(req(0), 0.0, 0.1)
    with pytest.raises(ValueError, match=r"kv_ready_s \(0.5\).*now_s \(1.0\)"):
        engine(Role.DECODE).submit_prefilled(req(0), 1.0, 0.5)
    with pytest.raises(ValueError, match="kv_ready_s"):
        engine(Role.DECODE).submit_prefilled(req(0), 1.0, float("nan"))


def test_prefill_done_carries_the_prompts_kv() -> None:
    p = engine(Role.PREFILL)
    p.submit(req(0, prompt=1000, output=10), 2.0)
    (done,) = drain(p)
    assert isinstance(done, PrefillDone)
    assert done.at_s == pytest.approx(2.0 + LATENCY.prefill_s(1000))
    assert done.first_token_s == done.at_s
    assert done.kv_bytes == 1000 * LLAMA3_8B.kv_bytes_per_token


def test_a_prefilled_request_joins_the_moment_its_kv_lands_on_an_idle_engine() -> None:
    d = engine(Role.DECODE)
    d.submit_prefilled(req(0, prompt=800, output=3), 1.0, 1.25)
    assert d.queued == 1 and d.next_event_s() == 1.0  # the scheduler reserves its KV: no iteration
    assert d.advance(1.0) == []
    assert d.running == 1 and d.queued == 0 and d.kv_used_frac > 0
    assert d.next_event_s() == pytest.approx(1.25)  # nothing runs while the KV is in flight
    outputs = drain(d)
    assert outputs[0] == FirstToken("r0", 1.25)
    fixed_s, per_ctx_s = LATENCY.decode_step_coeffs(1)
    second = 1.25 + fixed_s + per_ctx_s * 801  # the handed-over token is decoded first
    third = second + fixed_s + per_ctx_s * 802
    tokens = [o for o in outputs if isinstance(o, Tokens)]
    assert sum(t.count for t in tokens) == 2
    finished = outputs[-1]
    assert isinstance(finished, Finished)
    assert finished.at_s == pytest.approx(third)
    assert finished.first_token_s == pytest.approx(1.25) and finished.output_tokens == 3
    assert d.prefill_tokens_computed == 0 and d.output_tokens == 2


def test_a_one_token_request_finishes_on_landing() -> None:
    d = engine(Role.DECODE)
    d.submit_prefilled(req(0, output=1), 0.0, 0.01)
    assert drain(d) == [FirstToken("r0", 0.01), Finished("r0", 0.01, 0.01, 1, 512)]
    assert d.is_idle and d.kv_used_frac == 0.0


def test_kv_landing_mid_run_joins_at_the_next_step_boundary() -> None:
    d = engine(Role.DECODE)
    d.submit_prefilled(req(0, prompt=100, output=500), 0.0, 0.0)
    assert d.advance(0.0) == [FirstToken("r0", 0.0)]
    fixed_s, per_ctx_s = LATENCY.decode_step_coeffs(1)
    boundaries = [0.0]
    for j in range(1, 40):
        boundaries.append(boundaries[-1] + fixed_s + per_ctx_s * (100 + j))
    # Submitted before boundary 10; allocated there (a step), its KV lands mid-way through step 15.
    arrival = (boundaries[9] + boundaries[10]) / 2
    landing_after_s = (boundaries[14] + boundaries[15]) / 2 - boundaries[10]
    d.submit_prefilled(req(1, prompt=300, output=5), arrival, arrival + landing_after_s)
    first = {o.request_id: o.at_s for o in drain(d) if isinstance(o, FirstToken)}
    assert first["r1"] == pytest.approx(boundaries[15])


def test_the_transfer_starts_when_the_decode_engine_has_room_for_the_kv() -> None:
    # A KV cache for one long request at a time: the second waits until the first has finished.
    config = EngineConfig(gpu_memory_utilization=0.215)
    d = engine(Role.DECODE, config)
    prompt = d.max_request_tokens - 200
    assert 2 * prompt > d.total_blocks * config.block_size
    d.submit_prefilled(req(0, prompt=prompt, output=100), 0.0, 0.0)
    d.submit_prefilled(req(1, prompt=prompt, output=100), 0.0, 0.05)
    outputs = drain(d)
    finished = {o.request_id: o for o in outputs if isinstance(o, Finished)}
    # r1's transfer takes 0.05 s from the boundary where r0's KV was freed.
    assert finished["r1"].first_token_s == pytest.approx(finished["r0"].at_s + 0.05)
    assert d.preemptions == 0 and d.prefill_tokens_computed == 0


def test_decode_engine_preemption_recomputes_locally() -> None:
    config = EngineConfig(gpu_memory_utilization=0.23)
    d = engine(Role.DECODE, config)
    requests = [req(i, prompt=1500, output=800) for i in range(20)]
    outputs = replay(d, requests, lambda r: 0.001)
    assert d.preemptions > 0 and d.prefill_tokens_computed > 0
    counts = {r.request_id: 0 for r in requests}
    for o in outputs:
        if isinstance(o, FirstToken):
            counts[o.request_id] += 1
        elif isinstance(o, Tokens):
            counts[o.request_id] += o.count
    assert counts == {r.request_id: 800 for r in requests}
    assert sum(isinstance(o, FirstToken) for o in outputs) == len(requests)
    assert d.is_idle and d.kv_used_frac == 0.0


def test_cancel_and_stop_while_the_kv_is_in_flight() -> None:
    d = engine(Role.DECODE)
    d.submit_prefilled(req(0), 0.0, 1.0)
    d.submit_prefilled(req(1), 0.0, 2.0)
    assert d.cancel("r0", 0.5)
    assert d.next_event_s() == pytest.approx(2.0)
    assert d.cancelled == 1 and d.running == 1
    report = d.report(0.5)
    assert report.power_w == H100.idle_power_w and report.busy_frac == 0.0 and not report.idle
    assert report.outstanding_tokens == 63  # decode work only: the prompt is not prefilled here
    unfinished = d.stop(1.5)
    assert [r.request_id for r in unfinished] == ["r1"]
    assert d.energy_j == pytest.approx(1.5 * H100.idle_power_w)
    assert d.busy_s == 0.0


def test_a_new_request_is_taken_during_a_wait_for_kv() -> None:
    d = engine(Role.DECODE)
    d.submit_prefilled(req(0, output=2), 0.0, 5.0)
    d.submit_prefilled(req(1, output=2), 1.0, 1.1)
    first = {o.request_id: o.at_s for o in drain(d) if isinstance(o, FirstToken)}
    assert first == {"r1": pytest.approx(1.1), "r0": pytest.approx(5.0)}


def test_replay_disaggregated_needs_a_prefill_and_a_decode_engine() -> None:
    with pytest.raises(ValueError, match="prefill and a decode engine.*unified"):
        replay_disaggregated(engine(Role.UNIFIED), engine(Role.DECODE), [], lambda r, b: 0.0)


def test_disaggregated_serving_accounts_every_token_once() -> None:
    requests = [req(i, at_s=0.02 * i, prompt=300 + 50 * i, output=20 + i) for i in range(30)]
    p, d = engine(Role.PREFILL), engine(Role.DECODE)
    outputs = replay_disaggregated(p, d, requests, lambda r, kv_bytes: 0.004)
    done = {o.request_id: o for o in outputs if isinstance(o, PrefillDone)}
    finished = {o.request_id: o for o in outputs if isinstance(o, Finished)}
    assert sorted(done) == sorted(finished) == sorted(r.request_id for r in requests)
    for rid, f in finished.items():
        assert f.first_token_s >= done[rid].at_s + 0.004
    assert p.output_tokens + d.output_tokens == sum(r.output_tokens for r in requests)
    assert p.prefill_tokens_computed == sum(r.prompt_tokens for r in requests)
    assert d.prefill_tokens_computed == 0
