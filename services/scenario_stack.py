"""One scenario file for both runtimes: the live settings and processes that run a scenario's fleet.

`opscale simulate --config FILE` reads a scenario (hosts, deployments, tiers, policies, engine settings);
`opscale up --scenario FILE` starts the same fleet live: a router per region with the scenario's routing
policy, the planner with its planning policy and deployments, the aggregator and forecaster with their
settings, and one simulated node-agent per host with the host's region, SKU, GPUs, weight cache, switches
(S0/S1/S2) and the scenario's engine and KV-transfer settings. Host identities are the simulator's (`HostGroup.host_ids`), so a plan or a
fault that names a host means the same host in both.

With a VM actuator (`opscale up --scenario FILE --cloud local`), the hosts are not started as processes:
they are the planner's first VMs (`planner.cloud.initial_vms`, bought as `vms.purchase`), and the
scenario's `vms:` stand-ins and quotas are the planner's (`planner.cloud`), so the live planner buys and
gives back VMs as the simulator's does; a host the cloud could not sell is refused as the simulator
refuses it.

What the simulator models and the live stack does not take from the scenario: the workload (the live stack
serves whatever is sent to it; replay a trace with `opscale loadgen replay`), `faults`, `warm_loads` peers
and `start_provisioned` (live instances load as the planner places them, before the replay starts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opscale.experiments.scenario import Scenario, ScenarioError
from opscale.experiments.vm_fleet import fleet_problems


@dataclass(frozen=True, slots=True)
class ScenarioProcess:
    """One process of the stack: the service to serve and the environment variables that make it this
    router or this host (identity, region, ports come from the stack's port plan)."""

    service: str
    env: dict[str, str]


def scenario_settings(scenario: Scenario) -> dict[str, Any]:
    """The live settings file (shared keys and a section per service, see opscale.runtime.live.settings)
    that configures every service as `scenario` configures the simulation."""
    deployed = [d.model for d in scenario.deployments]
    return {
        "tiers": [t.model_dump(mode="json") for t in scenario.tiers],
        # The simulation may turn token outputs off to save time; a live engine streams every token and
        # the node-agent sets its own step size, so neither is the scenario's to say.
        "engine": scenario.engine.model_dump(mode="json", exclude={"emit_tokens", "max_run_steps"}),
        "router": {"core": {"policy": scenario.routing_policy, "models": deployed, **scenario.router}},
        "aggregator": {"core": scenario.aggregator.model_dump(mode="json")},
        "forecaster": {"core": scenario.forecaster.model_dump(mode="json")},
        "planner": {
            "policy": scenario.policy,
            "policy_params": scenario.policy_params,
            # as written: a disaggregated deployment refuses the unified fields its defaults would fill in
            "deployments": [d.model_dump(mode="json", exclude_unset=True) for d in scenario.deployments],
            "profiles_dir": str(scenario.profiles_dir) if scenario.profiles_dir is not None else None,
            "core": scenario.planner.model_dump(mode="json"),
        },
        "node_agent": {
            "load_time_scale": scenario.load_time_scale,
            "transfer": scenario.transfer.model_dump(mode="json"),
            "profiles_dir": str(scenario.profiles_dir) if scenario.profiles_dir is not None else None,
        },
    }


def scenario_cloud(scenario: Scenario, actuator: str) -> dict[str, Any]:
    """The planner's `cloud` settings that make the scenario's hosts its first VMs through `actuator`;
    ScenarioError when the cloud could not sell them (opscale.experiments.vm_fleet.fleet_problems)."""
    problem = fleet_problems(scenario.vms, ((h.region, h.sku, h.gpus, h.count) for h in scenario.hosts))
    if problem:
        raise ScenarioError(f"--cloud {actuator}: {problem}")
    counts: dict[tuple[str, str], int] = {}
    for group in scenario.hosts:
        counts[(group.region, group.sku)] = counts.get((group.region, group.sku), 0) + group.count
    return {"actuator": actuator, "stand_ins": dict(scenario.vms.stand_ins), "quotas": dict(scenario.vms.quotas),
            "initial_vms": [{"region": region, "sku": sku, "purchase": scenario.vms.purchase.value, "count": n}
                            for (region, sku), n in sorted(counts.items())]}


def scenario_processes(scenario: Scenario) -> list[ScenarioProcess]:
    """The routers (one per region, in region order) and node-agents (one per host, in the scenario's
    order) of `scenario`, each with the environment that gives it its identity."""
    processes = [ScenarioProcess("router", {"OPSCALE_ROUTER_CORE__REGION": region,
                                            "OPSCALE_ROUTER_CORE__ROUTER_ID": f"router-{region}"})
                 for region in scenario.regions()]
    prefix = "OPSCALE_NODE_AGENT_"
    for group, host_ids in scenario.host_groups():
        s0, s1, s2 = group.switches()
        for agent_id in host_ids:
            processes.append(ScenarioProcess("node-agent", {
                f"{prefix}AGENT_ID": agent_id,
                f"{prefix}REGION": group.region,
                f"{prefix}SKU": group.sku,
                f"{prefix}GPUS": str(group.gpus),
                f"{prefix}WEIGHT_CACHE_GB": str(group.weight_cache_gb),
                # where the host sits, reported in its heartbeats: what placement and pairing read
                f"{prefix}S0": s0,
                f"{prefix}S1": s1,
                f"{prefix}S2": s2,
                f"{prefix}RDMA_PRIORITY": group.rdma_priority.value,
            }))
    return processes
