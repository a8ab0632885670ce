"""What a cloud tells its user about VMs: `CloudEvent`s, and deriving them from two snapshots.

The simulated cloud emits events as its transitions happen. A back end that can only list VMs (local
processes, Kubernetes) derives them with `diff_events(before, after, now_s)`: comparing successive
listings is level-triggered, so a missed poll loses no transition, it only reports it later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from opscale.model import Vm, VmState


class CloudEventKind(StrEnum):
    REQUESTED = "requested"  # a VM appeared (PROVISIONING)
    RUNNING = "running"  # booted; its GPUs can take engines
    PREEMPTION_NOTICE = "preemption_notice"  # spot: will be terminated at `deadline_s`; drain now
    TERMINATING = "terminating"  # released (or reclaimed), shutting down
    TERMINATED = "terminated"  # gone; its quota is free again


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """One VM transition at `at_s`. `vm` is the VM as it is after the transition."""

    kind: CloudEventKind
    vm: Vm
    at_s: float
    reason: str = ""

    @property
    def deadline_s(self) -> float | None:
        """For a preemption notice: when the VM will be gone."""
        return self.vm.deadline_s


_ORDER = {VmState.PROVISIONING: 0, VmState.RUNNING: 1, VmState.TERMINATING: 2, VmState.TERMINATED: 3}
_KIND = {VmState.PROVISIONING: CloudEventKind.REQUESTED, VmState.RUNNING: CloudEventKind.RUNNING,
         VmState.TERMINATING: CloudEventKind.TERMINATING, VmState.TERMINATED: CloudEventKind.TERMINATED}


def diff_events(before: Mapping[str, Vm], after: Mapping[str, Vm], now_s: float,
                vanished_reason: str = "no longer listed") -> list[CloudEvent]:
    """The transitions between two listings keyed by vm_id, one event per state passed through.

    A VM that skipped states between polls (PROVISIONING straight to TERMINATED) gets an event for each
    state it passed, in order, so a consumer that waits for RUNNING or TERMINATED always sees it. A VM
    listed before and missing now is TERMINATED (`vanished_reason`). A notice that appeared is reported
    once.

    >>> from opscale.model import Purchase
    >>> a = Vm("v1", "us-east", "H100-80GB", 8, Purchase.SPOT, VmState.PROVISIONING, 0.0)
    >>> b = Vm("v1", "us-east", "H100-80GB", 8, Purchase.SPOT, VmState.TERMINATING, 0.0, running_s=3.0)
    >>> [e.kind.value for e in diff_events({"v1": a}, {"v1": b}, 5.0)]
    ['running', 'terminating']
    """
    events: list[CloudEvent] = []
    for vm_id, vm in after.items():
        old = before.get(vm_id)
        start = _ORDER[old.state] + 1 if old is not None else 0
        for state in list(_ORDER)[start:_ORDER[vm.state] + 1]:
            if state is VmState.RUNNING and vm.state is not VmState.RUNNING and vm.running_s is None:
                continue  # it never ran (released while provisioning)
            events.append(CloudEvent(_KIND[state], vm, now_s))
        if vm.notice_s is not None and (old is None or old.notice_s is None) and vm.state is not VmState.TERMINATED:
            events.append(CloudEvent(CloudEventKind.PREEMPTION_NOTICE, vm, now_s, "spot preemption notice"))
    for vm_id, old in before.items():
        if vm_id not in after and old.state is not VmState.TERMINATED:
            gone = Vm(old.vm_id, old.region, old.sku, old.gpus, old.purchase, VmState.TERMINATED, old.requested_s,
                      old.running_s, old.released_s, now_s, old.notice_s, old.deadline_s, old.preempted)
            events.append(CloudEvent(CloudEventKind.TERMINATED, gone, now_s, vanished_reason))
    return events
