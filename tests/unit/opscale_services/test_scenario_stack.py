"""`opscale up --scenario`: a scenario's routers and hosts as live processes, each with its own identity
and ports, and the settings that configure every service as the scenario configures the simulation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from opscale.experiments.scenario import Scenario, ScenarioError
from opscale.runtime.live.settings import SERVICE_SETTINGS, load_settings

from opscale_services.launcher import stack_environments
from opscale_services.scenario_stack import scenario_cloud, scenario_processes, scenario_settings

pytestmark = pytest.mark.unit


def _scenario() -> Scenario:
    return Scenario.model_validate({
        "name": "two regions", "duration_s": 60.0, "policy": "kpa", "routing_policy": "least_kv",
        "router": {"spill_over": False},
        "hosts": [{"region": "eu-west", "sku": "H100-80GB", "gpus": 8, "count": 2},
                  {"region": "us-east", "sku": "A100-80GB", "gpus": 4, "count": 1, "weight_cache_gb": 64}],
        "deployments": [{"model": "Llama-3-8B", "sku": "H100-80GB", "regions": ["eu-west", "us-east"], "min_replicas": 1}],
        "engine": {"max_num_seqs": 64, "emit_tokens": False},
        "load_time_scale": 0.1,
    })


def _ports(env: dict[str, str]) -> list[int]:
    return [int(v) for k, v in env.items() if k.endswith("_PORT")]


def test_a_router_per_region_and_a_node_agent_per_host_named_as_the_simulator_names_them() -> None:
    scenario = _scenario()
    processes = scenario_processes(scenario)
    routers = [p.env for p in processes if p.service == "router"]
    agents = [p.env for p in processes if p.service == "node-agent"]
    assert [r["OPSCALE_ROUTER_CORE__REGION"] for r in routers] == ["eu-west", "us-east"]
    assert [a["OPSCALE_NODE_AGENT_AGENT_ID"] for a in agents] == [
        host for _, hosts in scenario.host_groups() for host in hosts]
    assert agents[2] == {"OPSCALE_NODE_AGENT_AGENT_ID": "us-east-a100-80gb-1", "OPSCALE_NODE_AGENT_REGION": "us-east",
                         "OPSCALE_NODE_AGENT_SKU": "A100-80GB", "OPSCALE_NODE_AGENT_GPUS": "4",
                         "OPSCALE_NODE_AGENT_WEIGHT_CACHE_GB": "64.0", "OPSCALE_NODE_AGENT_S0": "us-east-a100-80gb",
                         "OPSCALE_NODE_AGENT_S1": "us-east-a100-80gb", "OPSCALE_NODE_AGENT_S2": "us-east",
                         "OPSCALE_NODE_AGENT_RDMA_PRIORITY": "low"}


@pytest.mark.parametrize("port_base", [None, 30000])
def test_every_process_of_a_multi_region_stack_gets_ports_of_its_own(port_base: int | None) -> None:
    processes = scenario_processes(_scenario())
    stack = stack_environments([p.env for p in processes if p.service == "node-agent"], {}, port_base,
                               [p.env for p in processes if p.service == "router"])
    assert [s for s, _ in stack].count("router") == 2 and [s for s, _ in stack].count("node-agent") == 3
    ports = [port for _, env in stack for port in _ports(env)]
    assert len(ports) == len(set(ports)), sorted(ports)
    first_router = next(env for service, env in stack if service == "router")
    if port_base is not None:
        assert first_router["OPSCALE_ROUTER_HTTP_PORT"] == str(port_base)  # the API at the base, as documented
    else:
        assert "OPSCALE_ROUTER_HTTP_PORT" not in first_router  # its documented default, 8000


def test_the_scenario_settings_configure_every_service(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(scenario_settings(_scenario())))
    settings = {name: load_settings(cls, path) for name, cls in SERVICE_SETTINGS.items()}
    assert settings["router"].core.policy == "least_kv" and settings["router"].core.spill_over is False
    assert settings["router"].core.models == ["Llama-3-8B"]
    assert settings["planner"].policy == "kpa"
    assert [d.regions for d in settings["planner"].deployments] == [["eu-west", "us-east"]]
    assert all(s.engine.max_num_seqs == 64 for s in settings.values())  # the planner sizes for the agents' engines
    assert [t.name for t in settings["aggregator"].tiers] == [t.name for t in _scenario().tiers]
    assert settings["node_agent"].load_time_scale == 0.1
    assert settings["node_agent"].transfer == _scenario().transfer  # prices a live KV hand-off as the simulator does


def test_with_a_cloud_actuator_the_hosts_are_the_planners_first_vms_with_the_scenarios_quotas() -> None:
    scenario = Scenario.model_validate({
        "name": "vms", "duration_s": 60.0,
        "hosts": [{"region": "eu-west", "sku": "H100-80GB", "gpus": 8, "count": 2},
                  {"region": "us-west", "sku": "A100-80GB", "gpus": 8, "count": 1}],
        "deployments": [{"model": "Llama-3-8B", "sku": "H100-80GB", "min_replicas": 1}],
        "vms": {"purchase": "spot", "quotas": {"us-west": {"A100-80GB": 16}}}})
    cloud = scenario_cloud(scenario, "local")
    planner = load_settings(SERVICE_SETTINGS["planner"], cloud=cloud)
    assert planner.cloud.initial() == {("eu-west", "H100-80GB", "spot"): 2, ("us-west", "A100-80GB", "spot"): 1}
    assert planner.cloud.gpu_quotas()[("us-west", "A100-80GB")] == 16
    # a host the cloud could not sell (its SKU's VMs have 8 GPUs) is refused, naming it
    with pytest.raises(ScenarioError, match="--cloud local: hosts us-east/A100-80GB: gpus is 4"):
        scenario_cloud(_scenario(), "local")
