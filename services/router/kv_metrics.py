"""The router's prefix index on its /metrics: what it applied and what it refused, read at each scrape
from the core (opscale.routing.prefix_index.KvIndexStats), so nothing is counted twice."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from opscale.services.router import RouterCore


class KvIndexCollector(Collector):
    """`opscale_router_kv_index_total{outcome}`: the index's counts (batches, stored, removed, routed,
    malformed, unknown_instance, stale, out_of_order, overflow, evicted, other_medium)."""

    def __init__(self, core: RouterCore) -> None:
        self.core = core

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self.core.kv_index_stats()
        if stats is None:
            return
        family = CounterMetricFamily("opscale_router_kv_index", "KV events and dispatches the prefix index "
                                     "applied, and what it dropped, by outcome", labels=["outcome"])
        for f in dataclasses.fields(stats):
            family.add_metric([f.name], float(getattr(stats, f.name)))
        yield family
