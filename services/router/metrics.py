"""The router's request series on its /metrics (Prometheus): every answer counted by model, HTTP status
and tenant, and each finished request's TTFT, TBT and end-to-end latency as histograms by model and tier.

Label values stay bounded: the model label is a served model (an unknown one is refused with 404 and
counted under model ""), tiers are the configured ones (an unknown one is refused before any record),
and `tenant` is the API key id (never the secret), "" when the router asks for no key.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from opscale.model import RequestOutcome

__all__ = ["RouterMetrics"]

# Bucket bounds, seconds: a TTFT from a cached short prompt to a cold start held in the queue; a TBT
# around the usual 20-100 ms objectives; an end-to-end from one token to a long batch generation.
TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TBT_BUCKETS_S = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.5, 1.0)
E2E_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("opscale_router_requests", "Answers of the OpenAI API by model, HTTP status "
                                "and tenant (499: the client went away first)",
                                labelnames=("model", "status", "tenant"), registry=registry)
        self.ttft = Histogram("opscale_router_ttft_seconds", "Time to first token of each request that produced "
                              "one", labelnames=("model", "tier"), buckets=TTFT_BUCKETS_S, registry=registry)
        self.tbt = Histogram("opscale_router_tbt_seconds", "Mean time between output tokens of each completed "
                             "request", labelnames=("model", "tier"), buckets=TBT_BUCKETS_S, registry=registry)
        self.e2e = Histogram("opscale_router_e2e_seconds", "End-to-end latency of each completed request",
                             labelnames=("model", "tier"), buckets=E2E_BUCKETS_S, registry=registry)
        # labelled children looked up once per label set, not per request (the keys are bounded: served
        # models, configured tiers, statuses)
        self._answers: dict[tuple[str, int, str], Counter] = {}
        self._latencies: dict[tuple[str, str], tuple[Histogram, Histogram, Histogram]] = {}

    def answered(self, model: str, status: int, tenant: str = "") -> None:
        key = (model, status, tenant)
        counter = self._answers.get(key)
        if counter is None:
            counter = self._answers[key] = self.requests.labels(model, str(status), tenant)
        counter.inc()

    def finished(self, outcome: RequestOutcome) -> None:
        """A request's latencies, from its record (the same figures the aggregator windows)."""
        key = (outcome.model, outcome.tier)
        histograms = self._latencies.get(key)
        if histograms is None:
            histograms = self._latencies[key] = (self.ttft.labels(*key), self.tbt.labels(*key), self.e2e.labels(*key))
        ttft, tbt, e2e = histograms
        if (value := outcome.ttft_s) is not None:
            ttft.observe(value)
        if outcome.status != "ok":
            return
        if (value := outcome.tbt_s) is not None:
            tbt.observe(value)
        if (value := outcome.e2e_s) is not None:
            e2e.observe(value)
