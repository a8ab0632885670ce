"""Failures injected into a simulated run (fixed seed): the control plane must ride them out."""

from __future__ import annotations

import pytest

from opscale.experiments.runner import RunResult, run_scenario
from opscale.experiments.scenario import Fault, HostGroup, Scenario, builtin_demo_scenario
from opscale.planning import DeploymentSpec
from opscale.traces import LengthDistribution, StreamSpec, SyntheticWorkloadConfig

pytestmark = pytest.mark.sim

RESTART_S = 900.0


def _plan_epochs(run: RunResult) -> list[tuple[float, int]]:
    epochs = []
    for d in run.collector.decisions:
        if d["message"].startswith("plan epoch "):
            epochs.append((d["at_s"], int(d["message"].split()[2].rstrip(":"))))
    return epochs


def test_a_restarted_planner_continues_from_the_stored_plan_without_a_change_of_course() -> None:
    base = builtin_demo_scenario(seed=3, duration_s=1800.0)
    steady = run_scenario(base)
    restarted = run_scenario(base.model_copy(update={"faults": [Fault(kind="planner_restart", at_s=RESTART_S)]}))
    assert any(d["message"] == "planner restarted" for d in restarted.collector.decisions)

    calm, hit = steady.result, restarted.result
    assert hit["requests"] == calm["requests"] and hit["dropped"] == 0
    # Same service, and no fleet churn: a planner that read the fleet as empty would tear the plan
    # down and cold-start it again (SLO breaches, extra loads).
    assert hit["slo_attainment"] >= calm["slo_attainment"] - 0.002
    assert hit["cold_starts"] + hit["warm_migrations"] <= calm["cold_starts"] + calm["warm_migrations"]
    assert hit["gpu_hours"] <= calm["gpu_hours"] * 1.02
    # The epochs go on from the stored plan's, and the new planner first decides only once it has heard
    # the agents and a demand window of router loads.
    epochs = _plan_epochs(restarted)
    before = [e for at, e in epochs if at < RESTART_S]
    after = [(at, e) for at, e in epochs if at >= RESTART_S]
    assert after and after[0][1] == before[-1] + 1
    assert after[0][0] >= RESTART_S + 20.0


@pytest.mark.parametrize("notice_s", [120.0, 30.0, 0.0])
def test_a_spot_preemption_loses_no_request(notice_s: float) -> None:
    # Two hosts; the planner puts the pool on the first; the cloud takes that host back mid-run.
    base = Scenario(
        name=f"spot {notice_s}", seed=6, duration_s=420.0, drain_s=600.0,
        hosts=[HostGroup(region="eu", sku="H100-80GB", gpus=8, count=2)],
        deployments=[DeploymentSpec(model="Llama-3-8B", sku="H100-80GB", tp=1, min_replicas=3, max_replicas=3)],
        workload=SyntheticWorkloadConfig(
            seed=6, start_s=12.0, duration_s=400.0, amplitude=0.0,
            streams=(StreamSpec(model="Llama-3-8B", region="eu", base_rps=18.0),),
            prompt_tokens=LengthDistribution(median_tokens=1024, sigma=0.8, max_tokens=6144),
            output_tokens=LengthDistribution(median_tokens=256, sigma=0.7, max_tokens=1536)),
        policy="static", warm_start_s=60.0)
    calm = run_scenario(base)
    host = "eu-h100-80gb-1"  # placement spreads the pool over both hosts: this one holds part of it
    hit = run_scenario(base.model_copy(update={"faults": [
        Fault(kind="spot_preemption", at_s=150.0, host=host, notice_s=notice_s)]}))
    assert any(d["message"] == f"host {host} reclaimed" for d in hit.collector.decisions)
    result = hit.result
    assert result["requests"] == calm.result["requests"]
    assert result["dropped"] == 0 and result["completed"] == result["requests"]
    replaced = (result["cold_starts"] + result["warm_migrations"]) - (calm.result["cold_starts"]
                                                                     + calm.result["warm_migrations"])
    assert replaced >= 1  # the reclaimed host's instances started again on the other host
    if notice_s >= 120.0:
        # Notice longer than a load: the replacements are up before the host goes; nobody notices.
        assert result["slo_attainment"] >= calm.result["slo_attainment"] - 0.01


def test_a_solver_time_out_falls_back_to_a_valid_plan() -> None:
    # The MIP gets a millisecond: every solve ends in the greedy fallback, which still sizes every pool.
    base = builtin_demo_scenario(seed=4, duration_s=900.0, policy="sageserve_mip")
    rushed = run_scenario(base.model_copy(update={"policy_params": {"time_limit_s": 0.001, "interval_s": 120.0}}))
    solves = [d["message"] for d in rushed.collector.decisions if "MIP " in d["message"]]
    assert solves and all("MIP greedy_fallback" in m for m in solves)
    assert not any("MIP optimal" in m or "MIP feasible" in m for m in solves)
    result = rushed.result
    assert result["dropped"] == 0 and result["completed"] == result["requests"]
    assert result["slo_attainment"] > 0.98


def test_requests_orphaned_by_a_vanished_host_are_served_once_elsewhere() -> None:
    # The only instance's host goes without notice: its requests wait at the router for the replacement
    # on the other host. The dead engine must not finish them too (each would count twice).
    base = Scenario(
        name="host lost", seed=8, duration_s=240.0, drain_s=900.0,
        hosts=[HostGroup(region="eu", sku="H100-80GB", gpus=1, count=2)],
        deployments=[DeploymentSpec(model="Llama-3-8B", sku="H100-80GB", tp=1, min_replicas=1, max_replicas=1)],
        workload=SyntheticWorkloadConfig(
            seed=8, start_s=12.0, duration_s=200.0, amplitude=0.0,
            streams=(StreamSpec(model="Llama-3-8B", region="eu", base_rps=4.0),),
            prompt_tokens=LengthDistribution(median_tokens=512, sigma=0.5, max_tokens=2048),
            output_tokens=LengthDistribution(median_tokens=256, sigma=0.5, max_tokens=1024)),
        policy="static", warm_start_s=60.0)
    run = run_scenario(base.model_copy(update={"faults": [
        Fault(kind="spot_preemption", at_s=100.0, host="eu-h100-80gb-1", notice_s=0.0)]}))
    assert any(d["message"] == "host eu-h100-80gb-1 reclaimed" for d in run.collector.decisions)
    result = run.result
    assert result["requests"] == result["requests_submitted"]  # one outcome per request
    assert result["completed"] == result["requests"] and result["dropped"] == 0
