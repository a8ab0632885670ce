"""SLO-aware routing: least predicted TTFT over instances of different speeds, and the mark on a
request that cannot meet its tier's TTFT anywhere."""

from __future__ import annotations

import pytest
from _builders import heartbeat, req, status
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.model import Request
from opscale.model.tiers import DEFAULT_TIERS
from opscale.routing import Candidate
from opscale.routing.slo_aware import FixedPrefillThroughput, PerfPrefillThroughput, SloAware
from opscale.services.events import RequestArrived
from opscale.services.router import RouterConfig, RouterCore

pytestmark = pytest.mark.unit

RATES = {"H100-80GB": 50_000.0, "A10G": 5_000.0}


def cand(i: int, sku: str, queued: int) -> Candidate:
    return Candidate(f"i{i}", "m", "eu", "", "a1", outstanding_prefill_tokens=queued, sku=sku)


def by_sku() -> FixedPrefillThroughput:
    return FixedPrefillThroughput(per_candidate=lambda c: RATES[c.sku])


def test_a_fast_instance_with_a_longer_queue_beats_a_slow_idle_one() -> None:
    policy = SloAware(by_sku())
    pool = [cand(0, "A10G", 2_000), cand(1, "H100-80GB", 10_000)]
    r = req(1, prompt=1_000)
    # A10G: (2 000 + 1 000) / 5 000 = 0.6 s; H100: (10 000 + 1 000) / 50 000 = 0.22 s
    assert policy.choose(r, pool) is pool[1]
    assert policy.predicted_ttft_s(r, pool[1]) == pytest.approx(0.22)
    assert pool[policy.choose_indexed(r, pool, policy.build_index(pool))] is pool[1]


def test_a_request_that_cannot_meet_its_tier_ttft_is_marked() -> None:
    policy = SloAware(FixedPrefillThroughput(1_000.0))
    slow = cand(0, "A10G", 5_000)
    late = policy.note(req(1, prompt=100), slow)  # (5 000 + 100) / 1 000 = 5.1 s > 2 s
    assert late is not None and "5.100 s > interactive SLO 2.000 s" in late
    assert policy.note(req(2, prompt=100, tier="batch"), slow) is None  # batch TTFT SLO is 600 s
    assert policy.note(req(3, prompt=100, tier="unknown"), slow) is None
    assert policy.note(req(4, prompt=100), cand(1, "A10G", 0)) is None  # 0.1 s meets 2 s


def test_the_router_marks_an_at_risk_dispatch_in_its_reason() -> None:
    router = RouterCore(RouterConfig(policy="slo_aware", policy_params={"prefill_tokens_per_s": 1_000.0}))
    router.handle(heartbeat("a1", "eu", status("i1")), 0.0)
    [ok] = router.handle(RequestArrived(req(1, prompt=500)), 0.1)
    [late] = router.handle(RequestArrived(req(2, prompt=2_000)), 0.2)  # 500 queued: (500 + 2 000) / 1 000
    assert ok.reason == "slo_aware local"  # type: ignore[union-attr]
    assert "ttft at risk: predicted 2.500 s" in late.reason  # type: ignore[union-attr]


def test_the_performance_model_gives_faster_gpus_more_prefill_throughput() -> None:
    perf = PerfPrefillThroughput()
    h100 = perf.prefill_tokens_per_s(Candidate("a", "Llama-3-8B", "eu", "", "a", sku="H100-80GB"))
    a10g = perf.prefill_tokens_per_s(Candidate("b", "Llama-3-8B", "eu", "", "a", sku="A10G"))
    assert h100 > a10g > 0
    with pytest.raises(ValueError, match="NoSuchGPU"):
        perf.prefill_tokens_per_s(Candidate("c", "Llama-3-8B", "eu", "", "a", sku="NoSuchGPU"))
    fallback = PerfPrefillThroughput(fallback_tokens_per_s=1234.0)
    assert fallback.prefill_tokens_per_s(Candidate("c", "m", "eu", "", "a", sku="NoSuchGPU")) == 1234.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(RATES)), st.integers(0, 50_000)), min_size=1, max_size=25),
       st.lists(st.tuples(st.integers(0, 24), st.integers(1, 8_000)), max_size=60))
def test_the_indexed_choice_is_the_least_predicted_ttft_after_any_updates(
        shapes: list[tuple[str, int]], arrivals: list[tuple[int, int]]) -> None:
    policy = SloAware(by_sku(), DEFAULT_TIERS)
    pool = [cand(i, sku, queued) for i, (sku, queued) in enumerate(shapes)]
    index = policy.build_index(pool)
    for k, (changed, prompt) in enumerate(arrivals):
        i = changed % len(pool)
        pool[i].outstanding_prefill_tokens = (pool[i].outstanding_prefill_tokens * 7 + k) % 60_000
        index.update(i)
        r = Request(f"r{k}", "m", "interactive", "eu", 0.0, prompt, 1)
        chosen = pool[policy.choose_indexed(r, pool, index)]
        best = min(policy.predicted_ttft_s(r, c) for c in pool)
        assert policy.predicted_ttft_s(r, chosen) == pytest.approx(best)
