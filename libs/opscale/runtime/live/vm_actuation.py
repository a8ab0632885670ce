"""The live planner's hands on the cloud: the current plan's VM counts through a VM actuator.

The planner core decides how many VMs each (region, SKU, purchase) should hold (`Plan.vm_counts`, from
a policy that buys VMs); nothing here chooses a count. `VmActuation.converge(plan)` calls the actuator's
`ensure(region, sku, purchase, count)` for every cell of the plan, and logs what changed: VMs started,
VMs released (a local node-agent gets SIGTERM and drains its engines before it exits), and VMs refused,
with the cloud's reason (a quota), once per change rather than at every pass. `poll()` reads the cloud's
events (a VM running, terminating, gone, a spot notice) and logs each. Control is level-triggered: the
service calls `step(plan)` every `poll_s` with its current plan, so a VM that died is replaced and a
refused one asked for again, and calls `converge` at once when it publishes a new plan. Until a plan
names VM counts, the target is the configured first fleet (`initial`, `cloud.initial_vms`): the planner
plans only once a host has reported, so an elastic fleet starts from VMs the configuration names, as the
simulator's starts from the scenario's hosts.

Only the planner that holds the lease acts: `leading()` is asked before every call (the lease may lapse
during a slow pass), and a standby does nothing. Every call runs under `call_timeout_s`; a synchronous
back end (the local processes) runs in a worker thread (`ThreadedActuator`: starting a process forks,
stopping one may wait for it), so the event loop never blocks. Calls are serialised, as the back ends
are not safe to call concurrently.

`build_actuator(settings)` makes the back end the planner's `cloud` settings name.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from opscale.cloud import AsyncVmActuator, CloudEvent, CloudEventKind, EnsureResult, VmActuator
from opscale.model import Plan, Purchase, Vm
from opscale.runtime.clock import Clock
from opscale.runtime.live.settings import CloudSettings

log = logging.getLogger(__name__)

Cell = tuple[str, str, str]  # (region, sku, purchase), as Plan.vm_counts keys it


class ClosableActuator(AsyncVmActuator, Protocol):
    async def close(self) -> None: ...


class ThreadedActuator:
    """A synchronous actuator (`opscale.cloud.VmActuator`) behind the asynchronous contract, each call in
    a worker thread. `close` calls the back end's own `close()` when it has one (the local actuator stops
    its agents: SIGTERM, then SIGKILL after its grace period)."""

    def __init__(self, inner: VmActuator) -> None:
        self.inner = inner

    async def ensure(self, region: str, sku: str, purchase: Purchase, count: int, now_s: float) -> EnsureResult:
        return await asyncio.to_thread(self.inner.ensure, region, sku, purchase, count, now_s)

    async def release(self, vm_id: str, now_s: float) -> None:
        await asyncio.to_thread(self.inner.release, vm_id, now_s)

    async def current(self, now_s: float) -> tuple[Vm, ...]:
        return await asyncio.to_thread(self.inner.current, now_s)

    async def poll_events(self, now_s: float) -> list[CloudEvent]:
        return await asyncio.to_thread(self.inner.poll_events, now_s)

    async def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            await asyncio.to_thread(close)


class VmActuation:
    """See the module docstring."""

    def __init__(self, actuator: ClosableActuator, clock: Clock, leading: Callable[[], bool],
                 call_timeout_s: float = 30.0, initial: Mapping[Cell, int] | None = None) -> None:
        self.actuator = actuator
        self.initial = dict(initial or {})  # the fleet to hold until a plan names VM counts
        self.clock = clock
        self.leading = leading
        self.call_timeout_s = call_timeout_s
        self._lock = asyncio.Lock()
        # per cell: the last problem logged (refusal or failure), so a standing one is logged once
        self._problem: dict[Cell, str] = {}
        # per cell: the count of the last `ensure` that succeeded (no failure, nothing refused)
        self._ensured: dict[Cell, int] = {}
        self.refusals = 0  # ensure calls that left VMs unrequested (quota, capacity)
        self.failures = 0  # calls that raised or timed out

    async def step(self, plan: Plan) -> None:
        """One level-triggered pass: the cloud's events, then every cell of `plan` brought to its count."""
        await self.poll()
        await self.converge(plan)

    async def apply(self, plan: Plan) -> list[EnsureResult]:
        """A newly published plan: `ensure` only the cells whose count differs from the last one ensured
        successfully (or that failed or were refused since); the periodic `step` re-asserts them all."""
        return await self.converge(plan, changed_only=True)

    async def converge(self, plan: Plan, changed_only: bool = False) -> list[EnsureResult]:
        """`ensure` every cell of `plan.vm_counts` (`changed_only`: those not already ensured at that
        count); a plan that names none: the `initial` fleet, or, without one, the fleet's VMs as they are."""
        results: list[EnsureResult] = []
        target = plan.vm_counts or self.initial
        if not target:
            return results
        async with self._lock:
            for (region, sku, purchase), count in sorted(target.items()):
                if not self.leading():
                    return results  # the lease lapsed mid-pass: the new leader acts from here
                cell = (region, sku, str(purchase))
                if changed_only and self._ensured.get(cell) == int(count):
                    continue
                self._ensured.pop(cell, None)  # not ensured until this call says so (it may be cancelled)
                try:
                    result = await asyncio.wait_for(
                        self.actuator.ensure(region, sku, Purchase(purchase), int(count), self.clock.now_s()),
                        self.call_timeout_s)
                except Exception as exc:  # noqa: BLE001 - one cell's failure must not stop the others
                    self.failures += 1
                    self._ensured.pop(cell, None)
                    self._problem_once(cell, f"ensure({count}) failed: {_why(exc)}")
                    continue
                if result.refused:
                    self._ensured.pop(cell, None)
                else:
                    self._ensured[cell] = int(count)
                results.append(result)
                self._report(cell, plan.epoch, result)
        return results

    async def poll(self) -> list[CloudEvent]:
        """The cloud's events since the last poll, each logged."""
        if not self.leading():
            return []
        async with self._lock:
            try:
                events = await asyncio.wait_for(self.actuator.poll_events(self.clock.now_s()), self.call_timeout_s)
            except Exception as exc:  # noqa: BLE001 - logged; the next poll reads the state again
                self.failures += 1
                log.warning("vms: reading the cloud's events failed: %s", _why(exc))
                return []
        for event in events:
            vm = event.vm
            level = logging.WARNING if event.kind is CloudEventKind.PREEMPTION_NOTICE else logging.INFO
            log.log(level, "vms: %s %s (%s/%s/%s)%s", vm.vm_id, event.kind.value, vm.region, vm.sku,
                    vm.purchase.value, f": {event.reason}" if event.reason else "")
        return events

    async def close(self) -> None:
        """Release the back end: the local actuator stops its node-agents, the Kubernetes one its client
        (its nodes stay)."""
        async with self._lock:
            await self.actuator.close()

    def _report(self, cell: Cell, epoch: int, result: EnsureResult) -> None:
        where = "/".join(cell)
        if result.started:
            log.info("vms: %s: %d -> %d for plan epoch %d: started %s", where, result.live_before, result.desired,
                     epoch, ", ".join(result.started))
        if result.released:
            log.info("vms: %s: %d -> %d for plan epoch %d: released %s (draining)", where, result.live_before,
                     result.desired, epoch, ", ".join(result.released))
        if result.reason and not result.refused and not (result.started or result.released):
            log.info("vms: %s for plan epoch %d: %s", where, epoch, result.reason)
        if result.refused:
            self.refusals += 1
            self._problem_once(cell, f"{result.refused} of the {result.desired} VM(s) planned refused: "
                                     f"{result.reason or 'no reason given'}")
        elif self._problem.pop(cell, None) is not None:
            log.info("vms: %s: converging again (%d VMs asked for)", where, result.desired)

    def _problem_once(self, cell: Cell, message: str) -> None:
        if self._problem.get(cell) != message:
            self._problem[cell] = message
            log.warning("vms: %s: %s", "/".join(cell), message)


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer within the call timeout"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def build_actuator(settings: CloudSettings, stack_env: Mapping[str, str]) -> ClosableActuator:
    """The back end `settings.actuator` names (not `none`). `stack_env`: the environment that puts a local
    node-agent in the planner's stack (its NATS, Redis, namespace), laid over the process environment
    (which carries OPSCALE_CONFIG, the settings file, unless `local.config` names another) and under
    `settings.local.env`."""
    if settings.actuator == "local":
        from opscale.runtime.live.cloud_local import LocalProcessActuator

        local = settings.local
        # a "VM" given back (SIGTERM) is going away: its agent drains first
        env: dict[str, Any] = {**os.environ, **stack_env, "OPSCALE_NODE_AGENT_STOP_DRAIN_S": str(local.drain_s),
                               **{k: v.get_secret_value() for k, v in local.env.items()}}
        return ThreadedActuator(LocalProcessActuator(base_env=env, config=local.config,
                                                     grace_s=local.grace_s, name_prefix=local.name_prefix,
                                                     log_dir=local.log_dir))
    if settings.actuator == "k8s":
        from opscale.runtime.live.cloud_k8s import KubernetesActuator  # the Kubernetes client only when used

        return KubernetesActuator(settings.k8s)
    raise ValueError(f"cloud.actuator: {settings.actuator!r} names no back end")
