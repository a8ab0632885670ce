"""A simulated cloud: VM lifecycle, quotas, seeded provisioning delays and spot preemption, billing.

Pure and clock-free: the caller passes `now_s` to every call, and the cloud says when it next needs
attention (`next_event_s`). A discrete-event shell drives it by scheduling `advance(t)` at that time (see
`opscale.cloud.driver.CloudDriver`); a test drives it by calling `advance` directly. Calls must come
with non-decreasing times. Every call first applies the transitions due by its `now_s`, so quota and
state are never stale, and the events they produce wait in order for the next `advance`.

Lifecycle: request -> PROVISIONING -> (provisioning delay, jittered) -> RUNNING; release -> TERMINATING
-> (the region's shutdown time) -> TERMINATED. A running spot VM is preempted at the region's Poisson
rate: a PREEMPTION_NOTICE event arrives `spot_notice_s` before it is TERMINATED (`preempted` set).

Determinism: each VM draws its delay and preemption time from its own generator seeded by (seed, vm_id),
so one VM's draws do not depend on how many others were requested before it in the same region.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from dataclasses import dataclass
from enum import IntEnum

from opscale.cloud.billing import BillingPolicy, CloudAccount, account
from opscale.cloud.events import CloudEvent, CloudEventKind
from opscale.cloud.regions import RegionCatalog, default_region_catalog
from opscale.model import Purchase, Vm, VmState


@dataclass(frozen=True, slots=True)
class SimCloudConfig:
    seed: int = 0
    provision_jitter: float = 0.25  # a VM's delay is uniform in typical × [1 - jitter, 1 + jitter]
    preemption_rate_scale: float = 1.0  # multiplies every region's spot preemption rate (0: no preemption)
    billing: BillingPolicy = BillingPolicy()

    def __post_init__(self) -> None:
        if not 0 <= self.provision_jitter < 1:
            raise ValueError(f"provision_jitter must be in [0, 1), got {self.provision_jitter!r}")
        if self.preemption_rate_scale < 0:
            raise ValueError(f"preemption_rate_scale must be >= 0, got {self.preemption_rate_scale!r}")


@dataclass(frozen=True, slots=True)
class RequestResult:
    """The outcome of a VM request: the new VM, or None and the reason it was refused."""

    vm: Vm | None
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.vm is not None


class _Due(IntEnum):
    # Order among transitions due at the same instant: boot before notice before termination.
    RUNNING = 0
    NOTICE = 1
    PREEMPTED = 2
    SHUTDOWN = 3


class SimulatedCloud:
    """VMs in the regions of a `RegionCatalog`. See the module docstring for the contract."""

    def __init__(self, regions: RegionCatalog | None = None, config: SimCloudConfig | None = None,
                 start_s: float = 0.0) -> None:
        self.regions = regions if regions is not None else default_region_catalog()
        self.config = config if config is not None else SimCloudConfig()
        self._now_s = start_s
        self._vms: dict[str, Vm] = {}
        self._price: dict[str, float] = {}
        self._preempt_after_s: dict[str, float] = {}  # spot: seconds of running before the notice
        self._timers: list[tuple[float, int, int, str]] = []  # (at_s, kind, seq, vm_id)
        self._seq = 0
        self._pending: list[CloudEvent] = []
        self._count = 0

    @property
    def now_s(self) -> float:
        return self._now_s

    # -- requests -----------------------------------------------------------------------------------

    def request(self, region: str, sku: str, purchase: Purchase, now_s: float, booted: bool = False) -> RequestResult:
        """Ask for one VM of `sku` in `region`. Refused (with the reason) beyond quota or for a SKU or
        region the catalogue does not offer; nothing changes then. `booted`: a VM already running when the
        simulation starts (the fleet in place), RUNNING at `now_s` with no provisioning delay."""
        self._catch_up(now_s)
        spec = self.regions.get(region)
        if spec is None:
            return RequestResult(None, f"unknown region {region!r}; known regions: {', '.join(self.regions.names)}")
        offer = spec.offer(sku)
        if offer is None:
            offered = ", ".join(o.sku for o in spec.offers)
            return RequestResult(None, f"region {spec.name!r} does not offer SKU {sku!r} (it offers {offered})")
        gpus = self.regions.skus.sku(offer.sku).gpus_per_vm
        held = self.gpus_held(spec.name, offer.sku)
        if held + gpus > offer.gpu_quota:
            return RequestResult(None, f"quota: region {spec.name!r} allows {offer.gpu_quota} GPUs of {offer.sku}, "
                                       f"{held} are held (provisioning, running or shutting down) and a VM needs {gpus}")
        self._count += 1
        kind = "spot" if purchase is Purchase.SPOT else "od"
        vm_id = f"vm-{self._count}-{spec.name}-{offer.sku.lower()}-{kind}"
        rng = random.Random(f"{self.config.seed}:{vm_id}")
        jitter = self.config.provision_jitter
        delay_s = 0.0 if booted else offer.provision_s(purchase) * rng.uniform(1 - jitter, 1 + jitter)
        rate_per_s = spec.spot_preemptions_per_h * self.config.preemption_rate_scale / 3600.0
        if purchase is Purchase.SPOT and rate_per_s > 0:
            self._preempt_after_s[vm_id] = rng.expovariate(rate_per_s)
        vm = Vm(vm_id, spec.name, offer.sku, gpus, purchase, VmState.PROVISIONING, float(now_s))
        self._vms[vm_id] = vm
        self._price[vm_id] = self.regions.price(spec.name, offer.sku, purchase)
        self._schedule(now_s + delay_s, _Due.RUNNING, vm_id)
        self._pending.append(CloudEvent(CloudEventKind.REQUESTED, vm, now_s))
        return RequestResult(vm)

    def release(self, vm_id: str, now_s: float) -> Vm:
        """Give a VM back: it goes TERMINATING now and TERMINATED after the region's shutdown time.
        Releasing a VM already on its way out changes nothing (idempotent)."""
        self._catch_up(now_s)
        vm = self.vm(vm_id)
        if vm.state in (VmState.TERMINATING, VmState.TERMINATED):
            return vm
        vm = self._set(vm_id, state=VmState.TERMINATING, released_s=now_s)
        self._schedule(now_s + self.regions.region(vm.region).shutdown_s, _Due.SHUTDOWN, vm_id)
        self._pending.append(CloudEvent(CloudEventKind.TERMINATING, vm, now_s, "released"))
        return vm

    def preempt(self, vm_id: str, now_s: float, notice_s: float | None = None) -> Vm:
        """Reclaim a running spot VM now (fault injection): its notice arrives at `now_s` and it is gone
        `notice_s` later (default: its region's notice), as a drawn preemption would be."""
        self._catch_up(now_s)
        vm = self.vm(vm_id)
        if vm.purchase is not Purchase.SPOT or vm.state is not VmState.RUNNING or vm.notice_s is not None:
            raise ValueError(f"VM {vm_id!r} is not a running spot VM without notice ({vm.purchase}, {vm.state})")
        wait_s = self.regions.region(vm.region).spot_notice_s if notice_s is None else notice_s
        self._notify(now_s, vm_id, now_s + wait_s)
        return self._vms[vm_id]

    # -- time ---------------------------------------------------------------------------------------

    def advance(self, now_s: float) -> list[CloudEvent]:
        """Apply every transition due by `now_s`; return all events since the last call, in time order."""
        self._catch_up(now_s)
        events, self._pending = self._pending, []
        return events

    def catch_up(self, now_s: float) -> None:
        """Apply every transition due by `now_s`, keeping their events for the next `advance`."""
        self._catch_up(now_s)

    def next_event_s(self) -> float | None:
        """When the next transition is due (None: nothing will change until the next request or release)."""
        while self._timers and not self._valid(*self._timers[0]):
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    # -- views --------------------------------------------------------------------------------------

    def price(self, vm_id: str) -> float:
        """USD per GPU-hour the VM is billed at (`RegionCatalog.price` of its region, SKU and purchase)."""
        return self._price[vm_id]

    def vm(self, vm_id: str) -> Vm:
        found = self._vms.get(vm_id)
        if found is None:
            raise KeyError(f"unknown VM {vm_id!r}")
        return found

    def vms(self, include_terminated: bool = False) -> tuple[Vm, ...]:
        return tuple(v for v in self._vms.values() if include_terminated or v.state is not VmState.TERMINATED)

    def gpus_held(self, region: str, sku: str) -> int:
        """GPUs counting against the quota: every VM not yet TERMINATED."""
        return sum(v.gpus for v in self._vms.values()
                   if v.region == region and v.sku == sku and v.state is not VmState.TERMINATED)

    def quota_left(self, region: str, sku: str) -> int:
        spec = self.regions.get(region)
        return 0 if spec is None else max(0, spec.gpu_quota(sku) - self.gpus_held(spec.name, sku))

    def account(self, now_s: float | None = None) -> CloudAccount:
        """GPU-hours, cost and preemptions up to `now_s` (default: the latest time seen). Transitions due by
        then are applied first (their events wait for `advance`)."""
        if now_s is not None:
            self._catch_up(now_s)
        at_s = self._now_s
        return account(((v, self._price[v.vm_id]) for v in self._vms.values()), at_s, self.config.billing)

    # -- internals ----------------------------------------------------------------------------------

    def _schedule(self, at_s: float, kind: _Due, vm_id: str) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (at_s, int(kind), self._seq, vm_id))

    def _set(self, vm_id: str, **changes: object) -> Vm:
        vm = dataclasses.replace(self._vms[vm_id], **changes)  # type: ignore[arg-type]
        self._vms[vm_id] = vm
        return vm

    def _valid(self, at_s: float, kind: int, seq: int, vm_id: str) -> bool:
        """A timer still applies: the VM is in the state the transition starts from."""
        vm = self._vms[vm_id]
        if kind == _Due.RUNNING:
            return vm.state is VmState.PROVISIONING
        if kind == _Due.NOTICE:
            return vm.state is VmState.RUNNING and vm.notice_s is None  # one notice (a fault may come first)
        if kind == _Due.PREEMPTED:
            return vm.state is VmState.RUNNING
        return vm.state is VmState.TERMINATING

    def _notify(self, at_s: float, vm_id: str, deadline_s: float) -> None:
        vm = self._set(vm_id, notice_s=at_s, deadline_s=deadline_s)
        self._pending.append(CloudEvent(CloudEventKind.PREEMPTION_NOTICE, vm, at_s,
                                        f"spot capacity reclaimed; terminated at {deadline_s:.0f} s"))
        self._schedule(deadline_s, _Due.PREEMPTED, vm_id)

    def _catch_up(self, now_s: float) -> None:
        if now_s < self._now_s:
            raise ValueError(f"the simulated cloud cannot go back in time: now_s={now_s!r} < {self._now_s!r}")
        timers = self._timers
        while timers and timers[0][0] <= now_s:
            at_s, kind, seq, vm_id = heapq.heappop(timers)
            if self._valid(at_s, kind, seq, vm_id):
                self._fire(at_s, _Due(kind), vm_id)
        self._now_s = now_s

    def _fire(self, at_s: float, kind: _Due, vm_id: str) -> None:
        if kind is _Due.RUNNING:
            vm = self._set(vm_id, state=VmState.RUNNING, running_s=at_s)
            self._pending.append(CloudEvent(CloudEventKind.RUNNING, vm, at_s))
            after_s = self._preempt_after_s.get(vm_id)
            if after_s is not None:
                self._schedule(at_s + after_s, _Due.NOTICE, vm_id)
        elif kind is _Due.NOTICE:
            self._notify(at_s, vm_id, at_s + self.regions.region(self._vms[vm_id].region).spot_notice_s)
        elif kind is _Due.PREEMPTED:
            vm = self._set(vm_id, state=VmState.TERMINATED, terminated_s=at_s, preempted=True)
            self._pending.append(CloudEvent(CloudEventKind.TERMINATED, vm, at_s, "preempted"))
        else:
            vm = self._set(vm_id, state=VmState.TERMINATED, terminated_s=at_s)
            self._pending.append(CloudEvent(CloudEventKind.TERMINATED, vm, at_s, "released"))
