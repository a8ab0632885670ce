"""The live planner's VM actuation (opscale.runtime.live.vm_actuation): a plan's VM counts become
`ensure` calls on the simulated cloud (a real back end of the actuator contract, with quotas), a new plan
asks only for the cells whose count changed since the last successful `ensure`, a refusal
is logged with the cloud's reason once per change, a planner that does not lead calls nothing, one
failing cell does not stop the others, and the threaded local back end stops its agents on close."""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import pytest
from _builders import heartbeat

from opscale.cloud import (
    AsyncAdapter,
    EnsureResult,
    SimCloudConfig,
    SimulatedActuator,
    SimulatedCloud,
    default_region_catalog,
)
from opscale.model import Plan, Purchase, VmState
from opscale.planning import DeploymentSpec
from opscale.planning.registry import make_planning_policy
from opscale.planning.sageserve.mip import SageServeMipConfig, SageServeMipPolicy
from opscale.runtime.clock import VirtualClock
from opscale.runtime.live.cloud_k8s import K8sActuatorError, KubernetesActuator
from opscale.runtime.live.cloud_local import LocalProcessActuator
from opscale.runtime.live.settings import PlannerSettings, SettingsError, load_settings
from opscale.runtime.live.vm_actuation import ThreadedActuator, VmActuation, build_actuator
from opscale.services.planner import PlannerConfig, PlannerCore

pytestmark = pytest.mark.unit

CELL = ("us-east", "H100-80GB", "on_demand")


class _Closable(AsyncAdapter):
    """The simulated cloud behind the asynchronous contract, with the `close` the service calls."""

    closed = False

    async def close(self) -> None:
        self.closed = True


def _cloud(h100_quota_gpus: int = 256) -> SimulatedCloud:
    base = default_region_catalog()
    region = base.region("us-east")
    offers = tuple(dataclasses.replace(o, gpu_quota=h100_quota_gpus) if o.sku == "H100-80GB" else o
                   for o in region.offers)
    catalog = dataclasses.replace(base, regions=(dataclasses.replace(region, offers=offers),))
    return SimulatedCloud(catalog, SimCloudConfig(seed=1))


def _actuation(cloud: SimulatedCloud, clock: VirtualClock, leading: bool = True) -> tuple[VmActuation, _Closable]:
    actuator = _Closable(SimulatedActuator(cloud))
    return VmActuation(actuator, clock, lambda: leading, call_timeout_s=5.0), actuator


async def test_the_vms_a_policy_decides_become_ensure_calls_and_a_smaller_plan_gives_vms_back() -> None:
    # the decision is the core's: sageserve_mip on an elastic fleet (quotas) asks for one VM
    dep = DeploymentSpec(model="Llama-3-70B", sku="H100-80GB", tp=4, min_replicas=1, max_replicas=16)
    policy = SageServeMipPolicy([dep], lambda *_: 10.0, SageServeMipConfig(headroom=1.0, interval_s=30.0,
                                                                           min_resolve_s=0.0, spot=False,
                                                                           prestage=False))
    core = PlannerCore(policy, [dep], PlannerConfig(interval_s=10.0), gpu_quotas={("us-east", "H100-80GB"): 64})
    core.handle(heartbeat("a1", "us-east"), 0.0)
    core.tick(0.0)
    assert core.plan.vm_counts == {CELL: 1}
    cloud, clock = _cloud(), VirtualClock()
    actuation, _ = _actuation(cloud, clock)
    [result] = await actuation.converge(core.plan)
    assert (result.desired, result.live_before, len(result.started), result.refused) == (1, 0, 1, 0)
    clock.advance(3600.0)
    events = await actuation.poll()
    assert [e.kind.value for e in events] == ["requested", "running"]
    # level-triggered: converging on the same plan again changes nothing
    [again] = await actuation.converge(core.plan)
    assert again.started == () and again.released == ()
    fewer = dataclasses.replace(core.plan, epoch=core.plan.epoch + 1, vm_counts={CELL: 0})
    [down] = await actuation.converge(fewer)
    assert len(down.released) == 1 and down.live_before == 1
    assert all(not v.live for v in SimulatedActuator(cloud).current(clock.now_s()))


async def test_a_refusal_is_logged_with_the_clouds_reason_once_while_it_stands(caplog: pytest.LogCaptureFixture) -> None:
    cloud, clock = _cloud(h100_quota_gpus=8), VirtualClock()  # one 8-GPU VM
    actuation, _ = _actuation(cloud, clock)
    plan = Plan(epoch=3, created_s=0.0, vm_counts={CELL: 3})
    with caplog.at_level(logging.INFO, logger="opscale.runtime.live.vm_actuation"):
        [result] = await actuation.converge(plan)
        await actuation.step(plan)  # the next pass: still refused, not logged again
    assert result.refused == 2 and len(result.started) == 1
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].startswith("vms: us-east/H100-80GB/on_demand: 2 of the 3 VM(s) planned refused")
    assert "quota" in refusals[0] and caplog.records[-1].levelno <= logging.WARNING
    assert any("started" in r.getMessage() and "epoch 3" in r.getMessage() for r in caplog.records)
    assert actuation.refusals == 2
    # the plan asks for what the quota allows: converging again, and the log says so
    with caplog.at_level(logging.INFO, logger="opscale.runtime.live.vm_actuation"):
        await actuation.converge(dataclasses.replace(plan, epoch=4, vm_counts={CELL: 1}))
    assert "converging again" in caplog.records[-1].getMessage()


class _Counting(_Closable):
    """Counts `ensure` calls per cell; `failing` cells raise."""

    def __init__(self, inner: SimulatedActuator) -> None:
        super().__init__(inner)
        self.calls: list[tuple[str, str, str, int]] = []
        self.failing: set[tuple[str, str, str]] = set()

    async def ensure(self, region: str, sku: str, purchase: Purchase, count: int, now_s: float) -> EnsureResult:
        self.calls.append((region, sku, purchase.value, count))
        if (region, sku, purchase.value) in self.failing:
            raise RuntimeError("the cloud is down")
        return await super().ensure(region, sku, purchase, count, now_s)


async def test_a_new_plan_ensures_only_the_cells_whose_count_changed_and_the_periodic_pass_all() -> None:
    cloud, clock = _cloud(), VirtualClock()
    actuator = _Counting(SimulatedActuator(cloud))
    actuation = VmActuation(actuator, clock, lambda: True, call_timeout_s=5.0)
    spot = ("us-east", "H100-80GB", "spot")
    plan = Plan(epoch=1, created_s=0.0, vm_counts={CELL: 1, spot: 1})
    assert len(await actuation.apply(plan)) == 2
    # a plan that changes routing, not VMs: nothing to ask the cloud
    assert await actuation.apply(dataclasses.replace(plan, epoch=2)) == []
    assert len(actuator.calls) == 2
    # one cell changed: only that one
    [changed] = await actuation.apply(dataclasses.replace(plan, epoch=3, vm_counts={CELL: 2, spot: 1}))
    assert (changed.sku, changed.purchase, changed.desired) == ("H100-80GB", Purchase.ON_DEMAND, 2)
    # the periodic pass re-asserts every cell (a VM that died is replaced there)
    await actuation.step(dataclasses.replace(plan, epoch=3, vm_counts={CELL: 2, spot: 1}))
    assert len(actuator.calls) == 5
    # a cell that failed is asked again by the next plan, even at the same count
    actuator.failing.add(spot)
    await actuation.apply(dataclasses.replace(plan, epoch=4, vm_counts={CELL: 2, spot: 2}))
    actuator.failing.clear()
    again = await actuation.apply(dataclasses.replace(plan, epoch=5, vm_counts={CELL: 2, spot: 2}))
    assert [(r.purchase, r.desired) for r in again] == [(Purchase.SPOT, 2)]


async def test_a_refused_cell_is_asked_again_by_the_next_plan() -> None:
    cloud, clock = _cloud(h100_quota_gpus=8), VirtualClock()  # one 8-GPU VM
    actuator = _Counting(SimulatedActuator(cloud))
    actuation = VmActuation(actuator, clock, lambda: True, call_timeout_s=5.0)
    plan = Plan(epoch=1, created_s=0.0, vm_counts={CELL: 3})
    [first] = await actuation.apply(plan)
    assert first.refused == 2
    [second] = await actuation.apply(dataclasses.replace(plan, epoch=2))
    assert second.desired == 3 and len(actuator.calls) == 2


async def test_a_planner_that_does_not_lead_acts_on_nothing() -> None:
    cloud, clock = _cloud(), VirtualClock()
    actuation, _ = _actuation(cloud, clock, leading=False)
    assert await actuation.converge(Plan(epoch=1, created_s=0.0, vm_counts={CELL: 2})) == []
    assert await actuation.poll() == []
    assert SimulatedActuator(cloud).current(0.0) == ()


async def test_a_plan_without_vm_counts_leaves_the_fleet_as_it_is() -> None:
    cloud, clock = _cloud(), VirtualClock()
    actuation, _ = _actuation(cloud, clock)
    await actuation.converge(Plan(epoch=1, created_s=0.0, vm_counts={CELL: 1}))
    assert await actuation.converge(Plan(epoch=2, created_s=0.0)) == []
    assert len([v for v in SimulatedActuator(cloud).current(0.0) if v.live]) == 1


async def test_the_first_fleet_is_held_until_a_plan_names_vm_counts() -> None:
    cloud, clock = _cloud(), VirtualClock()
    actuation = VmActuation(_Closable(SimulatedActuator(cloud)), clock, lambda: True, initial={CELL: 2})
    [first] = await actuation.converge(Plan(epoch=0, created_s=0.0))  # no plan yet: the first fleet
    assert len(first.started) == 2
    [planned] = await actuation.converge(Plan(epoch=1, created_s=0.0, vm_counts={CELL: 1}))
    assert len(planned.released) == 1


async def test_a_failing_cell_is_logged_and_the_others_still_converge(caplog: pytest.LogCaptureFixture) -> None:
    cloud, clock = _cloud(), VirtualClock()
    actuation, actuator = _actuation(cloud, clock)
    plan = Plan(epoch=1, created_s=0.0, vm_counts={("us-east", "H100-80GB", "reserved"): 1, CELL: 1})
    with caplog.at_level(logging.WARNING, logger="opscale.runtime.live.vm_actuation"):
        results = await actuation.converge(plan)
    assert [r.sku for r in results] == ["H100-80GB"] and actuation.failures == 1
    assert "us-east/H100-80GB/reserved: ensure(1) failed: ValueError" in caplog.text
    await actuation.close()
    assert actuator.closed


async def test_the_threaded_local_back_end_starts_an_agent_without_blocking_and_stops_it_on_close() -> None:
    # a stand-in node-agent that runs until SIGTERM
    local = LocalProcessActuator(command=(sys.executable, "-c", "import time\nwhile True: time.sleep(0.05)"),
                                 base_env={}, grace_s=5.0)
    actuation = VmActuation(ThreadedActuator(local), VirtualClock(), lambda: True, call_timeout_s=10.0)
    [result] = await actuation.converge(Plan(epoch=1, created_s=0.0, vm_counts={("eu-west", "H100-80GB", "spot"): 1}))
    [vm_id] = result.started
    assert [v.state for v in local.current(0.0)] == [VmState.RUNNING] and local.current(0.0)[0].purchase is Purchase.SPOT
    process = local._procs[vm_id].proc
    await actuation.close()
    assert process.poll() is not None and local.current(0.0) == ()


def test_static_holds_the_vms_it_is_given() -> None:
    dep = DeploymentSpec(model="Llama-3-8B", sku="H100-80GB", tp=1, min_replicas=1, max_replicas=2)
    policy = make_planning_policy("static", [dep], lambda *_: 1.0, vms=[
        {"region": "us-east", "sku": "H100-80GB", "count": 2}, {"region": "us-east", "sku": "L40S",
                                                               "purchase": "spot", "count": 0}])
    core = PlannerCore(policy, [dep])
    core.handle(heartbeat("a1", "us-east"), 0.0)
    core.tick(0.0)
    assert core.plan.vm_counts == {CELL: 2, ("us-east", "L40S", "spot"): 0}
    with pytest.raises(ValueError, match="vms.0.count"):
        make_planning_policy("static", [dep], lambda *_: 1.0, vms=[{"region": "us-east", "sku": "L40S", "count": -1}])


@pytest.mark.parametrize(("cloud", "named"), [
    ({"actuator": "aws"}, "'cloud.actuator'"),
    ({"poll_s": 0}, "'cloud.poll_s'"),
    ({"quotas": {"mars": {"H100-80GB": 8}}}, "cloud.quotas.mars: not a region of the fleet"),
    ({"quotas": {"eu-west": {"L4": 8}}}, "cloud.quotas.eu-west.L4: region 'eu-west' does not sell L4"),
    ({"local": {"grace_s": -1}}, "'cloud.local.grace_s'"),
    ({"k8s": {"request_timeout_s": 0}}, "'cloud.k8s.request_timeout_s'"),
    ({"initial_vms": [{"region": "eu-west", "sku": "L40S", "count": 1}] * 2}, "cloud.initial_vms.1: eu-west/L40S"),
    ({"initial_vms": [{"region": "eu-west", "sku": "L40S", "count": -1}]}, "'cloud.initial_vms.0.count'"),
])
def test_bad_cloud_settings_name_the_field(cloud: dict[str, object], named: str) -> None:
    with pytest.raises(SettingsError, match="invalid planner settings") as raised:
        load_settings(PlannerSettings, cloud=cloud)
    assert named in str(raised.value)


def test_the_clouds_secrets_are_never_echoed() -> None:
    settings = load_settings(PlannerSettings, cloud={"actuator": "k8s", "k8s": {"token": "s3cret-token"},
                                                     "local": {"env": {"OPSCALE_NATS_AUTH__PASSWORD": "pw-123"}}})
    assert "s3cret-token" not in repr(settings) and "pw-123" not in repr(settings)
    with pytest.raises(SettingsError) as raised:
        load_settings(PlannerSettings, cloud={"local": {"env": {"A": ["pw-456"]}}, "quotas": {"mars": {}}})
    assert "pw-456" not in str(raised.value)


def test_the_default_fleet_is_fixed_and_an_elastic_one_plans_up_to_the_catalogues_quotas() -> None:
    settings = load_settings(PlannerSettings)
    assert settings.cloud.actuator == "none"
    quotas = load_settings(PlannerSettings, cloud={"actuator": "local", "quotas": {"eu-west": {"H100-80GB": 16}},
                                                   "stand_ins": {"lab": "us-west"}}).cloud.gpu_quotas()
    assert quotas[("eu-west", "H100-80GB")] == 16
    assert quotas[("lab", "H100-80GB")] == default_region_catalog().region("us-west").gpu_quota("H100-80GB")


def test_the_k8s_back_end_is_built_from_the_planners_settings_and_takes_an_inline_token(tmp_path: Path) -> None:
    pools = tmp_path / "pools.yaml"
    pools.write_text("- {region: us-east, sku: H100-80GB, purchase: spot, kind: karpenter, name: gpu-h100-spot}\n")
    settings = load_settings(PlannerSettings, cloud={"actuator": "k8s", "k8s": {
        "api_url": "https://k8s.example:6443", "pools_file": str(pools), "token": "inline-token"}})
    actuator = build_actuator(settings.cloud, {})
    assert isinstance(actuator, KubernetesActuator)
    assert actuator.pool("us-east", "H100-80GB", Purchase.SPOT).name == "gpu-h100-spot"
    assert actuator._token() == "inline-token"
    with pytest.raises(K8sActuatorError, match="OPSCALE_K8S_POOLS_FILE"):  # no pools: named at start-up
        build_actuator(load_settings(PlannerSettings, cloud={"actuator": "k8s",
                                                             "k8s": {"api_url": "https://k8s.example"}}).cloud, {})
