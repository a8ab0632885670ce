"""Driving the simulated cloud from a discrete-event loop (opscale.runtime.sim.loop.EventLoop or any
object with `now_s` and `at(time_s, fn, *args)`), without asyncio.

The driver asks the cloud when it next changes (`next_event_s`), schedules one wake-up for then, and on
waking hands every event to `on_event` in time order. Requests and releases schedule a wake-up at the
current time, so their own events (REQUESTED, TERMINATING) flow through the loop in order too. Wiring
it into a simulation is:

    cloud = SimulatedCloud(default_region_catalog(), SimCloudConfig(seed=seed))
    driver = CloudDriver(loop, SimulatedActuator(cloud), on_event=world.on_cloud_event)
    driver.ensure("us-east", "H100-80GB", Purchase.SPOT, 4)   # at loop.now_s
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from opscale.cloud.actuator import EnsureResult, SimulatedActuator
from opscale.cloud.billing import CloudAccount
from opscale.cloud.events import CloudEvent
from opscale.model import Purchase, Vm


class Scheduler(Protocol):
    now_s: float

    def at(self, time_s: float, fn: Callable[..., Any], *args: Any) -> None: ...


class CloudDriver:
    def __init__(self, loop: Scheduler, actuator: SimulatedActuator,
                 on_event: Callable[[CloudEvent], None]) -> None:
        self.loop = loop
        self.actuator = actuator
        self.on_event = on_event
        self._wake_s: float | None = None  # earliest wake-up already in the loop's queue

    def ensure(self, region: str, sku: str, purchase: Purchase, count: int) -> EnsureResult:
        result = self.actuator.ensure(region, sku, purchase, count, self.loop.now_s)
        self._arm(self.loop.now_s)
        return result

    def release(self, vm_id: str) -> None:
        self.actuator.release(vm_id, self.loop.now_s)
        self._arm(self.loop.now_s)

    def current(self) -> tuple[Vm, ...]:
        return self.actuator.current(self.loop.now_s)

    def start(self) -> None:
        """Schedule the first wake-up for what the cloud already has due (VMs requested before the driver
        existed, such as a fleet adopted as running when a simulation starts)."""
        self._arm()

    def account(self) -> CloudAccount:
        return self.actuator.cloud.account(self.loop.now_s)

    def _arm(self, at_s: float | None = None) -> None:
        due = at_s if at_s is not None else self.actuator.cloud.next_event_s()
        if due is None or (self._wake_s is not None and self._wake_s <= due):
            return
        self._wake_s = due
        self.loop.at(due, self._wake, due)

    def _wake(self, scheduled_s: float) -> None:
        if self._wake_s == scheduled_s:
            self._wake_s = None
        for event in self.actuator.poll_events(self.loop.now_s):
            self.on_event(event)
        self._arm()
