"""The aggregator's latest windows as Prometheus gauges, for dashboards (deploy/grafana/opscale.json).

Each WindowStats and PoolUtilisation the aggregator publishes is kept, the latest per series, and shown
at each scrape:

- `opscale_window_slo_attainment{model,region,tier,window}`: share of the window's completed requests
  that met their tier's TTFT and TBT SLOs (absent while none completed);
- `opscale_window_arrival_rps{model,region,tier,window}`: the demand, requests per second;
- `opscale_window_ttft_p99_seconds`, `opscale_window_tbt_p99_seconds` (same labels);
- `opscale_pool_instances{model,region,role,window}`: serving instances, the window's mean (the replicas
  that meet that demand); `opscale_pool_gpu_util{model,region,role,window}`: their mean GPU utilisation.

`window` is the window's length in seconds ("10", "60", "300" by default): the aggregator publishes every
width it keeps, and without the label each series would show whichever width came last.

A series whose latest window ended `stale_after_s` before the newest one seen is dropped: a pool that
went away stops being drawn instead of holding its last value.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from opscale.services.actions import Action, Publish
from opscale.services.events import PoolUtilisation, WindowStats

_WINDOW_GAUGES = (
    ("opscale_window_slo_attainment", "Share of a window's completed requests within their tier's SLOs",
     "slo_attainment"),
    ("opscale_window_arrival_rps", "Requests per second that arrived in the window", "arrival_rps"),
    ("opscale_window_ttft_p99_seconds", "99th percentile time to first token over the window", "ttft_p99_s"),
    ("opscale_window_tbt_p99_seconds", "99th percentile time between tokens over the window", "tbt_p99_s"),
)
_POOL_GAUGES = (
    ("opscale_pool_instances", "Serving instances of a pool, the window's mean", "instances"),
    ("opscale_pool_gpu_util", "Mean GPU utilisation of a pool's GPUs over the window", "gpu_util"),
)


class WindowCollector(Collector):
    """Feed it every action the aggregator performs (`observe`, a CoreHost `on_action`)."""

    def __init__(self, stale_after_s: float = 300.0) -> None:
        self.stale_after_s = stale_after_s
        self.windows: dict[tuple[str, str, str, str], WindowStats] = {}
        self.pools: dict[tuple[str, str, str, str], PoolUtilisation] = {}
        self._newest_s = float("-inf")

    async def observe(self, action: Action) -> bool:
        """Keep what a Publish carries; never consumes the action (returns False)."""
        if isinstance(action, Publish):
            event = action.event
            if isinstance(event, WindowStats):
                self.windows[(event.model, event.region, event.tier, _width(event.window_s))] = event
                self._newest_s = max(self._newest_s, event.end_s)
            elif isinstance(event, PoolUtilisation):
                self.pools[(event.model, event.region, event.role.value, _width(event.window_s))] = event
                self._newest_s = max(self._newest_s, event.end_s)
        return False

    def collect(self) -> Iterator[GaugeMetricFamily]:
        oldest_kept = self._newest_s - self.stale_after_s
        for table in (self.windows, self.pools):
            for key in [k for k, v in table.items() if v.end_s < oldest_kept]:
                del table[key]
        for name, documentation, attribute in _WINDOW_GAUGES:
            family = GaugeMetricFamily(name, documentation, labels=["model", "region", "tier", "window"])
            for key, stats in sorted(self.windows.items()):
                value = getattr(stats, attribute)
                if value is not None:
                    family.add_metric(list(key), float(value))
            yield family
        for name, documentation, attribute in _POOL_GAUGES:
            family = GaugeMetricFamily(name, documentation, labels=["model", "region", "role", "window"])
            for key, pool in sorted(self.pools.items()):
                family.add_metric(list(key), float(getattr(pool, attribute)))
            yield family


def _width(window_s: float) -> str:
    """A window's length as its label value: whole seconds without a decimal point ("60", "2.5")."""
    return f"{window_s:g}"
