"""Hosts as VMs of the simulated cloud (scenario `vms:`, opscale.runtime.sim.vms), on fixed seeds: spot
preemptions with notice lose no request, a quota holds a scale-out back with a logged reason, a booting
VM holds no instance, and the bill is the VMs' seconds times their prices."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from opscale.experiments import runner
from opscale.experiments.runner import RunResult, run_scenario
from opscale.experiments.scenario import Fault, HostGroup, Scenario
from opscale.model import Plan
from opscale.planning import DeploymentSpec
from opscale.runtime.sim.vms import SimVmFleet
from opscale.runtime.sim.world import SimWorld
from opscale.services import subjects
from opscale.services.events import PlanPublished
from opscale.traces import LengthDistribution, StreamSpec, SyntheticWorkloadConfig

pytestmark = pytest.mark.sim

REGION, SKU, MODEL = "us-east", "H100-80GB", "Llama-3-8B"


def _traffic(seed: int, duration_s: float, rps: float) -> SyntheticWorkloadConfig:
    return SyntheticWorkloadConfig(
        seed=seed, start_s=12.0, duration_s=duration_s - 20.0, amplitude=0.0,
        streams=(StreamSpec(model=MODEL, region=REGION, base_rps=rps),),
        prompt_tokens=LengthDistribution(median_tokens=1024, sigma=0.8, max_tokens=6144),
        output_tokens=LengthDistribution(median_tokens=256, sigma=0.7, max_tokens=1536))


def _spot_fleet(**vms: Any) -> Scenario:
    """Two spot VMs serving three instances (one host could hold them all); preemptions come often
    (20 per VM-hour) with the AWS notice, 120 s, longer than an instance takes to load elsewhere."""
    return Scenario(
        name="spot fleet", seed=6, duration_s=900.0, drain_s=600.0,
        hosts=[HostGroup(region=REGION, sku=SKU, gpus=8, count=2)],
        deployments=[DeploymentSpec(model=MODEL, sku=SKU, tp=1, min_replicas=3, max_replicas=3)],
        workload=_traffic(6, 900.0, 18.0), policy="static", warm_start_s=60.0,
        vms={"enabled": True, "purchase": "spot", "spot_preemptions_per_h": 20.0, "spot_notice_s": 120.0, **vms})


def _cloud_decisions(run: RunResult) -> list[tuple[float, str]]:
    return [(d["at_s"], d["message"]) for d in run.collector.decisions if d["service"] == "cloud"]


def test_a_spot_preemption_with_notice_loses_no_request() -> None:
    run = run_scenario(_spot_fleet())
    result, vms = run.result, run.result["vms"]
    assert vms["preemptions"] >= 1  # the seed draws a preemption within the run
    assert any("preemption notice" in message for _, message in _cloud_decisions(run))
    assert result["dropped"] == 0 and result["completed"] == result["requests"] > 0
    assert vms["requests_lost_to_preemptions"] == 0
    assert vms["preemptions_survived"] == vms["preemptions"]
    assert vms["boots"] >= 1  # each preempted VM was replaced by a new one
    assert vms["by_sku_purchase"][f"{SKU}/spot"]["preemptions"] == vms["preemptions"]


def test_a_quota_holds_a_scale_out_back_with_a_logged_reason_and_the_run_goes_on() -> None:
    # The quota is the two VMs the fleet holds: the replacement a preemption asks for is refused while the
    # preempted VM still holds its GPUs, and asked for again once it is gone.
    run = run_scenario(_spot_fleet(quotas={REGION: {SKU: 16}}))
    result, vms = run.result, run.result["vms"]
    decisions = _cloud_decisions(run)
    refused = [(at, m) for at, m in decisions if "refused" in m]
    assert vms["refusals"] >= 1 and refused
    assert all("quota" in m and "allows 16 GPUs" in m for _, m in refused)
    first_refusal = refused[0][0]
    later_requests = [at for at, m in decisions if m.endswith(f"requested ({REGION}/{SKU}/spot)") and at > first_refusal]
    assert later_requests  # the pool grew once the quota was free again
    assert result["dropped"] == 0 and vms["requests_lost_to_preemptions"] == 0


def _watch_plans(monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[float, Plan]], list[SimWorld]]:
    """Every plan the planner publishes, with the time it is delivered, and the world it runs in."""
    plans: list[tuple[float, Plan]] = []
    worlds: list[SimWorld] = []
    build: Callable[..., Any] = runner.build_world

    def build_and_watch(*args: Any, **kwargs: Any) -> Any:
        world, collector = build(*args, **kwargs)
        worlds.append(world)
        world.bus.subscribe(subjects.PLANS_ALL, lambda _s, e: plans.append((world.loop.now_s, e.plan))
                            if isinstance(e, PlanPublished) else None)
        return world, collector

    monkeypatch.setattr(runner, "build_world", build_and_watch)
    return plans, worlds


def _growing_fleet() -> Scenario:
    """One VM, traffic that needs three: SageServe's MIP buys the VMs the plan needs."""
    return Scenario(
        name="growing fleet", seed=3, duration_s=1200.0, drain_s=600.0,
        hosts=[HostGroup(region=REGION, sku=SKU, gpus=8, count=1)],
        deployments=[DeploymentSpec(model=MODEL, sku=SKU, tp=2, min_replicas=1, max_replicas=16)],
        workload=_traffic(3, 1200.0, 60.0), policy="sageserve_mip", policy_params={"interval_s": 300.0},
        vms={"enabled": True})


@pytest.fixture(scope="module")
def grown() -> tuple[RunResult, list[tuple[float, Plan]], SimVmFleet]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        plans, _ = _watch_plans(monkeypatch)
        run = run_scenario(_growing_fleet())
    fleet = run.collector.vm_fleet
    assert fleet is not None
    return run, plans, fleet


def test_the_plan_buys_vms_and_a_booting_vm_holds_no_instance(
        grown: tuple[RunResult, list[tuple[float, Plan]], SimVmFleet]) -> None:
    run, plans, fleet = grown
    booted = [vm for vm in fleet.cloud.vms(include_terminated=True) if vm.vm_id in fleet.agent_of
              and vm.running_s is not None and vm.running_s > vm.requested_s]
    assert run.result["vms"]["boots"] == len(booted) >= 1
    assert any(plan.vm_counts.get((REGION, SKU, "on_demand"), 0) > 1 for _, plan in plans)
    used = 0
    for vm in booted:
        agent = fleet.agent_of[vm.vm_id]
        holding = [at for at, plan in plans if plan.assignments.get(agent)]
        used += bool(holding)
        # nothing is placed on a VM before it runs and its agent has said so
        assert all(at >= vm.running_s for at in holding)
        assert vm.running_s - vm.requested_s > 60.0  # an H100 VM boots in minutes
    assert used >= 1  # and once it runs, the planner places on it
    assert run.result["dropped"] == 0


def test_the_bill_is_each_vms_running_seconds_times_its_price(
        grown: tuple[RunResult, list[tuple[float, Plan]], SimVmFleet]) -> None:
    run, _, fleet = grown
    end_s = run.result["simulated_s"]
    expected_cost = expected_vm_s = 0.0
    for vm in fleet.cloud.vms(include_terminated=True):
        if vm.running_s is None:
            continue
        stop = min(t for t in (end_s, vm.released_s, vm.terminated_s) if t is not None)
        seconds = max(0.0, stop - vm.running_s)
        expected_vm_s += seconds
        expected_cost += seconds / 3600.0 * vm.gpus * fleet.cloud.regions.price(vm.region, vm.sku, vm.purchase)
    vms = run.result["vms"]
    assert expected_vm_s > 0
    assert vms["vm_hours"] == pytest.approx(expected_vm_s / 3600.0)
    assert vms["cost_usd"] == pytest.approx(expected_cost)
    # on demand, and spot where the MIP chose it
    assert sum(line["cost_usd"] for kind, line in vms["by_sku_purchase"].items()
               if kind.startswith(f"{SKU}/")) == pytest.approx(expected_cost)


def test_without_vms_a_run_has_no_vm_report() -> None:
    scenario = _growing_fleet().model_copy(update={"vms": _growing_fleet().vms.model_copy(update={"enabled": False}),
                                                   "duration_s": 120.0, "workload": _traffic(3, 120.0, 5.0)})
    assert "vms" not in run_scenario(scenario).result


def test_a_spot_preemption_fault_on_a_vm_goes_through_the_cloud_and_loses_no_request() -> None:
    host = f"{REGION}-{SKU.lower()}-1"
    scenario = _spot_fleet(spot_preemptions_per_h=0.0).model_copy(update={"faults": [
        Fault(kind="spot_preemption", at_s=150.0, host=host, notice_s=30.0)]})
    run = run_scenario(scenario)
    result, vms = run.result, run.result["vms"]
    assert vms["preemptions"] == vms["preemptions_survived"] == 1 and vms["boots"] == 1
    assert result["dropped"] == 0 and vms["requests_lost_to_preemptions"] == 0
    preempted = [vm for vm in run.collector.vm_fleet.cloud.vms(include_terminated=True) if vm.preempted]
    assert len(preempted) == 1 and preempted[0].terminated_s == pytest.approx(180.0)


def _mixed_fleet() -> Scenario:
    """SageServe's MIP on an elastic fleet of two SKUs: a small model that may run on an L40S or an A100
    beside a 70B model that only fits A100s, with traffic that outgrows the one A100 VM the run starts
    with (where the small model's first instance runs, no L40S being there yet)."""
    region = "eastus"
    streams = (StreamSpec(model="Llama-3-8B", region=region, base_rps=1.0),
               StreamSpec(model="Llama-3-70B", region=region, base_rps=2.5))
    return Scenario(
        name="mixed fleet", seed=11, duration_s=3000.0, drain_s=600.0,
        hosts=[HostGroup(region=region, sku="A100-80GB", gpus=8, count=1)],
        deployments=[DeploymentSpec(model="Llama-3-8B", sku="L40S", tp=1, min_replicas=1, max_replicas=4,
                                    compatible_skus=["A100-80GB"]),
                     DeploymentSpec(model="Llama-3-70B", sku="A100-80GB", tp=4, min_replicas=1, max_replicas=8)],
        workload=SyntheticWorkloadConfig(
            seed=11, start_s=12.0, duration_s=2980.0, amplitude=0.0, streams=streams,
            prompt_tokens=LengthDistribution(median_tokens=1024, sigma=0.8, max_tokens=6144),
            output_tokens=LengthDistribution(median_tokens=200, sigma=0.7, max_tokens=1536)),
        policy="sageserve_mip", policy_params={"interval_s": 300.0}, warm_start_s=60.0,
        vms={"enabled": True, "quotas": {region: {"A100-80GB": 48, "L40S": 16}}, "scale_in_delay_s": 900.0})


def test_every_instance_the_mip_asks_for_is_placed_once_its_vms_have_booted() -> None:
    # The merged loop's regression (the MIP's SKU choice with VMs in the world): the small model's first
    # instance starts on the A100 (no L40S host yet), the plan then puts it on an L40S VM, and placement
    # leaves it where it runs. The VMs were counted on the plan's mix, not on where instances run: the A100
    # VM held "room" for both 70B instances, the small one took a GPU of it, and the second 70B instance
    # waited for the rest of the run. Now the A100 VMs count the GPU it holds, and once the VMs bought have
    # booted (an A100 VM in eastus: 540 s x 1.25 jitter at most) nothing waits for room.
    run = run_scenario(_mixed_fleet())
    waits = [d["at_s"] for d in run.collector.decisions
             if d["service"] == "planner" and "could not be placed" in d["message"]]
    assert run.result["vms"]["boots"] >= 1  # the traffic outgrew the VM the run starts with
    assert max(waits, default=0.0) < 1200.0, waits[-3:]
    assert run.result["dropped"] == 0
