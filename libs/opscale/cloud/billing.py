"""Per-second VM billing and the accounting summary (GPU-hours, cost, preemptions).

Clouds bill per second from boot, not from the request: AWS, Azure and Google Cloud all start the meter
when the instance is running, and AWS stops it as the instance enters shutting-down. So the default
`BillingPolicy` bills from `running_s` to the release (or, for a preempted VM, to its termination).
`BillingStart.REQUEST` and `BillingStop.TERMINATED` give the pessimistic variant that also bills
provisioning and shutdown, for experiments that want an upper bound.

Worked example: an 8-GPU spot VM at $2.75 per GPU-hour, running from t=600 s, released at t=4200 s,
is billed 3600 s = 8 GPU-hours = $22.00 under the default policy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from opscale.model import Purchase, Vm


class BillingStart(StrEnum):
    RUNNING = "running"  # the meter starts at boot (what clouds do)
    REQUEST = "request"  # the meter starts at the request (also bills provisioning)


class BillingStop(StrEnum):
    RELEASE = "release"  # the meter stops at the release request (AWS: at shutting-down)
    TERMINATED = "terminated"  # the meter stops when the VM is gone


@dataclass(frozen=True, slots=True)
class BillingPolicy:
    start: BillingStart = BillingStart.RUNNING
    stop: BillingStop = BillingStop.RELEASE

    def billed_s(self, vm: Vm, now_s: float) -> float:
        """Seconds of `vm` billed up to `now_s`."""
        begin = vm.requested_s if self.start is BillingStart.REQUEST else vm.running_s
        if begin is None:
            return 0.0
        end = now_s
        if vm.terminated_s is not None:
            end = min(end, vm.terminated_s)
        if self.stop is BillingStop.RELEASE and vm.released_s is not None:
            end = min(end, vm.released_s)
        return max(0.0, end - begin)


@dataclass(frozen=True, slots=True)
class AccountLine:
    """Totals for one (region, SKU, purchase)."""

    region: str
    sku: str
    purchase: Purchase
    vms: int
    gpu_hours: float
    cost_usd: float
    preemptions: int
    vm_hours: float = 0.0  # billed VM time (GPU-hours over the SKU's GPUs per VM)


@dataclass(frozen=True, slots=True)
class CloudAccount:
    """What the fleet cost up to `at_s`, split per (region, SKU, purchase) in `lines`."""

    at_s: float
    lines: tuple[AccountLine, ...] = field(default_factory=tuple)

    @property
    def gpu_hours(self) -> float:
        return sum(line.gpu_hours for line in self.lines)

    @property
    def cost_usd(self) -> float:
        return sum(line.cost_usd for line in self.lines)

    @property
    def preemptions(self) -> int:
        return sum(line.preemptions for line in self.lines)

    @property
    def vm_hours(self) -> float:
        return sum(line.vm_hours for line in self.lines)

    def cost_by_purchase(self, purchase: Purchase) -> float:
        return sum(line.cost_usd for line in self.lines if line.purchase is purchase)

    def gpu_hours_by_purchase(self, purchase: Purchase) -> float:
        return sum(line.gpu_hours for line in self.lines if line.purchase is purchase)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready summary (for result.json and reports)."""
        return {
            "at_s": self.at_s, "vm_hours": self.vm_hours, "gpu_hours": self.gpu_hours, "cost_usd": self.cost_usd,
            "on_demand_cost_usd": self.cost_by_purchase(Purchase.ON_DEMAND),
            "spot_cost_usd": self.cost_by_purchase(Purchase.SPOT), "preemptions": self.preemptions,
            "lines": [{"region": x.region, "sku": x.sku, "purchase": x.purchase.value, "vms": x.vms,
                       "vm_hours": x.vm_hours, "gpu_hours": x.gpu_hours, "cost_usd": x.cost_usd,
                       "preemptions": x.preemptions}
                      for x in self.lines],
        }


def account(priced_vms: Iterable[tuple[Vm, float]], now_s: float,
            policy: BillingPolicy = BillingPolicy()) -> CloudAccount:
    """Bill every (VM, USD per GPU-hour) up to `now_s`; lines sorted by region, SKU and purchase."""
    totals: dict[tuple[str, str, Purchase], list[float]] = {}
    for vm, usd_per_gpu_h in priced_vms:
        vm_hours = policy.billed_s(vm, now_s) / 3600.0
        gpu_hours = vm.gpus * vm_hours
        line = totals.setdefault((vm.region, vm.sku, vm.purchase), [0, 0.0, 0.0, 0, 0.0])
        line[0] += 1
        line[1] += gpu_hours
        line[2] += gpu_hours * usd_per_gpu_h
        line[3] += 1 if vm.preempted else 0
        line[4] += vm_hours
    return CloudAccount(now_s, tuple(
        AccountLine(region, sku, purchase, int(v[0]), v[1], v[2], int(v[3]), v[4])
        for (region, sku, purchase), v in sorted(totals.items())))
