"""The VM actuator contract, and its simulated back end.

An actuator converges a pool, one (region, SKU, purchase), towards a VM count: `ensure` is
level-triggered and idempotent (calling it again with the same count changes nothing), `release`
gives back one chosen VM (the planner drains an instance first, then releases its VM), `current` lists
the VMs as they are now, and `poll_events` returns what happened since the last poll. Three back ends
implement it:

- `SimulatedActuator` (here): the simulated cloud, synchronous and pure;
- `opscale.runtime.live.cloud_local.LocalProcessActuator`: a "VM" is a node-agent process on this host;
- `opscale.runtime.live.cloud_k8s.KubernetesActuator`: Karpenter NodePools or Cluster API
  MachineDeployments through the Kubernetes API (asynchronous: `AsyncVmActuator`).

`AsyncAdapter` lets a live service use any synchronous back end through the asynchronous contract.
A VM under a preemption notice no longer counts towards the pool (`Vm.live`), so `ensure` replaces it
while it drains rather than after it is gone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from opscale.cloud.events import CloudEvent
from opscale.cloud.simulated import SimulatedCloud
from opscale.model import Purchase, Vm, VmState


@dataclass(frozen=True, slots=True)
class EnsureResult:
    """What one `ensure` call did to its pool."""

    region: str
    sku: str
    purchase: Purchase
    desired: int
    live_before: int
    started: tuple[str, ...] = ()
    released: tuple[str, ...] = ()
    refused: int = 0  # VMs that could not be requested (quota, capacity); `reason` says why
    reason: str = ""

    @property
    def converging(self) -> bool:
        """Every VM needed has been asked for (they may still be booting or shutting down)."""
        return self.refused == 0


class VmCount(BaseModel):
    """VMs to hold in one pool, as a config names them (a policy's fixed VMs, a live fleet's first VMs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    region: str = Field(min_length=1, description="Region the VMs are in")
    sku: str = Field(min_length=1, description="GPU SKU of the VMs (opscale/data/skus.yaml)")
    purchase: Purchase = Field(Purchase.ON_DEMAND, description="on_demand or spot")
    count: int = Field(ge=0, description="VMs to hold (0: give every one back)")


def vm_count_table(counts: Iterable[VmCount], field: str) -> dict[tuple[str, str, str], int]:
    """`Plan.vm_counts`' form of a list of `VmCount`s; a ValueError names `field` when a pool is given twice."""
    table: dict[tuple[str, str, str], int] = {}
    for i, c in enumerate(counts):
        cell = (c.region, c.sku, c.purchase.value)
        if cell in table:
            raise ValueError(f"{field}.{i}: {'/'.join(cell)} is given twice")
        table[cell] = c.count
    return table


@runtime_checkable
class VmActuator(Protocol):
    def ensure(self, region: str, sku: str, purchase: Purchase, count: int, now_s: float) -> EnsureResult: ...

    def release(self, vm_id: str, now_s: float) -> None: ...

    def current(self, now_s: float) -> tuple[Vm, ...]: ...

    def poll_events(self, now_s: float) -> list[CloudEvent]: ...


@runtime_checkable
class AsyncVmActuator(Protocol):
    async def ensure(self, region: str, sku: str, purchase: Purchase, count: int,
                     now_s: float) -> EnsureResult: ...

    async def release(self, vm_id: str, now_s: float) -> None: ...

    async def current(self, now_s: float) -> tuple[Vm, ...]: ...

    async def poll_events(self, now_s: float) -> list[CloudEvent]: ...


def pool_vms(vms: Iterable[Vm], region: str, sku: str, purchase: Purchase) -> list[Vm]:
    return [v for v in vms if v.region == region and v.sku == sku and v.purchase is purchase]


def choose_release(vms: Iterable[Vm], count: int) -> list[Vm]:
    """Which `count` live VMs to give back when a pool shrinks without the planner naming them.

    VMs still provisioning go first (they serve nothing yet), newest first; then running VMs, newest
    first (the oldest hold the warmest caches); back ends list VMs in creation order, so among VMs
    requested at the same time the later one goes. VMs already leaving are not candidates.

    >>> from opscale.model import Purchase
    >>> vm = lambda i, s: Vm(f"v{i}", "r", "s", 8, Purchase.SPOT, s, float(i))
    >>> [v.vm_id for v in choose_release([vm(1, VmState.RUNNING), vm(2, VmState.RUNNING),
    ...                                   vm(3, VmState.PROVISIONING)], 2)]
    ['v3', 'v2']
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    live = [v for v in vms if v.live][::-1]  # ties (same request time): the later listed goes first
    live.sort(key=lambda v: (v.state is not VmState.PROVISIONING, -v.requested_s))
    return live[:count]


def check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count: expected a whole number of VMs >= 0, got {count!r}")


class SimulatedActuator:
    """The actuator contract over a `SimulatedCloud`."""

    def __init__(self, cloud: SimulatedCloud) -> None:
        self.cloud = cloud

    def ensure(self, region: str, sku: str, purchase: Purchase, count: int, now_s: float) -> EnsureResult:
        check_count(count)
        self.cloud.catch_up(now_s)
        live = [v for v in pool_vms(self.cloud.vms(), region, sku, purchase) if v.live]
        started: list[str] = []
        refused, reason = 0, ""
        for i in range(count - len(live)):
            result = self.cloud.request(region, sku, purchase, now_s)
            if result.vm is None:
                refused, reason = count - len(live) - i, result.reason
                break
            started.append(result.vm.vm_id)
        released = [v.vm_id for v in choose_release(live, len(live) - count)] if len(live) > count else []
        for vm_id in released:
            self.cloud.release(vm_id, now_s)
        return EnsureResult(region, sku, purchase, count, len(live), tuple(started), tuple(released), refused, reason)

    def release(self, vm_id: str, now_s: float) -> None:
        self.cloud.release(vm_id, now_s)

    def current(self, now_s: float) -> tuple[Vm, ...]:
        self.cloud.catch_up(now_s)  # due transitions apply; their events wait for poll_events
        return self.cloud.vms()

    def poll_events(self, now_s: float) -> list[CloudEvent]:
        return self.cloud.advance(now_s)


class AsyncAdapter:
    """A synchronous actuator behind the asynchronous contract (its calls do not block)."""

    def __init__(self, inner: VmActuator) -> None:
        self.inner = inner

    async def ensure(self, region: str, sku: str, purchase: Purchase, count: int, now_s: float) -> EnsureResult:
        return self.inner.ensure(region, sku, purchase, count, now_s)

    async def release(self, vm_id: str, now_s: float) -> None:
        self.inner.release(vm_id, now_s)

    async def current(self, now_s: float) -> tuple[Vm, ...]:
        return self.inner.current(now_s)

    async def poll_events(self, now_s: float) -> list[CloudEvent]:
        return self.inner.poll_events(now_s)
