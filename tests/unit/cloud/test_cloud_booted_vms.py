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
