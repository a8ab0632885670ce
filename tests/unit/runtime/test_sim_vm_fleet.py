"""The simulated VM fleet's laws, in a world without traffic: a pool over its target gives a VM back only
after the scale-in delay, the idle one first, drained before its release; a VM bought holds no host
until it runs, and its node-agent then joins and reports to the planner."""

from __future__ import annotations

import dataclasses

import pytest

from opscale.experiments.runner import build_world
from opscale.experiments.scenario import HostGroup, Scenario
from opscale.model import Purchase, VmState
from opscale.perf import default_catalog
from opscale.planning import DeploymentSpec
from opscale.runtime.sim.vms import SimVmFleet

pytestmark = pytest.mark.unit

POOL = ("us-east", "H100-80GB", "on_demand")
DELAY_S = 100.0


def _fleet() -> tuple[SimVmFleet, object]:
    scenario = Scenario(
        duration_s=3000.0, hosts=[HostGroup(region="us-east", sku="H100-80GB", gpus=8, count=2)],
        deployments=[DeploymentSpec(model="Llama-3-8B", sku="H100-80GB", min_replicas=1, max_replicas=1)],
        policy="static", vms={"enabled": True, "scale_in_delay_s": DELAY_S, "release_drain_s": 50.0})
    world, collector = build_world(scenario)
    world.start(iter(()), until_s=scenario.duration_s)
    assert collector.vm_fleet is not None
    return collector.vm_fleet, world


def test_a_pool_over_its_target_gives_back_its_idle_vm_after_the_delay_drained_first() -> None:
    fleet, world = _fleet()
    world.loop.run(5.0)
    plan = world.planner.plan
    busy = {agent for agent, specs in plan.assignments.items() if specs}
    assert len(busy) == 1 and len(world.agents) == 2 and fleet.target == {POOL: 2}
    fleet.act_on(dataclasses.replace(plan, vm_counts={POOL: 1}))
    world.loop.run(5.0 + DELAY_S - 1.0)
    assert len(world.agents) == 2  # not before the delay
    world.loop.run(5.0 + DELAY_S + 10.0)
    assert set(world.agents) == busy  # the idle host went; the one serving stays
    gone = [vm for vm in fleet.cloud.vms(include_terminated=True) if vm.released_s is not None]
    assert len(gone) == 1 and gone[0].released_s >= 5.0 + DELAY_S
    assert any("drains before its release" in d["message"] for d in world.observer.decisions)


def test_a_vm_bought_holds_no_host_until_it_runs_then_its_agent_reports() -> None:
    fleet, world = _fleet()
    world.loop.run(5.0)
    fleet.act_on(dataclasses.replace(world.planner.plan, vm_counts={POOL: 3}))
    world.loop.run(6.0)
    booting = [vm for vm in fleet.cloud.vms() if vm.state is VmState.PROVISIONING]
    assert len(booting) == 1 and len(world.agents) == 2
    free = world.planner.observe(world.loop.now_s).free_gpus[("us-east", "H100-80GB")]
    running_s = None
    while running_s is None:
        world.loop.run(world.loop.now_s + 30.0)
        vm = fleet.cloud.vm(booting[0].vm_id)
        running_s = vm.running_s
        if running_s is None:  # still booting: no host, nothing the planner could place on
            assert len(world.agents) == 2 and booting[0].vm_id not in fleet.agent_of
    assert running_s - 5.0 > 60.0  # an H100 VM boots in minutes
    joined = fleet.agent_of[booting[0].vm_id]
    assert joined in world.agents and fleet.boots == 1
    world.loop.run(world.loop.now_s + 5.0)
    # its heartbeat reached the planner: its 8 GPUs are free to place on
    assert world.planner.observe(world.loop.now_s).free_gpus[("us-east", "H100-80GB")] == free + 8


def test_the_runs_cost_prices_an_engines_gpus_as_the_cloud_bills_its_vm() -> None:
    """cost_usd and the VM bill have one price: a spot VM in eu-west (the region's multiplier) is billed,
    and its engine's GPUs counted, at the cloud's price for it, not the SKU's list price."""
    scenario = Scenario(
        duration_s=600.0, hosts=[HostGroup(region="eu-west", sku="H100-80GB", gpus=8, count=1)],
        deployments=[DeploymentSpec(model="Llama-3-8B", sku="H100-80GB", min_replicas=1, max_replicas=1)],
        policy="static", vms={"enabled": True, "purchase": "spot"})
    world, collector = build_world(scenario)
    world.start(iter(()), until_s=scenario.duration_s)
    world.loop.run(600.0)
    assert collector.vm_fleet is not None
    [vm] = collector.vm_fleet.cloud.vms()
    price = collector.vm_fleet.cloud.price(vm.vm_id)
    assert price == pytest.approx(collector.vm_fleet.cloud.regions.price("eu-west", "H100-80GB", vm.purchase))
    result = collector.summary(600.0)
    assert result["gpu_hours"] > 0
    assert result["cost_usd"] == pytest.approx(result["gpu_hours"] * price)
    assert vm.purchase is Purchase.SPOT and price != pytest.approx(default_catalog().sku("H100-80GB").price_usd_per_h)
