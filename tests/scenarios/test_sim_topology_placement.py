"""Topology-aware placement end to end in the simulator: with the planner aware of the switches, a
disaggregated deployment's prefill and decode instances land under one mini-pod (S1), so every KV
transfer stays under it (same or cross leaf); the same fleet and policy with placement blind to the
switches spreads decode by free GPUs into the other mini-pod, and the KV crosses mini-pods (cross_s1),
which costs TTFT."""

from __future__ import annotations

import pytest

from opscale.experiments import runner
from opscale.experiments.collector import RunCollector
from opscale.experiments.scenario import HostGroup, Scenario
from opscale.model import InstanceSpec
from opscale.planning import DeploymentSpec
from opscale.planning.base import RolePoolSpec
from opscale.services.planner import PlannerConfig
from opscale.traces import LengthDistribution, StreamSpec, SyntheticWorkloadConfig

pytestmark = pytest.mark.sim

MODEL = "Llama-3-8B"


def _scenario(topology_aware: bool) -> Scenario:
    # pod-a holds the prefill hosts and a small decode host; pod-b a big decode host only
    return Scenario(
        name="topology", seed=3, duration_s=90.0, drain_s=120.0,
        hosts=[HostGroup(region="eu", sku="H100-80GB", gpus=8, s0="a-prefill", s1="pod-a", s2="big-1"),
               HostGroup(region="eu", sku="H20", gpus=4, s0="a-decode", s1="pod-a", s2="big-1"),
               HostGroup(region="eu", sku="H20", gpus=8, s0="b-decode", s1="pod-b", s2="big-1")],
        deployments=[DeploymentSpec(model=MODEL, scheduling_domain="s1",
                                    prefill=RolePoolSpec(sku="H100-80GB", min_replicas=2, max_replicas=2),
                                    decode=RolePoolSpec(sku="H20", min_replicas=4, max_replicas=4))],
        workload=SyntheticWorkloadConfig(
            seed=3, start_s=10.0, duration_s=80.0, amplitude=0.0, period_s=90.0,
            streams=(StreamSpec(model=MODEL, region="eu", base_rps=2.0),), tier_weights={"interactive": 1.0},
            prompt_tokens=LengthDistribution(median_tokens=2048, sigma=0.5, max_tokens=6144),
            output_tokens=LengthDistribution(median_tokens=64, sigma=0.5, max_tokens=256)),
        policy="static", planner=PlannerConfig(topology_aware=topology_aware), warm_start_s=30.0)


def test_aware_placement_keeps_the_kv_under_one_mini_pod_and_blind_placement_crosses_them() -> None:
    aware = runner.run_scenario(_scenario(True)).result
    blind = runner.run_scenario(_scenario(False)).result
    for result in (aware, blind):
        assert result["dropped"] == 0 and result["completed"] > 100
    near = {k: v["count"] for k, v in aware["kv_transfers"].items() if v["count"]}
    far = {k: v["count"] for k, v in blind["kv_transfers"].items() if v["count"]}
    assert set(near) <= {"same_host", "same_switch", "cross_switch"} and sum(near.values()) == aware["completed"]
    assert far.get("cross_s1", 0) == blind["completed"]  # every decode instance in the other mini-pod
    assert blind["ttft_p50_s"] > aware["ttft_p50_s"]  # the slower path shows in the first token


def test_a_pool_spread_over_its_preferred_and_a_compatible_sku_serves_on_both(monkeypatch: pytest.MonkeyPatch) -> None:
    # decode prefers H20 but one host of 2 GPUs holds only two instances: the other two run on L20
    scenario = _scenario(True).model_copy(update={
        "hosts": [HostGroup(region="eu", sku="H100-80GB", gpus=8, s0="a-prefill", s1="pod-a", s2="big-1"),
                  HostGroup(region="eu", sku="H20", gpus=2, s0="a-decode", s1="pod-a", s2="big-1"),
                  HostGroup(region="eu", sku="L20", gpus=4, s0="a-l20", s1="pod-a", s2="big-1")],
        "deployments": [DeploymentSpec(model=MODEL, scheduling_domain="s1",
                                       prefill=RolePoolSpec(sku="H100-80GB", min_replicas=2, max_replicas=2),
                                       decode=RolePoolSpec(sku="H20", min_replicas=4, max_replicas=4,
                                                           compatible_skus=["L20"]))]})
    specs: dict[str, InstanceSpec] = {}
    decoded_on: set[str] = set()
    started, finished = RunCollector.engine_started, RunCollector.outcome
    monkeypatch.setattr(RunCollector, "engine_started", lambda self, spec, *a: (specs.__setitem__(
        spec.instance_id, spec), started(self, spec, *a))[1])
    monkeypatch.setattr(RunCollector, "outcome", lambda self, o: (decoded_on.add(o.instance_id), finished(self, o))[1])
    run = runner.run_scenario(Scenario.model_validate(scenario.model_dump()))
    assert run.result["dropped"] == 0 and run.result["completed"] > 100
    assert {(specs[i].sku, specs[i].tp) for i in decoded_on} == {("H20", 1), ("L20", 1)}
