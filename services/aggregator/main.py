"""The live aggregator: request records and heartbeats from NATS into the aggregator core; its windows
go back on NATS and into Redis. Wiring only: the logic is opscale.services.aggregator."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from opscale.runtime.live.host import CoreHost
from opscale.runtime.live.settings import AggregatorSettings
from opscale.services import subjects
from opscale.services.aggregator import AggregatorCore

from opscale_services.aggregator.window_metrics import WindowCollector
from opscale_services.common import LiveProcess

log = logging.getLogger(__name__)


class DroppedRecordsCollector(Collector):
    """`opscale_aggregator_records_dropped_total{reason}`: records of an unknown model or tier, dropped
    rather than windowed (read from the core at each scrape)."""

    def __init__(self, core: AggregatorCore) -> None:
        self.core = core

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("opscale_aggregator_records_dropped", "Request records dropped, not "
                                     "windowed: unknown model or tier", labels=["reason"])
        for reason, count in sorted(self.core.dropped_unknown.items()):
            family.add_metric([f"unknown_{reason}"], float(count))
        yield family


async def run(settings: AggregatorSettings, stop: asyncio.Event | None = None,
              on_start: Callable[[LiveProcess], None] | None = None) -> None:
    async with LiveProcess("aggregator", settings) as p:
        core = AggregatorCore(settings.core, settings.tier_specs())
        windows = WindowCollector()
        host = CoreHost(core, p.bus, p.store, p.clock, on_action=windows.observe,
                        window_ttl_s=settings.core.window_ttl_s)
        p.registry.register(DroppedRecordsCollector(core))
        p.core = core
        p.registry.register(windows)
        ns = settings.namespace or "default"
        # A restart loses no window: the heartbeats (which models exist) and the records of the longest
        # window are read back from the streams first; records also delivered by the durable consumer
        # below (not yet acknowledged when the last process stopped) count once, by request id.
        # Rates are over the time observed: since the first aggregator of this stack started (kept in
        # Redis), so the restarted one does not divide its windows by its own short uptime.
        first_started_s = await p.store.get_json("aggregator:started_s")
        if not isinstance(first_started_s, int | float):
            first_started_s = p.clock.now_s()
            await p.store.set_json("aggregator:started_s", first_started_s)
        core.observed_since(first_started_s)
        since_s = p.clock.now_s() - max(settings.core.windows_s) - settings.core.publish_interval_s
        beats_seen = await p.bus.replay(subjects.HEARTBEATS_ALL, since_s, host.deliver)
        batches = await p.bus.replay(subjects.RECORDS_ALL, since_s, host.deliver)
        log.info("aggregator: windows rebuilt from %d record batches and %d heartbeats of the last %.0f s",
                 batches, beats_seen, p.clock.now_s() - since_s)
        records = await p.bus.subscribe(subjects.RECORDS_ALL, f"aggregator-records-{ns}", host.deliver,
                                        max_pending=5000, fetch_batch=500)
        p.on_exit(records.stop)
        beats = await p.bus.subscribe(subjects.HEARTBEATS_ALL, f"aggregator-heartbeats-{ns}", host.deliver,
                                      deliver="last_per_subject")
        p.on_exit(beats.stop)
        p.supervisor.every("tick", settings.tick_s, host.tick, timeout_s=max(5.0, settings.tick_s))
        if on_start is not None:
            on_start(p)
        await p.run(stop)
