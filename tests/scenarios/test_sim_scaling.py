"""Scaling behaviour of the whole control plane in simulation: capacity follows a load step up and
down, scale-in drains instead of dropping, a pool scales from zero with its first requests waiting
at the router, and reactive scaling beats static peak provisioning on GPU-hours at the same SLO."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from _sim_scenarios import (
    MODEL,
    POOL,
    REGION,
    SKU,
    Phase,
    RecordingCollector,
    one_pool_scenario,
    ready_series,
    write_phased_trace,
)

from opscale.experiments import runner
from opscale.experiments.runner import RunResult, run_scenario
from opscale.experiments.scenario import HostGroup, Scenario
from opscale.model import DEFAULT_TIERS, latency_objective
from opscale.perf import default_catalog
from opscale.planning import DeploymentSpec
from opscale.planning.capacity import CapacityEstimator
from opscale.planning.reactive import ReactiveConfig
from opscale.traces import LengthDistribution, StreamSpec, SyntheticWorkloadConfig

pytestmark = pytest.mark.sim

# Low load, four times that, then low again for long enough that the planner's scale-down delays and
# stabilisation window (minutes) have passed. 6 rps is under one instance's capacity (~13 rps here).
LOW_RPS = 6.0
HIGH = Phase(300.0, 300.0, 4 * LOW_RPS)
STEP_PHASES = (Phase(10.0, 290.0, LOW_RPS), HIGH, Phase(600.0, 900.0, LOW_RPS))
STEP_END_S = 1500.0


@pytest.fixture(scope="module")
def step_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, RecordingCollector]:
    trace = tmp_path_factory.mktemp("step") / "step.csv"
    write_phased_trace(trace, STEP_PHASES, seed=11)
    scenario = one_pool_scenario(trace, STEP_END_S, name="load step x4", seed=11)
    with pytest.MonkeyPatch.context() as patch:
        # the runner's own collector, extended to also record per-instance completions and stops
        patch.setattr(runner, "RunCollector", RecordingCollector)
        run = run_scenario(scenario)
    assert isinstance(run.collector, RecordingCollector)
    return run, run.collector


def test_capacity_follows_a_load_step(step_run: tuple[RunResult, RecordingCollector]) -> None:
    run, _ = step_run
    series = ready_series(run)
    high_end_s = HIGH.start_s + HIGH.duration_s
    # the trace really steps: arrivals per sample interval in the high phase are about 4x the low ones
    arrivals = {p.at_s: p.arrivals_per_min.get(POOL, 0) for p in run.collector.timeline}
    low_arrivals = [n for t, n in arrivals.items() if 60 < t <= HIGH.start_s]
    high_arrivals = [n for t, n in arrivals.items() if HIGH.start_s + 30 < t <= high_end_s]
    assert min(high_arrivals) > 2.5 * max(low_arrivals)

    before = max(n for t, n in series if t <= HIGH.start_s)
    during = max(n for t, n in series if HIGH.start_s < t <= high_end_s)
    first_rise_s = min(t for t, n in series if t > HIGH.start_s and n > before)
    final = series[-1][1]
    assert during > before, series
    assert first_rise_s <= high_end_s, "capacity must rise while the load is high, not after"
    assert final < max(n for _, n in series), f"capacity never fell after the high phase: {series}"
    assert run.result["dropped"] == 0
    assert run.result["completed"] == run.result["requests"] > 10_000


def test_scale_in_drains_instead_of_dropping(step_run: tuple[RunResult, RecordingCollector]) -> None:
    run, collector = step_run
    end_s = run.result["simulated_s"]
    scale_downs = [d for d in collector.decisions if d["service"] == "planner" and "scale down" in d["message"]]
    assert scale_downs, "the planner never scaled in"
    # instances stopped before the end of the run, having served traffic: the ones scale-in removed
    removed = {iid: st for iid, st in collector.stopped.items() if st.at_s < end_s and st.finished > 0}
    assert removed, f"no serving instance was removed: {collector.stopped}"
    for instance_id, stopped in removed.items():
        assert (stopped.queued, stopped.running) == (0, 0), f"{instance_id} stopped with work on it"
        assert collector.completed_on.get(instance_id, 0) == stopped.finished, instance_id
    assert not [d for d in collector.decisions if "drain deadline" in d["message"]]
    assert run.result["dropped"] == 0


def test_cold_start_from_zero_serves_every_request(tmp_path: Path) -> None:
    trace = tmp_path / "cold.csv"
    requests = write_phased_trace(trace, [Phase(30.0, 240.0, 4.0)], seed=21)
    scenario = one_pool_scenario(trace, 270.0, name="cold start from zero", seed=21, min_replicas=0,
                                 start_provisioned=False, sample_interval_s=10.0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "RunCollector", RecordingCollector)
        run = run_scenario(scenario)
    collector = run.collector
    assert isinstance(collector, RecordingCollector)
    result = run.result
    series = ready_series(run)
    assert all(n == 0 for t, n in series if t <= 30.0), "nothing may run before the first request"
    cold = [d for d in collector.decisions if d["service"] == "planner" and "cold start" in d["message"]]
    assert cold, "the planner never took the cold-start path"
    # the first requests waited for a cold load (tens of seconds): their TTFT shows it
    assert result["ttft_p99_s"] > 10.0
    assert result["requests"] == requests
    not_ok = sorted(rid for rid, status in collector.status_of.items() if status != "ok")
    statuses = {collector.status_of[rid] for rid in not_ok}
    assert result["dropped"] == 0, (f"{result['dropped']} of {requests} requests dropped while scaling from "
                                    f"zero (statuses {statuses}; first {not_ok[:3]})")
    assert result["completed"] == requests


# A compressed day (one hour) of diurnal load on one pool, starting at its trough. Long answers keep
# one instance's capacity low, so the peak needs several instances with few simulated requests.
DAY_S = 3600.0
DAY_BASE_RPS = 5.0
DAY_AMPLITUDE = 0.7
DAY_PROMPT = LengthDistribution(median_tokens=512, sigma=0.8, max_tokens=4096)
DAY_OUTPUT = LengthDistribution(median_tokens=1024, sigma=0.7, max_tokens=3072)


def _day(policy: str, params: dict[str, object]) -> Scenario:
    return Scenario(
        name=f"compressed day, {policy}", seed=5, duration_s=DAY_S,
        hosts=[HostGroup(region=REGION, sku=SKU, gpus=8, count=1)],
        deployments=[DeploymentSpec(model=MODEL, sku=SKU, tp=1, min_replicas=1, max_replicas=8,
                                    typical_prompt_tokens=DAY_PROMPT.median_tokens,
                                    typical_output_tokens=DAY_OUTPUT.median_tokens)],
        workload=SyntheticWorkloadConfig(
            seed=5, start_s=10.0, duration_s=DAY_S - 10.0, amplitude=DAY_AMPLITUDE, period_s=DAY_S,
            region_phase_s={REGION: 0.75 * DAY_S - 10.0},  # sin = -1 at the first arrival: the trough
            streams=(StreamSpec(model=MODEL, region=REGION, base_rps=DAY_BASE_RPS),),
            prompt_tokens=DAY_PROMPT, output_tokens=DAY_OUTPUT),
        policy=policy, policy_params=params, sample_interval_s=120.0)


def _peak_replicas() -> int:
    """What static provisioning for the peak needs: the peak rate over one instance's modelled
    capacity at the reactive policy's own target utilisation (the same sizing rule, held all day)."""
    mean_prompt = DAY_PROMPT.median_tokens * math.exp(DAY_PROMPT.sigma ** 2 / 2)  # lognormal mean
    mean_output = DAY_OUTPUT.median_tokens * math.exp(DAY_OUTPUT.sigma ** 2 / 2)
    capacity_rps = CapacityEstimator(default_catalog(), latency_objective(DEFAULT_TIERS).tbt_slo_s)(
        MODEL, SKU, 1, mean_prompt, mean_output)
    peak_rps = DAY_BASE_RPS * (1 + DAY_AMPLITUDE)
    return math.ceil(peak_rps / (capacity_rps * ReactiveConfig().target_util))


def test_reactive_uses_fewer_gpu_hours_than_static_peak_provisioning() -> None:
    replicas = _peak_replicas()
    assert replicas >= 3  # otherwise there is little to save
    static = run_scenario(_day("static", {"replicas": replicas})).result
    reactive = run_scenario(_day("reactive", {})).result
    assert static["requests"] == reactive["requests"]  # same seed, same trace
    assert static["dropped"] == reactive["dropped"] == 0
    static_slo = static["tiers"]["interactive"]["slo_attainment"]
    reactive_slo = reactive["tiers"]["interactive"]["slo_attainment"]
    assert static_slo >= 0.95, "static provisioning must really cover the peak"
    assert reactive_slo >= static_slo - 0.03
    assert reactive["gpu_hours"] < 0.95 * static["gpu_hours"], (reactive["gpu_hours"], static["gpu_hours"])
