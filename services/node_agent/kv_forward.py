"""The node-agent's KV-event forwarder: its engines' KV events, batched per instance, onto the bus.

Each tick of the agent takes what every engine stored, removed or cleared since the last one (the
simulated engines' EngineConfig.kv_events; vLLM's own publisher for the openai backend) and publishes
it as KvEventBatch on `opscale.kvevents.<region>.<agent>`, one batch per instance with events, at most
`batch_max` events a batch (a burst goes out as several batches, in order). Each instance's batches
are numbered (`seq`) up from `seq_base`: a router applies a batch only if its seq is above the last
it applied for that instance, so a redelivered batch is dropped there. The agent starts the numbers
at its start time in microseconds, so an agent that restarts (its instances keep their ids) numbers
above everything it sent before, and the router does not take its new batches for stale ones. Batching per tick keeps the message rate at one per instance per tick however
fast an engine runs, and bounds how stale the router's index is to one tick plus the bus.

A publish that fails (the bus is down) loses that batch: the router's index then misses those events
until later ones or its bound correct it, and its own dispatch tracking still routes. Pending events
are never held past one tick, so a bus outage cannot grow the agent's memory.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from opscale.model.kv_events import KvBlockEvent, KvEventBatch
from opscale.services import subjects

log = logging.getLogger(__name__)

# One instance's events since the last tick: (instance_id, model, events in order).
KvEventsOf = tuple[str, str, Sequence[KvBlockEvent]]
Publish = Callable[[str, KvEventBatch], Awaitable[object]]


class KvForwarder:
    """See the module docstring."""

    def __init__(self, region: str, agent_id: str, publish: Publish, batch_max: int = 512,
                 seq_base: int = 0) -> None:
        if batch_max < 1:
            raise ValueError(f"kv_events_batch_max must be >= 1, got {batch_max}")
        self.subject = subjects.kv_events(region, agent_id)
        self.publish = publish
        self.batch_max = batch_max
        self.seq_base = seq_base
        self._seq: dict[str, int] = {}
        self.published_batches = 0
        self.published_events = 0
        self.failed_batches = 0

    async def forward(self, taken: Sequence[KvEventsOf], now_s: float) -> None:
        """Publish each instance's events (see the module docstring)."""
        for instance_id, model, events in taken:
            for start in range(0, len(events), self.batch_max):
                chunk = tuple(events[start:start + self.batch_max])
                seq = self._seq.get(instance_id, self.seq_base) + 1
                self._seq[instance_id] = seq
                batch = KvEventBatch(instance_id, model, now_s, seq, chunk)
                try:
                    await self.publish(self.subject, batch)
                except Exception as exc:  # the bus is down: this batch is lost, the tick goes on
                    self.failed_batches += 1
                    log.warning("KV events of %s (batch %d, %d events) not published: %s", instance_id, seq,
                                len(chunk), exc)
                    continue
                self.published_batches += 1
                self.published_events += len(chunk)
