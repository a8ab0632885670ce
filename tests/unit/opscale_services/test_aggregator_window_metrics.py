"""The aggregator's latest windows as Prometheus gauges: the latest value per series, scraped through a
real registry; a series with no completed request shows no attainment; a pool gone stale is dropped."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from opscale.model.instance import Role
from opscale.services.actions import Log, Publish
from opscale.services.events import PoolUtilisation, WindowStats

from opscale_services.aggregator.window_metrics import WindowCollector

pytestmark = pytest.mark.unit


def window(end_s: float, rps: float, attainment: float | None, tier: str = "interactive",
           width_s: float = 60.0) -> WindowStats:
    return WindowStats("m", "eu", tier, width_s, end_s, int(rps * 60), int(rps * 60), rps, 100.0, 10.0,
                       0.1, 0.4, 0.02, 0.05, 1.0, 3.0, attainment)


def pool(end_s: float, instances: float, region: str = "eu") -> PoolUtilisation:
    return PoolUtilisation("m", region, Role.UNIFIED, 60.0, end_s, instances, 0.5, 0.2, 900.0, 300.0, 100.0)


def scrape(collector: WindowCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def feed(collector: WindowCollector, *events: object) -> None:
    for event in events:
        consumed = asyncio.run(collector.observe(Publish("opscale.windows.eu", event)))
        assert consumed is False  # the host still publishes it


def test_the_latest_window_and_pool_of_each_series_are_gauges() -> None:
    collector = WindowCollector()
    feed(collector, window(60.0, 2.0, 0.9), window(120.0, 3.0, 0.95), window(120.0, 0.5, None, tier="batch"),
         pool(60.0, 2.0), pool(120.0, 3.0))
    assert asyncio.run(collector.observe(Log("aggregator", "x"))) is False
    got = scrape(collector)
    labels = (("model", "m"), ("region", "eu"), ("tier", "interactive"), ("window", "60"))
    assert got[("opscale_window_arrival_rps", labels)] == 3.0
    assert got[("opscale_window_slo_attainment", labels)] == 0.95
    assert got[("opscale_window_ttft_p99_seconds", labels)] == 0.4
    assert got[("opscale_window_tbt_p99_seconds", labels)] == 0.05
    batch = (("model", "m"), ("region", "eu"), ("tier", "batch"), ("window", "60"))
    assert ("opscale_window_slo_attainment", batch) not in got  # none completed: no attainment to show
    assert got[("opscale_window_arrival_rps", batch)] == 0.5
    pool_labels = (("model", "m"), ("region", "eu"), ("role", "unified"), ("window", "60"))
    assert got[("opscale_pool_instances", pool_labels)] == 3.0
    assert got[("opscale_pool_gpu_util", pool_labels)] == 0.5


def test_a_series_that_stopped_reporting_is_dropped() -> None:
    collector = WindowCollector(stale_after_s=300.0)
    feed(collector, pool(60.0, 2.0, region="us"), pool(600.0, 4.0))
    got = scrape(collector)
    assert [k for k in got if k[0] == "opscale_pool_instances"] == [
        ("opscale_pool_instances", (("model", "m"), ("region", "eu"), ("role", "unified"), ("window", "60")))]


def test_each_window_width_is_a_series_of_its_own() -> None:
    collector = WindowCollector()
    # the aggregator publishes its 10 s and 300 s windows of one pool at each interval, in either order
    feed(collector, window(120.0, 8.0, 0.5, width_s=10.0), window(120.0, 2.0, 0.99, width_s=300.0))
    got = scrape(collector)
    series = {labels: value for (name, labels), value in got.items() if name == "opscale_window_arrival_rps"}
    assert series == {(("model", "m"), ("region", "eu"), ("tier", "interactive"), ("window", "10")): 8.0,
                      (("model", "m"), ("region", "eu"), ("tier", "interactive"), ("window", "300")): 2.0}
