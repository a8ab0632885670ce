"""The simulated cloud: quotas, provisioning delays, spot preemption with notice, billing, and driving it
from the discrete-event loop through the actuator contract."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.cloud import (
    BillingPolicy,
    BillingStart,
    BillingStop,
    CloudDriver,
    CloudEvent,
    CloudEventKind,
    SimCloudConfig,
    SimulatedActuator,
    SimulatedCloud,
    parse_regions,
)
from opscale.model import Purchase, VmState
from opscale.perf import default_catalog
from opscale.runtime.sim.loop import EventLoop

pytestmark = pytest.mark.unit

REGIONS = """
regions:
  - name: east
    provider: aws
    provider_region: us-east-1
    spot_preemptions_per_h: {rate}
    spot_notice_s: 120
    shutdown_s: 60
    skus:
      - {{name: H100-80GB, gpu_quota: {quota}, on_demand_provision_s: 300, spot_provision_s: 400}}
  - name: west
    provider: azure
    provider_region: westeurope
    price_multiplier: 1.2
    spot_preemptions_per_h: 0
    spot_notice_s: 30
    skus:
      - {{name: A100-80GB, gpu_quota: 64, on_demand_provision_s: 500, spot_provision_s: 600}}
"""
H100 = default_catalog().sku("H100-80GB")
A100 = default_catalog().sku("A100-80GB")


def cloud(rate: float = 0.0, quota: int = 16, **config: object) -> SimulatedCloud:
    return SimulatedCloud(parse_regions(REGIONS.format(rate=rate, quota=quota)), SimCloudConfig(**config))  # type: ignore[arg-type]


def test_requests_beyond_the_quota_are_refused_with_the_reason_until_a_vm_is_gone() -> None:
    c = cloud(quota=16)
    assert c.request("east", "H100-80GB", Purchase.ON_DEMAND, 0.0).accepted
    first = c.request("east", "H100-80GB", Purchase.SPOT, 0.0).vm
    assert first is not None and c.quota_left("east", "H100-80GB") == 0
    refused = c.request("east", "H100-80GB", Purchase.ON_DEMAND, 1.0)
    assert not refused.accepted
    assert "quota" in refused.reason and "allows 16 GPUs of H100-80GB" in refused.reason and "16 are held" in refused.reason
    c.release(first.vm_id, 10.0)
    # still held while shutting down (60 s), free afterwards
    assert not c.request("east", "H100-80GB", Purchase.ON_DEMAND, 69.0).accepted
    assert c.request("east", "H100-80GB", Purchase.ON_DEMAND, 70.0).accepted
    assert len(c.vms()) == 2 and len(c.vms(include_terminated=True)) == 3


def test_unknown_region_and_unoffered_sku_are_refused_naming_what_exists() -> None:
    c = cloud()
    assert "known regions: east, west" in c.request("north", "H100-80GB", Purchase.SPOT, 0.0).reason
    assert "does not offer SKU 'A100-80GB' (it offers H100-80GB)" in c.request(
        "east", "A100-80GB", Purchase.SPOT, 0.0).reason
    assert c.vms() == ()


def test_vm_runs_after_the_jittered_provisioning_delay_and_not_before() -> None:
    c = cloud(quota=10_000, provision_jitter=0.25, seed=7)
    vms = [c.request("east", "H100-80GB", p, 0.0).vm for p in [Purchase.ON_DEMAND] * 20 + [Purchase.SPOT] * 20]
    events = c.advance(10_000.0)
    running = {e.vm.vm_id: e.at_s for e in events if e.kind is CloudEventKind.RUNNING}
    assert len(running) == 40
    for vm in vms:
        assert vm is not None
        typical = 300.0 if vm.purchase is Purchase.ON_DEMAND else 400.0
        assert typical * 0.75 <= running[vm.vm_id] <= typical * 1.25
        assert c.vm(vm.vm_id).running_s == running[vm.vm_id]
    assert len(set(running.values())) == 40  # jittered, not all equal
    # same seed, same delays; another seed, other delays
    again = cloud(quota=10_000, provision_jitter=0.25, seed=7)
    other = cloud(quota=10_000, provision_jitter=0.25, seed=8)
    for c2 in (again, other):
        for p in [Purchase.ON_DEMAND] * 20 + [Purchase.SPOT] * 20:
            c2.request("east", "H100-80GB", p, 0.0)
    times = lambda c2: [e.at_s for e in c2.advance(10_000.0) if e.kind is CloudEventKind.RUNNING]  # noqa: E731
    assert times(again) == sorted(running.values()) and times(other) != sorted(running.values())


def test_no_jitter_gives_the_typical_delay_and_the_state_changes_on_time() -> None:
    c = cloud(provision_jitter=0.0)
    vm = c.request("west", "A100-80GB", Purchase.ON_DEMAND, 100.0).vm
    assert vm is not None and c.next_event_s() == 600.0
    assert [e.kind for e in c.advance(599.0)] == [CloudEventKind.REQUESTED]
    assert c.vm(vm.vm_id).state is VmState.PROVISIONING
    assert [e.kind for e in c.advance(600.0)] == [CloudEventKind.RUNNING]
    assert c.vm(vm.vm_id).state is VmState.RUNNING and c.next_event_s() is None


def test_spot_preemptions_on_a_seed_match_the_poisson_rate_and_come_with_notice() -> None:
    n, rate_per_h, horizon_s = 400, 0.5, 3600.0
    c = cloud(rate=rate_per_h, quota=8 * n, provision_jitter=0.0, seed=3)
    for _ in range(n):
        c.request("east", "H100-80GB", Purchase.SPOT, 0.0)
    for _ in range(20):
        c.request("west", "A100-80GB", Purchase.ON_DEMAND, 0.0)
    events = c.advance(400.0 + horizon_s)  # every spot VM runs from t=400 s
    notices = [e for e in events if e.kind is CloudEventKind.PREEMPTION_NOTICE]
    expected = n * (1 - math.exp(-rate_per_h * horizon_s / 3600))
    assert abs(len(notices) - expected) < 4 * math.sqrt(expected * (1 - expected / n))
    assert all(e.vm.purchase is Purchase.SPOT and e.vm.region == "east" for e in notices)
    terminated = {e.vm.vm_id: e for e in c.advance(400.0 + horizon_s + 120.0) + events
                  if e.kind is CloudEventKind.TERMINATED}
    for notice in notices:
        end = terminated[notice.vm.vm_id]
        assert notice.deadline_s == end.at_s == notice.at_s + 120.0  # the region's notice
        assert end.vm.preempted and end.reason == "preempted"
        assert notice.vm.state is VmState.RUNNING  # still serving during the notice
    assert c.account().preemptions == len(notices)


def test_no_preemption_when_the_rate_is_zero_or_scaled_away() -> None:
    for c in (cloud(rate=0.0, quota=800), cloud(rate=5.0, quota=800, preemption_rate_scale=0.0)):
        for _ in range(100):
            c.request("east", "H100-80GB", Purchase.SPOT, 0.0)
        assert not [e for e in c.advance(100 * 3600.0) if e.kind is CloudEventKind.PREEMPTION_NOTICE]


def test_billing_runs_per_second_from_boot_to_release_split_by_purchase_and_region() -> None:
    c = cloud(provision_jitter=0.0, quota=64)
    od = c.request("east", "H100-80GB", Purchase.ON_DEMAND, 0.0).vm  # running at 300
    spot = c.request("east", "H100-80GB", Purchase.SPOT, 0.0).vm  # running at 400
    west = c.request("west", "A100-80GB", Purchase.ON_DEMAND, 0.0).vm  # running at 500
    assert od and spot and west
    c.release(spot.vm_id, 400.0 + 1800.0)
    c.release(od.vm_id, 300.0 + 3600.0)
    account = c.account(500.0 + 4500.0)  # the west VM has run 4500 s = 1.25 h by then
    assert account.gpu_hours_by_purchase(Purchase.ON_DEMAND) == pytest.approx(8 + 8 * 1.25)
    assert account.gpu_hours_by_purchase(Purchase.SPOT) == pytest.approx(4.0)
    assert account.cost_by_purchase(Purchase.SPOT) == pytest.approx(4.0 * H100.spot_price_usd_per_h)
    assert account.cost_usd == pytest.approx(8 * H100.price_usd_per_h + 4.0 * H100.spot_price_usd_per_h
                                             + 10.0 * A100.price_usd_per_h * 1.2)
    lines = {(x.region, x.sku, x.purchase): x for x in account.lines}
    assert lines[("west", "A100-80GB", Purchase.ON_DEMAND)].gpu_hours == pytest.approx(10.0)
    assert lines[("east", "H100-80GB", Purchase.ON_DEMAND)].vms == 1
    summary = account.as_dict()
    assert summary["cost_usd"] == pytest.approx(account.cost_usd) and len(summary["lines"]) == 3  # type: ignore[arg-type]


def test_pessimistic_billing_adds_provisioning_and_shutdown() -> None:
    c = cloud(provision_jitter=0.0, billing=BillingPolicy(BillingStart.REQUEST, BillingStop.TERMINATED))
    vm = c.request("east", "H100-80GB", Purchase.ON_DEMAND, 0.0).vm
    assert vm is not None
    c.release(vm.vm_id, 3600.0)
    assert c.account(10_000.0).gpu_hours == pytest.approx(8 * (3600.0 + 60.0) / 3600)
    # released while provisioning: it never ran, so the default policy bills nothing
    c2 = cloud(provision_jitter=0.0)
    early = c2.request("east", "H100-80GB", Purchase.ON_DEMAND, 0.0).vm
    assert early is not None
    c2.release(early.vm_id, 100.0)
    kinds = [e.kind for e in c2.advance(1000.0)]
    assert kinds == [CloudEventKind.REQUESTED, CloudEventKind.TERMINATING, CloudEventKind.TERMINATED]
    assert c2.account().gpu_hours == 0.0


def test_release_is_idempotent_and_time_cannot_go_back() -> None:
    c = cloud()
    vm = c.request("east", "H100-80GB", Purchase.SPOT, 0.0).vm
    assert vm is not None
    first = c.release(vm.vm_id, 5.0)
    assert c.release(vm.vm_id, 6.0) == first
    with pytest.raises(ValueError, match="back in time"):
        c.advance(1.0)
    with pytest.raises(KeyError, match="unknown VM 'nope'"):
        c.release("nope", 7.0)


OPS = st.lists(st.tuples(st.sampled_from(["request_od", "request_spot", "release", "wait"]),
                         st.floats(0.0, 2000.0), st.integers(0, 50)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops=OPS, seed=st.integers(0, 10))
def test_invariants_quota_event_order_and_bounded_billing(ops: list[tuple[str, float, int]], seed: int) -> None:
    c = cloud(rate=2.0, quota=32, seed=seed)
    now, events = 0.0, []
    for op, dt, pick in ops:
        now += dt
        if op.startswith("request"):
            c.request("east", "H100-80GB", Purchase.SPOT if op == "request_spot" else Purchase.ON_DEMAND, now)
        elif op == "release" and c.vms():
            c.release(c.vms()[pick % len(c.vms())].vm_id, now)
        events += c.advance(now)
        assert c.gpus_held("east", "H100-80GB") <= 32
    times = [e.at_s for e in events]
    assert times == sorted(times) and all(t <= now for t in times)
    order = {CloudEventKind.REQUESTED: 0, CloudEventKind.RUNNING: 1, CloudEventKind.PREEMPTION_NOTICE: 2,
             CloudEventKind.TERMINATING: 2, CloudEventKind.TERMINATED: 3}
    per_vm: dict[str, list[CloudEvent]] = {}
    for e in events:
        per_vm.setdefault(e.vm.vm_id, []).append(e)
    for vm_events in per_vm.values():
        ranks = [order[e.kind] for e in vm_events]
        assert ranks == sorted(ranks) and vm_events[0].kind is CloudEventKind.REQUESTED
    for vm in c.vms(include_terminated=True):
        billed = BillingPolicy().billed_s(vm, now)
        assert 0.0 <= billed <= now - vm.requested_s + 1e-9


def test_actuator_converges_a_pool_and_is_idempotent() -> None:
    c = cloud(quota=32, provision_jitter=0.0)
    actuator = SimulatedActuator(c)
    up = actuator.ensure("east", "H100-80GB", Purchase.SPOT, 3, 0.0)
    assert (up.live_before, len(up.started), up.released, up.converging) == (0, 3, (), True)
    assert actuator.ensure("east", "H100-80GB", Purchase.SPOT, 3, 10.0).started == ()
    beyond = actuator.ensure("east", "H100-80GB", Purchase.SPOT, 6, 20.0)
    assert len(beyond.started) == 1 and beyond.refused == 2 and "quota" in beyond.reason
    assert not beyond.converging
    # the newest (still provisioning) VM goes first on scale-in
    down = actuator.ensure("east", "H100-80GB", Purchase.SPOT, 3, 30.0)
    assert down.released == beyond.started
    assert [e.kind for e in actuator.poll_events(30.0)].count(CloudEventKind.TERMINATING) == 1
    assert sum(v.live for v in actuator.current(500.0)) == 3
    with pytest.raises(ValueError, match="count"):
        actuator.ensure("east", "H100-80GB", Purchase.SPOT, -1, 600.0)


def test_actuator_replaces_a_vm_under_preemption_notice() -> None:
    c = cloud(rate=50.0, quota=64, provision_jitter=0.0, seed=1)  # a notice within minutes of boot
    actuator = SimulatedActuator(c)
    actuator.ensure("east", "H100-80GB", Purchase.SPOT, 2, 0.0)
    events = actuator.poll_events(3600.0)
    noticed = {e.vm.vm_id for e in events if e.kind is CloudEventKind.PREEMPTION_NOTICE}
    assert noticed
    again = actuator.ensure("east", "H100-80GB", Purchase.SPOT, 2, 3600.0)
    assert len(again.started) == 2  # both were preempted or are leaving: two new ones


def test_driver_delivers_events_on_the_event_loop_at_their_times() -> None:
    loop = EventLoop()
    c = cloud(rate=20.0, quota=64, provision_jitter=0.1, seed=4)
    seen: list[tuple[float, CloudEvent]] = []
    driver = CloudDriver(loop, SimulatedActuator(c), on_event=lambda e: seen.append((loop.now_s, e)))
    loop.at(100.0, lambda: driver.ensure("east", "H100-80GB", Purchase.SPOT, 2))
    loop.at(200.0, lambda: driver.ensure("west", "A100-80GB", Purchase.ON_DEMAND, 1))
    loop.run(until_s=4 * 3600.0)
    assert seen and all(at == e.at_s for at, e in seen)  # delivered exactly when they happen
    kinds = [e.kind for _, e in seen]
    assert kinds.count(CloudEventKind.REQUESTED) == 3 and kinds.count(CloudEventKind.RUNNING) == 3
    assert kinds.count(CloudEventKind.PREEMPTION_NOTICE) == kinds.count(CloudEventKind.TERMINATED) >= 1
    assert driver.account().gpu_hours > 0 and len(driver.current()) == 1  # the on-demand west VM
