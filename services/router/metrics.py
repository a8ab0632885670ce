"""The router's request series on its /metrics (Prometheus): every answer counted by model, HTTP status
and tenant, and each finished request's TTFT, TBT and end-to-end latency as histograms by model and tier.

Label values stay bounded: the model label is a served model (an unknown one is refused with 404 and
counted under model ""), tiers are the configured ones (an unknown one is refused before any record),
and `tenant` is the API key id (never the secret), "" when the router asks for no key.

The counts are plain integers and bucket arrays, turned into Prometheus families only when /metrics is
scraped: a prometheus_client Counter or Histogram takes a lock and walks its buckets in Python on every
observation, a share of the router's CPU per request that a scrape every few seconds need not cost. The
router's event loop is the only writer, so nothing needs a lock.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from opscale.model import RequestOutcome

__all__ = ["RouterMetrics"]

# Bucket bounds, seconds: a TTFT from a cached short prompt to a cold start held in the queue; a TBT
# around the usual 20-100 ms objectives; an end-to-end from one token to a long batch generation.
TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TBT_BUCKETS_S = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.5, 1.0)
E2E_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class _Histogram:
    """One label set's observations: a count per bucket (the last one past every bound) and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus's `le` buckets: each bound with the observations at or below it, then `+Inf`."""
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((floatToGoString(bound), float(running)))
        return out


class RouterMetrics(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        # by label set; the keys are bounded (served models, configured tiers, statuses, key ids)
        self._answers: dict[tuple[str, int, str], int] = {}
        self._latencies: dict[tuple[str, str], tuple[_Histogram, _Histogram, _Histogram]] = {}
        registry.register(self)

    def answered(self, model: str, status: int, tenant: str = "") -> None:
        key = (model, status, tenant)
        self._answers[key] = self._answers.get(key, 0) + 1

    def finished(self, outcome: RequestOutcome) -> None:
        """A request's latencies, from its record (the same figures the aggregator windows)."""
        key = (outcome.model, outcome.tier)
        histograms = self._latencies.get(key)
        if histograms is None:
            histograms = self._latencies[key] = (_Histogram(TTFT_BUCKETS_S), _Histogram(TBT_BUCKETS_S),
                                                 _Histogram(E2E_BUCKETS_S))
        ttft, tbt, e2e = histograms
        if (value := outcome.ttft_s) is not None:
            ttft.observe(value)
        if outcome.status != "ok":
            return
        if (value := outcome.tbt_s) is not None:
            tbt.observe(value)
        if (value := outcome.e2e_s) is not None:
            e2e.observe(value)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("opscale_router_requests", "Answers of the OpenAI API by model, HTTP status "
                                       "and tenant (499: the client went away first)",
                                       labels=["model", "status", "tenant"])
        for (model, status, tenant), n in list(self._answers.items()):
            requests.add_metric([model, str(status), tenant], float(n))
        ttft = HistogramMetricFamily("opscale_router_ttft_seconds", "Time to first token of each request that "
                                     "produced one", labels=["model", "tier"])
        tbt = HistogramMetricFamily("opscale_router_tbt_seconds", "Mean time between output tokens of each "
                                    "completed request", labels=["model", "tier"])
        e2e = HistogramMetricFamily("opscale_router_e2e_seconds", "End-to-end latency of each completed request",
                                    labels=["model", "tier"])
        for (model, tier), histograms in list(self._latencies.items()):
            for family, histogram in zip((ttft, tbt, e2e), histograms, strict=True):
                family.add_metric([model, tier], histogram.cumulative(), histogram.total)
        yield from (requests, ttft, tbt, e2e)
