"""Operator-level deployments in the whole simulated control plane (issue 14 items 6-7): `operator_level`
runs one base instance plus elastic operator replicas through the planner, the node-agents and the
engines, with the same accounting as `model_level`. On a fixed-seed load step: the SLO is attained,
nothing is dropped or counted twice, capacity follows load through operator replicas that serve
about a second after they are added (a whole replica would take several), and the replicas' GPUs and
energy are in the run's figures once."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from opscale.engine import SimEngine
from opscale.engine.config import EngineConfig
from opscale.experiments import runner
from opscale.experiments.collector import RunCollector
from opscale.experiments.runner import RunResult, run_scenario
from opscale.experiments.scenario import HostGroup, Scenario, TraceSource
from opscale.model import OperatorReplicas
from opscale.perf import default_catalog
from opscale.perf.loading import load_time_s
from opscale.planning import DeploymentSpec
from opscale.services.planner import PlannerConfig
from opscale.traces import (
    LengthDistribution,
    StreamSpec,
    SyntheticWorkloadConfig,
    generate_requests,
    write_csv_trace,
)

pytestmark = pytest.mark.sim

MODEL, SKU, REGION = "Qwen2-7B", "H100-80GB", "eu"
LOW_RPS, HIGH_RPS = 5.0, 25.0
STEP_S, STEP_END_S, END_S = 60.0, 120.0, 180.0


class ReplicaRecorder(RunCollector):
    """The runner's collector, also keeping every change of an engine's operator replicas:
    (time, instance, replicas holding GPUs, replicas serving)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.changes: list[tuple[float, str, int, int]] = []

    def operator_replicas(self, instance_id: str, serving: tuple[OperatorReplicas, ...],
                          provisioned: tuple[OperatorReplicas, ...], engine: SimEngine, now_s: float) -> None:
        super().operator_replicas(instance_id, serving, provisioned, engine, now_s)
        assert engine.operator_replicas == serving, "the engine runs with what serves"
        self.changes.append((now_s, instance_id, sum(r.replicas for r in provisioned),
                             sum(r.replicas for r in serving)))


def _trace(path: Path) -> int:
    def phase(start_s: float, duration_s: float, rps: float, seed: int):  # type: ignore[no-untyped-def]
        return generate_requests(SyntheticWorkloadConfig(
            seed=seed, start_s=start_s, duration_s=duration_s, amplitude=0.0,
            streams=(StreamSpec(model=MODEL, region=REGION, base_rps=rps),), tier_weights={"interactive": 1.0},
            prompt_tokens=LengthDistribution(median_tokens=2048, sigma=0.3, max_tokens=4096),
            output_tokens=LengthDistribution(median_tokens=16, sigma=0.3, max_tokens=32)))
    return write_csv_trace(path, itertools.chain(phase(1.0, STEP_S - 1.0, LOW_RPS, 1),
                                                 phase(STEP_S, STEP_END_S - STEP_S, HIGH_RPS, 2),
                                                 phase(STEP_END_S, END_S - STEP_END_S, LOW_RPS, 3)))


def _run(policy: str, trace: Path) -> RunResult:
    scenario = Scenario(
        name=f"{policy} load step", seed=5, duration_s=END_S, drain_s=60.0,
        hosts=[HostGroup(region=REGION, sku=SKU, gpus=8, count=1)],
        deployments=[DeploymentSpec(model=MODEL, sku=SKU, tp=1, min_replicas=1, max_replicas=8,
                                    typical_prompt_tokens=2048, typical_output_tokens=16)],
        trace=TraceSource(path=trace), policy=policy,
        planner=PlannerConfig(interval_s=1.0, demand_window_s=5.0),  # OpScale's 1 s loop
        engine=EngineConfig(emit_tokens=False, max_batched_tokens=4096), sample_interval_s=5.0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "RunCollector", ReplicaRecorder)
        return run_scenario(scenario)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, RunResult]]:
    trace = tmp_path_factory.mktemp("operator_step") / "step.csv"
    n = _trace(trace)
    return n, {policy: _run(policy, trace) for policy in ("operator_level", "model_level")}


@pytest.mark.parametrize("policy", ["operator_level", "model_level"])
def test_every_request_is_counted_once_and_none_is_dropped(runs: tuple[int, dict[str, RunResult]],
                                                           policy: str) -> None:
    n, by_policy = runs
    result = by_policy[policy].result
    assert result["requests"] == result["requests_submitted"] == n
    assert result["requests"] == result["completed"] + result["dropped"]
    assert result["dropped"] == 0
    assert result["slo_attainment"] >= 0.99


def test_operator_level_runs_one_base_instance_and_scales_operator_replicas_with_load(
        runs: tuple[int, dict[str, RunResult]]) -> None:
    _, by_policy = runs
    run = by_policy["operator_level"]
    timeline = run.collector.timeline
    assert {p.gpus for p in timeline} == {1}, "the base instance is the floor; no whole replica is added"

    def mean_replica_gpus(start_s: float, end_s: float) -> float:
        window = [p.operator_gpus for p in timeline if start_s < p.at_s <= end_s]
        return sum(window) / len(window)
    low, high = mean_replica_gpus(10.0, STEP_S), mean_replica_gpus(STEP_S + 5.0, STEP_END_S)
    after = mean_replica_gpus(STEP_END_S + 10.0, END_S)
    # The base stands for only part of a replica of every stage (the plan's floor is more than its GPU:
    # `base_cover`), so some replicas are held at low load too; the step adds most of a GPU more.
    assert high - low > 0.5, (low, high)
    assert high - after > 0.5, (high, after)


def test_operator_replicas_serve_about_a_second_after_they_are_added(runs: tuple[int, dict[str, RunResult]]) -> None:
    _, by_policy = runs
    collector = by_policy["operator_level"].collector
    assert isinstance(collector, ReplicaRecorder)
    # For each addition (more replicas holding GPUs), how long until as many serve.
    waits = []
    for i, (at_s, instance, provisioned, serving) in enumerate(collector.changes):
        before = next((c[2] for c in reversed(collector.changes[:i]) if c[1] == instance), 0)
        if provisioned > before and serving < provisioned:
            ready = next((c[0] for c in collector.changes[i + 1:] if c[1] == instance and c[3] >= provisioned), None)
            if ready is not None:
                waits.append(ready - at_s)
    assert waits, "the step adds operator replicas that load"
    catalog = default_catalog()
    full_replica_s = load_time_s(catalog.model(MODEL), catalog.sku(SKU), 1, "warm")
    assert max(waits) <= 1.5 and max(waits) < full_replica_s / 3, (max(waits), full_replica_s)


def test_operator_replicas_are_in_gpu_hours_cost_and_energy(runs: tuple[int, dict[str, RunResult]]) -> None:
    _, by_policy = runs
    operator, model = by_policy["operator_level"].result, by_policy["model_level"].result
    assert 0 < operator["operator_replica_gpu_hours"] < operator["gpu_hours"]
    # Replicas loading hold GPUs too: the seconds they load, at their GPU-equivalents (a model-level run
    # starting provisioned loads nothing unless it scales out).
    assert operator["scaling_gpu_s"] > 0
    by_operator = operator["energy_kwh_by_operator"]
    assert set(by_operator) >= {"base", "mlp"}
    assert sum(by_operator.values()) == pytest.approx(operator["energy_kwh"])
    assert "energy_kwh_by_operator" not in model and "operator_replica_gpu_hours" not in model
    # The same requests served; the replicas' GPU-hours are in the run's and its pool's figures, once.
    # (Whether that is fewer than model level's is the experiment's question, not this test's: with
    # replicas that pipeline micro-batches beside a time-shared base it is not, README "operators".)
    assert operator["requests"] == model["requests"] and operator["completed"] == model["completed"]
    for figure in ("gpu_hours", "energy_kwh"):
        assert operator[figure] == pytest.approx(sum(p[figure] for p in operator["pools"].values())), figure
