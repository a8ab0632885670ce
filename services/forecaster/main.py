"""The live forecaster: 1-minute windows from NATS into the forecaster core; forecasts back on NATS and
into Redis. Wiring only: the logic is opscale.services.forecaster."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from opscale.runtime.live.host import CoreHost
from opscale.runtime.live.settings import ForecasterSettings
from opscale.services import subjects
from opscale.services.forecaster import ForecasterCore

from opscale_services.common import LiveProcess

log = logging.getLogger(__name__)


async def run(settings: ForecasterSettings, stop: asyncio.Event | None = None,
              on_start: Callable[[LiveProcess], None] | None = None) -> None:
    async with LiveProcess("forecaster", settings) as p:
        core = ForecasterCore(settings.core)
        host = CoreHost(core, p.bus, p.store, p.clock)
        p.core = core
        ns = settings.namespace or "default"
        # A restart loses no series: the windows of the last rebuild_s are read back from the stream
        # first. The durable consumer then goes on from where the last process acknowledged; a window
        # seen twice is sampled once (the series is spaced by end time).
        since_s = p.clock.now_s() - settings.rebuild_s
        replayed = await p.bus.replay(subjects.WINDOWS_ALL, since_s, host.deliver)
        log.info("forecaster: series rebuilt from %d windows of the last %.0f s", replayed, settings.rebuild_s)
        windows = await p.bus.subscribe(subjects.WINDOWS_ALL, f"forecaster-windows-{ns}", host.deliver,
                                        max_pending=5000, fetch_batch=500)
        p.on_exit(windows.stop)
        p.supervisor.every("tick", settings.tick_s, host.tick, timeout_s=max(5.0, settings.tick_s))
        if on_start is not None:
            on_start(p)
        await p.run(stop)
