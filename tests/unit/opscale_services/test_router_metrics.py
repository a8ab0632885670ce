"""The router's request series, counted in plain integers and bucket arrays and rendered at scrape: the
samples a prometheus_client Histogram would give (`le` buckets cumulative, a value on a bound counted in
that bound's bucket), by model and tier, and answers by model, status and tenant."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from opscale.model import RequestOutcome

from opscale_services.router.metrics import TTFT_BUCKETS_S, RouterMetrics

pytestmark = pytest.mark.unit


def outcome(first_token_s: float | None, finish_s: float | None, status: str = "ok", tier: str = "batch",
            output_tokens: int = 5) -> RequestOutcome:
    return RequestOutcome("r", "m", tier, "eu", "eu", "i1", 0.0, first_token_s, finish_s, 10, output_tokens, status)


def test_latencies_fill_cumulative_buckets_and_answers_count_by_label_set() -> None:
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    for o in (outcome(0.01, 1.0), outcome(0.2, 2.0), outcome(50.0, None, status="cancelled"),
              outcome(None, None, status="failed")):
        metrics.finished(o)
    for status in (200, 200, 429):
        metrics.answered("m", status, "team-a")

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"model": "m", "tier": "batch", **labels})

    assert sample("opscale_router_ttft_seconds_bucket", le="0.01") == 1  # on the bound: that bucket
    assert sample("opscale_router_ttft_seconds_bucket", le="0.25") == 2
    assert sample("opscale_router_ttft_seconds_bucket", le=str(TTFT_BUCKETS_S[-1])) == 3
    assert sample("opscale_router_ttft_seconds_bucket", le="+Inf") == 3
    assert sample("opscale_router_ttft_seconds_count") == 3
    assert sample("opscale_router_ttft_seconds_sum") == pytest.approx(50.21)
    # TBT and end-to-end only for completed requests
    assert sample("opscale_router_e2e_seconds_count") == 2
    assert sample("opscale_router_e2e_seconds_sum") == pytest.approx(3.0)
    assert sample("opscale_router_tbt_seconds_count") == 2
    assert registry.get_sample_value("opscale_router_requests_total",
                                     {"model": "m", "status": "200", "tenant": "team-a"}) == 2
    assert registry.get_sample_value("opscale_router_requests_total",
                                     {"model": "m", "status": "429", "tenant": "team-a"}) == 1
    assert sample("opscale_router_ttft_seconds_count", tier="interactive") is None  # no series until observed
