"""Build a simulated world from a scenario, run it, and summarise it.

After the last arrival the run continues (ticks, drains) until every accepted request has finished or
`drain_s` has passed; requests still unfinished then are reported as dropped, never silently lost.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opscale.cloud import SimulatedCloud, gpu_quotas
from opscale.engine import SimEngine
from opscale.experiments.collector import RunCollector
from opscale.experiments.scenario import HostGroup, Scenario, ScenarioError, trace_requests
from opscale.model import InstanceSpec, InstanceState, OperatorReplicas, Request, Role
from opscale.perf import Catalog, LatencyModels, default_catalog, load_profiles
from opscale.perf.loading import HostWeightCache, choose_load
from opscale.perf.operator_replicas import replica_attach_s
from opscale.planning import build_planning_stack
from opscale.runtime.sim.loop import EventLoop
from opscale.runtime.sim.vms import InitialVm, SimVmFleet
from opscale.runtime.sim.world import SimWorld, WorldConfig
from opscale.services.aggregator import AggregatorCore
from opscale.services.forecaster import ForecasterCore
from opscale.services.node_agent import NodeAgentConfig, NodeAgentCore
from opscale.services.planner import PlannerCore
from opscale.services.router import RouterConfig, RouterCore
from opscale.traces import generate_requests

ProgressFn = Callable[[float, float], None]  # (simulated now, simulated end)


@dataclass(slots=True)
class RunResult:
    result: dict[str, Any]
    collector: RunCollector
    scenario: Scenario


def requests_of(scenario: Scenario) -> Iterator[Request]:
    if scenario.workload is not None:
        return generate_requests(scenario.workload)
    if scenario.shaped is not None:
        from opscale.experiments.shaped_workload import generate_shaped_requests

        return generate_shaped_requests(scenario.shaped)
    if scenario.trace is None:
        raise ScenarioError(f"scenario {scenario.name!r} names no traffic: give it a 'workload', 'trace' or "
                            f"'shaped' section, or replay a trace on its fleet with `opscale simulate --trace`")
    return trace_requests(scenario.trace, scenario.seed)


def build_world(scenario: Scenario, catalog: Catalog | None = None, provisioned_until_s: float = 0.0,
                collector: RunCollector | None = None) -> tuple[SimWorld, RunCollector]:
    """The world of `scenario`. Instances started before `provisioned_until_s` are loaded at once.
    `collector`: the run's observer, when the caller keeps more than RunCollector does."""
    catalog = catalog or default_catalog()
    tiers = scenario.tier_specs()
    # One model per (model, SKU, TP), shared by the engines and the capacity estimates, as the live
    # node-agent and planner use the same calibrated model.
    latency_model = LatencyModels(load_profiles(scenario.profiles_dir) if scenario.profiles_dir is not None else None)
    # With VMs on, the hosts are VMs of a simulated cloud, and the planner may plan up to its quotas.
    cloud_regions = scenario.vms.cloud_catalog(scenario.regions()) if scenario.vms.enabled else None
    quotas = gpu_quotas(cloud_regions) if cloud_regions is not None else None

    def new_planner() -> PlannerCore:
        # The whole planning stack, as a (re)started live planner builds it: a restarted planner's
        # policy has lost its memory.
        stack = build_planning_stack(scenario.deployments, tiers, scenario.policy, scenario.policy_params,
                                     catalog=catalog, latency=latency_model, engine=scenario.engine)
        return PlannerCore(stack.policy, scenario.deployments, scenario.planner, gpu_quotas=quotas)

    def restart_planner() -> None:
        # The planner dies; a new one, with a fresh policy (its memory is gone), continues from the plan
        # it stored, as a restarted live planner does from Redis.
        planner = new_planner()
        stored = world.store.get("plan")
        if stored is not None:
            planner.restore(stored)
        world.replace_planner(planner)

    planner = new_planner()
    deployed = [d.model for d in scenario.deployments]
    routers = {region: RouterCore(RouterConfig(router_id=f"router-{region}", region=region,
                                               policy=scenario.routing_policy, models=deployed, **scenario.router),
                                  tiers=tiers)
               for region in scenario.regions()}
    agents: dict[str, NodeAgentCore] = {}

    def load_time_on(region: str, weights: HostWeightCache) -> Callable[[InstanceSpec], float]:
        def load_time(spec: InstanceSpec) -> float:
            model, sku = catalog.model(spec.model), catalog.sku(spec.sku)
            in_memory = scenario.warm_loads != "off" and weights.has(model.name)
            weights.loaded(model)  # the weights pass through host memory whichever way they come
            if world.loop.now_s < provisioned_until_s:
                return 0.0  # the fleet already running when the run begins
            peer = scenario.warm_loads == "host_memory_and_peers" and world.has_ready_instance(model.name, region)
            choice = choose_load(model, sku, spec.tp, in_host_memory=in_memory, peer_available=peer)
            collector.load_chosen(spec.instance_id, choice)
            return choice.load_s * scenario.load_time_scale
        return load_time

    def stage_on(weights: HostWeightCache) -> Callable[[str], bool]:
        # The weights stream from remote storage into host memory while the GPUs do other work.
        return lambda model_name: weights.stage(catalog.model(model_name), world.loop.after,
                                                time_scale=scenario.load_time_scale,
                                                on_staged=collector.weights_staged)

    def operator_attach_s(spec: InstanceSpec, replica: OperatorReplicas) -> float:
        # An operator replica joins a running engine: its operators' weights over the warm path.
        if world.loop.now_s < provisioned_until_s:
            return 0.0  # the fleet already running when the run begins
        return replica_attach_s(catalog.model(spec.model), replica) * scenario.load_time_scale

    def host_agent(agent_id: str, group: HostGroup) -> NodeAgentCore:
        s0, s1, s2 = group.switches()
        config = NodeAgentConfig(agent_id=agent_id, region=group.region, sku=group.sku, gpus=group.gpus,
                                 s0=s0, s1=s1, s2=s2, rdma_priority=group.rdma_priority)
        weights = HostWeightCache(group.weight_cache_gb)
        warm = scenario.warm_loads != "off"
        return NodeAgentCore(config, load_time_on(group.region, weights), (lambda w=weights: w.models) if warm else tuple,
                             stage_on(weights) if warm else None, operator_attach_s)

    for group, host_ids in scenario.host_groups():
        for agent_id in host_ids:
            agents[agent_id] = host_agent(agent_id, group)

    def make_engine(spec: InstanceSpec) -> SimEngine:
        model, sku = catalog.model(spec.model), catalog.sku(spec.sku)
        return SimEngine(spec.instance_id, model, sku, spec.tp, latency_model(model, sku, spec.tp),
                         scenario.engine, role=spec.role)

    collector = collector if collector is not None else RunCollector(tiers, catalog.sku)
    world = SimWorld(EventLoop(), routers, AggregatorCore(scenario.aggregator, tiers),
                     ForecasterCore(scenario.forecaster), planner, agents, make_engine, collector,
                     WorldConfig(region_rtt_ms=scenario.region_rtt_ms()),
                     scenario.transfer)
    fleet = None
    if cloud_regions is not None:
        fleet = start_vm_fleet(scenario, world, collector,
                               SimulatedCloud(cloud_regions, scenario.vms.cloud_config(scenario.seed)), host_agent)
    for fault in scenario.faults:
        if fault.kind == "planner_restart":
            world.loop.at(fault.at_s, restart_planner)
        else:
            if fault.host not in agents:
                raise ValueError(f"faults: no host {fault.host!r} to reclaim; hosts: {sorted(agents)}")
            # with VMs, through the cloud: the VM is billed to its end and counted as a preemption
            reclaim = fleet.preempt if fleet is not None else world.reclaim_host
            world.loop.at(fault.at_s, reclaim, fault.host, fault.notice_s)
    return world, collector


def start_vm_fleet(scenario: Scenario, world: SimWorld, collector: RunCollector, cloud: SimulatedCloud,
                   host_agent: Callable[[str, HostGroup], NodeAgentCore]) -> SimVmFleet:
    """The scenario's hosts as VMs of `cloud` (opscale.runtime.sim.vms), reported by `collector`. A VM
    that boots later takes the shape (GPUs, switches, host memory) of the scenario's first host group of
    its region and SKU, or the defaults of one."""
    groups = scenario.host_groups()
    initial = [InitialVm(agent_id, group.region, group.sku, scenario.vms.purchase)
               for group, ids in groups for agent_id in ids]

    def new_agent(agent_id: str, region: str, sku: str) -> NodeAgentCore:
        like = next((g for g, _ in groups if g.region == region and g.sku.casefold() == sku.casefold()), None)
        if like is None:
            per_vm = cloud.regions.skus.sku(sku).gpus_per_vm
            like = HostGroup(region=region, sku=sku, gpus=per_vm)
        return host_agent(agent_id, like)

    fleet = SimVmFleet(world, cloud, new_agent, initial, scenario.vms.release_drain_s,
                       scenario.vms.scale_in_delay_s)
    collector.vm_fleet = fleet
    return fleet


def drain(world: SimWorld, end_s: float, horizon_s: float, step_s: float) -> float:
    """Run `world` on from `end_s` in steps of `step_s` while requests are in flight or held, up to
    `horizon_s`; returns where it stopped."""
    while end_s < horizon_s and (world.in_flight() or any(r.pending() for r in world.routers.values())):
        end_s = min(horizon_s, end_s + step_s)
        world.loop.run(end_s)
    return end_s


def run_scenario(scenario: Scenario, progress: ProgressFn | None = None) -> RunResult:
    started = time.perf_counter()
    requests = requests_of(scenario)
    first = next(requests, None)
    provisioned_until = (first.arrival_s + scenario.warm_start_s
                         if first is not None and scenario.start_provisioned else 0.0)
    world, collector = build_world(scenario, provisioned_until_s=provisioned_until)
    loop = world.loop
    horizon = scenario.duration_s + scenario.drain_s
    world.start(itertools.chain([first] if first is not None else [], requests), until_s=horizon)

    def sample(now_s: float) -> None:
        ready: dict[str, int] = {}
        for agent in world.agents.values():
            for st in agent.heartbeat(now_s).instances:
                # a disaggregated deployment's pools are told apart by role: "model/region/prefill"
                key = (f"{st.model}/{agent.config.region}" if st.role is Role.UNIFIED
                       else f"{st.model}/{agent.config.region}/{st.role}")
                ready[key] = ready.get(key, 0) + (st.state == InstanceState.READY)
        collector.sample(now_s, ready)

    loop.every(scenario.sample_interval_s, sample, start_s=scenario.sample_interval_s, until_s=horizon)
    report = (lambda now_s: progress(now_s, scenario.duration_s)) if progress else None
    loop.run(scenario.duration_s, on_progress=report, progress_every_s=60.0)
    end_s = drain(world, scenario.duration_s, horizon, 10.0)
    for outcome in world.unfinished(end_s):
        collector.outcome(outcome)
    collector.finish(end_s, world.engines())
    result = collector.summary(end_s)
    result.update({
        "policy": scenario.policy, "seed": scenario.seed, "scenario": scenario.name,
        "routing_policy": scenario.routing_policy, "simulated_s": end_s, "requests_submitted": world.requests_submitted,
        "events": loop.events_run, "wall_s": time.perf_counter() - started,
    })
    return RunResult(result, collector, scenario)


def run_and_report(scenario: Scenario, out: Path) -> RunResult:
    """Run with a progress bar, print the summary table, write result.json and plots into `out`."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from opscale.experiments.report import print_summary, write_outputs

    console = Console()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[sim]}"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(f"simulating {scenario.name}", total=scenario.duration_s, sim="")

        def progress(now_s: float, end_s: float) -> None:
            bar.update(task, completed=now_s, sim=f"{now_s / 60:.0f} / {end_s / 60:.0f} simulated min")

        run = run_scenario(scenario, progress)
    print_summary(run, console)
    paths = write_outputs(run, out)
    console.print(f"wrote {', '.join(str(p) for p in paths)}")
    return run
