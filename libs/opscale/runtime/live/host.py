"""Hosts one sans-I/O service core in the live runtime: the live twin of the simulation's SimWorld.

Bus deliveries and periodic ticks go into the core with the wall-clock time; the actions that come back
are performed here (publish on NATS, write Redis, log) or handed to the service's own handler (a command
to an agent, an engine to start, a request to forward). The core itself never awaits anything, so
handling an event is atomic with respect to other events on the same event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from opscale.model import Plan, RequestOutcome
from opscale.runtime.clock import Clock
from opscale.runtime.live.bus import Delivery, NatsBus
from opscale.runtime.live.store import RedisStore
from opscale.services.actions import Action, Log, Publish, Store
from opscale.services.core import ServiceCore
from opscale.services.events import PlanPublished, PoolUtilisation, RequestFinished, WindowStats

log = logging.getLogger(__name__)

ActionHandler = Callable[[Action], Awaitable[bool]]


class CoreHost:
    def __init__(self, core: ServiceCore, bus: NatsBus, store: RedisStore | None, clock: Clock, *,
                 on_action: ActionHandler | None = None, window_ttl_s: float = 900.0) -> None:
        self.core = core
        self.bus = bus
        self.store = store
        self.clock = clock
        self.on_action = on_action
        self.window_ttl_s = window_ttl_s
        self.events_handled = 0

    async def deliver(self, delivery: Delivery) -> None:
        """Bus handler: a batch of request records becomes one RequestFinished per record."""
        event = delivery.event
        now = self.clock.now_s()
        if isinstance(event, tuple | list):
            actions = [a for outcome in event if isinstance(outcome, RequestOutcome)
                       for a in self.core.handle(RequestFinished(outcome), now)]
        else:
            actions = self.core.handle(event, now)
        self.events_handled += 1
        await self.perform(actions)

    async def handle(self, event: Any) -> None:
        await self.perform(self.core.handle(event, self.clock.now_s()))

    async def tick(self) -> None:
        await self.perform(self.core.tick(self.clock.now_s()))

    async def perform(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if self.on_action is not None and await self.on_action(action):
                continue
            match action:
                case Publish(subject=subject, event=event):
                    await self.bus.publish(subject, event, msg_id=_msg_id(event))
                case Store(key=key, value=value):
                    await self._store(key, value)
                case Log(service=service, message=message, fields=fields):
                    log.info("%s: %s%s", service, message, f" {fields}" if fields else "")
                case _:
                    log.warning("%s: no handler for action %s", self.core.name, type(action).__name__)

    async def _store(self, key: str, value: Any) -> None:
        if self.store is None:
            return
        if isinstance(value, Plan):
            saved = await self.store.save_plan(value)
            if not saved.saved:
                log.warning("plan epoch %d not stored: the store holds epoch %s", value.epoch, saved.stored_epoch)
        elif isinstance(value, WindowStats):
            await self.store.put_window(key, value, self.window_ttl_s)
        elif isinstance(value, PoolUtilisation):
            await self.store.put_pool_utilisation(key, value, self.window_ttl_s)
        else:
            await self.store.set_json(key, value, ttl_s=self.window_ttl_s if key.startswith(("window:", "pool:",
                                                                                                 "forecast:")) else None)


def _msg_id(event: Any) -> str | None:
    """JetStream de-duplication ids for events whose identity is known: a plan is its epoch."""
    if isinstance(event, PlanPublished):
        return f"plan-{event.plan.epoch}"
    return None
