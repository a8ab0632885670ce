"""Scenario checks of disaggregated deployments and of the switch tiers hosts sit under, and the path
from a host group's (or a live node-agent's) switches to its heartbeats."""

from __future__ import annotations

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
