"""Request records leave the router in batches, off the hot path.

`add` only appends to a bounded buffer (no await, so a burst of finishing requests never waits on
NATS); a supervised loop publishes everything buffered every `flush_s`, in batches of at most
`batch_max` per origin region, and the router's shutdown flushes once more before the bus closes. A
failed publish keeps the records for the next attempt, so an accepted record is never lost to a NATS
hiccup; only a buffer full beyond `max_buffered` drops, and those drops are counted.
"""

from __future__ import annotations

import logging
from collections import deque

from prometheus_client import CollectorRegistry, Counter

from opscale.model import RequestOutcome
from opscale.runtime.live.bus import BusError, NatsBus
from opscale.services import subjects

log = logging.getLogger(__name__)


class RecordBatcher:
    def __init__(self, bus: NatsBus, registry: CollectorRegistry, *, batch_max: int = 500,
                 max_buffered: int = 200_000) -> None:
        self.bus = bus
        self.batch_max = batch_max
        self._buffer: deque[RequestOutcome] = deque()
        self._max_buffered = max_buffered
        self._published = Counter("opscale_router_records_published", "Request records published",
                                  registry=registry)
        self._dropped = Counter("opscale_router_records_dropped", "Request records dropped: buffer full",
                                registry=registry)

    def add(self, outcome: RequestOutcome) -> None:
        if len(self._buffer) >= self._max_buffered:
            self._dropped.inc()
            return
        self._buffer.append(outcome)

    def pending(self) -> int:
        return len(self._buffer)

    async def flush(self) -> None:
        while self._buffer:
            batch = [self._buffer.popleft() for _ in range(min(self.batch_max, len(self._buffer)))]
            by_region: dict[str, list[RequestOutcome]] = {}
            for outcome in batch:
                by_region.setdefault(outcome.region, []).append(outcome)
            for region, records in by_region.items():
                try:
                    await self.bus.publish(subjects.records(region), tuple(records),
                                           msg_id=f"records-{records[0].request_id}-{len(records)}")
                except BusError as exc:
                    log.warning("publishing %d records failed (%s); kept for the next flush", len(records), exc)
                    self._buffer.extendleft(reversed(records))
                    return
                self._published.inc(len(records))
