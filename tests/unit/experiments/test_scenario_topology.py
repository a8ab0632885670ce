"""Scenario checks of disaggregated deployments and of the switch tiers hosts sit under, and the path
from a host group's (or a live node-agent's) switches to its heartbeats."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from opscale.experiments.scenario import HostGroup, Scenario
from opscale.runtime.live.settings import NodeAgentSettings
from opscale.services.node_agent import NodeAgentCore

pytestmark = pytest.mark.unit

SPLIT = {"model": "Llama-3-8B", "prefill": {"sku": "H100-80GB"}, "decode": {"sku": "H20"}}


def _scenario(hosts: list[dict[str, Any]], deployments: list[dict[str, Any]] | None = None) -> Scenario:
    return Scenario.model_validate({"duration_s": 10, "hosts": hosts, "deployments": deployments or [SPLIT]})


def test_switches_default_to_one_leaf_and_mini_pod_per_group_and_one_big_pod_per_region() -> None:
    scenario = _scenario([{"region": "eu", "sku": "H100-80GB", "count": 2},
                          {"region": "eu", "sku": "H20", "s0": "leaf-7", "s1": "pod-b", "s2": "big-2"}],
                         [{**SPLIT, "scheduling_domain": "none"}])  # P and D in two big-pods: no group holds both
    assert scenario.host_switches() == {
        "eu-h100-80gb-1": ("eu-h100-80gb", "eu-h100-80gb", "eu"),
        "eu-h100-80gb-2": ("eu-h100-80gb", "eu-h100-80gb", "eu"),
        "eu-h20-1": ("leaf-7", "pod-b", "big-2"),
    }


def test_a_switch_under_two_parents_is_named() -> None:
    with pytest.raises(ValidationError, match="s1 switch 'pod-a' has parent 'big-1' .* and 'big-2'"):
        _scenario([{"region": "eu", "sku": "H100-80GB", "s1": "pod-a", "s2": "big-1"},
                   {"region": "eu", "sku": "H20", "s1": "pod-a", "s2": "big-2"}])
    with pytest.raises(ValidationError, match="s2 switch 'big-1' has region 'eu' .* and 'us'"):
        _scenario([{"region": "eu", "sku": "H100-80GB", "s2": "big-1"}, {"region": "us", "sku": "H20", "s2": "big-1"}])


def test_a_role_without_hosts_of_its_sku_in_its_regions_is_named() -> None:
    with pytest.raises(ValidationError, match="deployment 'Llama-3-8B': decode.sku 'H20' has no hosts in its "
                                              r"regions \['eu'\]"):
        _scenario([{"region": "eu", "sku": "H100-80GB"}, {"region": "us", "sku": "H20"}],
                  [{**SPLIT, "regions": ["eu"]}])


def test_host_group_switches_reach_the_heartbeat_and_live_settings_name_a_gap() -> None:
    from opscale.services.node_agent import NodeAgentConfig

    s0, s1, s2 = HostGroup(region="eu", sku="H20", s1="pod-b").switches()
    agent = NodeAgentCore(NodeAgentConfig(agent_id="a", region="eu", sku="H20", s0=s0, s1=s1, s2=s2), lambda spec: 0.0)
    hb = agent.heartbeat(0.0)
    assert (hb.s0, hb.s1, hb.s2) == ("eu-h20", "pod-b", "eu")
    live = NodeAgentSettings(agent_id="a", s0="leaf-1", s1="pod-a", s2="big-1").core_config()
    assert (live.s0, live.s1, live.s2) == ("leaf-1", "pod-a", "big-1")
    with pytest.raises(ValidationError, match="s2 is 'big-1' but s1 is not set"):
        NodeAgentSettings(agent_id="a", s0="leaf-1", s2="big-1")


def test_rdma_priority_reaches_the_heartbeat_from_a_host_group_and_from_live_settings() -> None:
    from opscale.model import RdmaPriority

    scenario = _scenario([{"region": "eu", "sku": "H100-80GB"}, {"region": "eu", "sku": "H20", "rdma_priority": "high"}])
    assert [s.rdma_priority for s in scenario.agent_slots()] == [RdmaPriority.LOW, RdmaPriority.HIGH]
    live = NodeAgentSettings(agent_id="a", rdma_priority="medium").core_config()
    assert NodeAgentCore(live, lambda spec: 0.0).heartbeat(0.0).rdma_priority is RdmaPriority.MEDIUM
    with pytest.raises(ValidationError, match=r"hosts\.0\.rdma_priority"):
        _scenario([{"region": "eu", "sku": "H20", "rdma_priority": "urgent"}])


# Bad deployment groups: each error names the deployment, the field and the sizes or names at fault.
TWO_PODS = [{"region": "eu", "sku": "H100-80GB", "s1": "pod-a", "s2": "big-1"},
            {"region": "eu", "sku": "H20", "s1": "pod-b", "s2": "big-1"}]


@pytest.mark.parametrize(("deployment", "message"), [
    ({"model": "Llama-3-8B", "prefill": {"tp": 1}, "decode": {"sku": "H20"}},
     r"deployments\.0\.prefill\.sku\s+Field required"),
    ({**SPLIT, "domains": ["pod-z"]},
     r"deployment 'Llama-3-8B': domains names \['pod-z'\], which no host group declares as an s2 switch in its "
     r"regions \['eu'\]; declared: \['big-1'\]"),
    ({**SPLIT, "scheduling_domain": "s1", "domains": ["big-1"]},
     r"domains names \['big-1'\], which no host group declares as an s1 switch .* declared: \['pod-a', 'pod-b'\]"),
    ({**SPLIT, "scheduling_domain": "s1"},
     r"deployment 'Llama-3-8B': scheduling_domain s1: no s1 switch of region 'eu' can hold the group's minimum "
     r"\(1 prefill x tp 1 on H100-80GB, 1 decode x tp 1 on H20\); the largest, 'pod-b', has 8 GPUs \(H20 8\)"),
    ({**SPLIT, "decode": {"sku": "H20", "tp": 4, "min_replicas": 3}},
     r"scheduling_domain s2: no s2 switch of region 'eu' can hold the group's minimum \(1 prefill x tp 1 on "
     r"H100-80GB, 3 decode x tp 4 on H20\); the largest, 'big-1', has 16 GPUs \(H100-80GB 8, H20 8\)"),
    ({**SPLIT, "scheduling_domain": "none", "domains": ["big-1"]}, "domains .* need scheduling_domain s1 or s2"),
    ({"model": "Llama-3-8B", "sku": "H20", "scheduling_domain": "s1"}, "a unified deployment has no pair to bind"),
])
def test_a_bad_deployment_group_is_named_at_load_time(deployment: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _scenario(TWO_PODS, [deployment])


def test_a_group_that_fits_with_compatible_skus_loads_and_a_blind_planner_needs_no_domain(tmp_path: Any) -> None:
    from opscale.experiments.scenario import ScenarioError, load_scenario

    # decode's H20 is in the other mini-pod, but L20 (compatible) sits beside the prefill hosts
    hosts = [*TWO_PODS, {"region": "eu", "sku": "L20", "s1": "pod-a", "s2": "big-1"}]
    grouped = {**SPLIT, "scheduling_domain": "s1", "decode": {"sku": "H20", "compatible_skus": ["L20"]}}
    _scenario(hosts, [grouped])
    Scenario.model_validate({"duration_s": 10, "hosts": TWO_PODS, "planner": {"topology_aware": False},
                             "deployments": [{**SPLIT, "scheduling_domain": "s1"}]})
    bad = tmp_path / "s.yaml"
    bad.write_text("duration_s: 10\nhosts: [{region: eu, sku: H20, s1: pod-a}]\n"
                   "deployments: [{model: m, prefill: {sku: H20}, decode: {sku: H20}, domains: [pod-q]}]\n")
    with pytest.raises(ScenarioError, match=f"scenario file {re.escape(str(bad))}: .*deployment 'm': domains names "
                                            r"\['pod-q'\]"):
        load_scenario(bad)


def test_groups_of_one_region_and_sku_under_different_switches_number_their_hosts_on() -> None:
    scenario = _scenario([{"region": "eu", "sku": "H20", "count": 2, "s0": "leaf-a", "s1": "pod-a", "s2": "big-1"},
                          {"region": "eu", "sku": "H20", "count": 1, "s0": "leaf-b", "s1": "pod-b", "s2": "big-1"}],
                         [{**SPLIT, "prefill": {"sku": "H20"}}])
    assert [ids for _, ids in scenario.host_groups()] == [["eu-h20-1", "eu-h20-2"], ["eu-h20-3"]]
    assert scenario.host_switches()["eu-h20-3"] == ("leaf-b", "pod-b", "big-1")
