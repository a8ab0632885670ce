"""A fleet adopted as running (`request(..., booted=True)`) and VM-hours on the bill."""

from __future__ import annotations

import pytest

from opscale.cloud import CloudEventKind, SimCloudConfig, SimulatedCloud, default_region_catalog
from opscale.model import Purchase, VmState

pytestmark = pytest.mark.unit


def test_a_booted_vm_runs_at_once_and_is_billed_from_then() -> None:
    cloud = SimulatedCloud(default_region_catalog(), SimCloudConfig(seed=1))
    booted = cloud.request("us-east", "H100-80GB", Purchase.ON_DEMAND, 0.0, booted=True).vm
    fresh = cloud.request("us-east", "H100-80GB", Purchase.ON_DEMAND, 0.0).vm
    assert booted is not None and fresh is not None
    events = cloud.advance(0.0)
    assert [(e.kind, e.vm.vm_id) for e in events if e.kind is CloudEventKind.RUNNING] == [
        (CloudEventKind.RUNNING, booted.vm_id)]
    assert cloud.vm(booted.vm_id).state is VmState.RUNNING and cloud.vm(fresh.vm_id).state is VmState.PROVISIONING
    cloud.release(booted.vm_id, 1800.0)
    account = cloud.account(3600.0)
    # the booted VM ran 1800 s; the fresh one boots in ~6 min (jittered) and runs to 3600 s
    fresh_s = 3600.0 - (cloud.vm(fresh.vm_id).running_s or 0.0)
    assert account.vm_hours == pytest.approx((1800.0 + fresh_s) / 3600.0)
    assert account.gpu_hours == pytest.approx(8 * account.vm_hours)
    assert account.as_dict()["vm_hours"] == pytest.approx(account.vm_hours)
    assert account.lines[0].vm_hours == pytest.approx(account.vm_hours)


def test_a_forced_preemption_gives_its_notice_now_and_only_once() -> None:
    cloud = SimulatedCloud(default_region_catalog(), SimCloudConfig(seed=2, preemption_rate_scale=500.0))
    vm = cloud.request("us-east", "H100-80GB", Purchase.SPOT, 0.0, booted=True).vm
    on_demand = cloud.request("us-east", "H100-80GB", Purchase.ON_DEMAND, 0.0, booted=True).vm
    assert vm is not None and on_demand is not None
    cloud.advance(0.0)
    noticed = cloud.preempt(vm.vm_id, 1.0, notice_s=30.0)
    assert noticed.notice_s == 1.0 and noticed.deadline_s == 31.0
    events = cloud.advance(3600.0)  # at 10 preemptions per hour, the drawn notice would have come by now
    assert [e.kind for e in events if e.vm.vm_id == vm.vm_id] == [CloudEventKind.PREEMPTION_NOTICE,
                                                                  CloudEventKind.TERMINATED]
    assert cloud.vm(vm.vm_id).terminated_s == 31.0 and cloud.vm(vm.vm_id).preempted
    with pytest.raises(ValueError, match="not a running spot VM"):
        cloud.preempt(on_demand.vm_id, 3600.0)
