"""`heteroscale` in the simulator: a disaggregated deployment (prefill on H100, decode on H20) under a
rising load. The planner scales both pools together, every plan keeps the P/D ratio within one instance,
the interactive SLO is attained and no request is dropped. Under a dip and a return of the load, the
instances withdrawn at the dip serve again at the return without a new one being started. `pd_hpa`,
the paper's baseline, runs on the rising load too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _sim_scenarios import Phase, write_phased_trace

from opscale.experiments import runner
from opscale.experiments.runner import RunResult
from opscale.experiments.scenario import HostGroup, Scenario, TraceSource
from opscale.model import Role
from opscale.planning import DeploymentSpec
from opscale.planning.base import RolePoolSpec
from opscale.planning.heteroscale.ratio import ratio_error
from opscale.traces import LengthDistribution, StreamSpec, SyntheticWorkloadConfig

pytestmark = pytest.mark.sim

MODEL = "Llama-3-8B"
DURATION_S = 600.0
PD_RATIO = 0.5  # 1:2
# Per-instance decode TPS target: about what one H20 decode instance sustains here with TBT to spare
# (a stress test would find it; the ratio experiment is the place for that).
HETEROSCALE = {"decode_tps_per_instance": 300.0, "pd_ratio": "1:2", "period_s": 15.0, "scale_out_cooldown_s": 30.0,
               "scale_in_cooldown_s": 120.0, "soft_scale_in_s": 60.0}


def _scenario(policy: str, params: dict[str, Any]) -> Scenario:
    # The rate rises over the whole run, from 4 rps to about 7 rps (the first quarter of a sine).
    return Scenario(
        name="P/D ramp", seed=7, duration_s=DURATION_S, drain_s=300.0,
        hosts=[HostGroup(region="eu", sku="H100-80GB", gpus=8, count=1, s0="leaf-1", s1="pod-a", s2="big-1"),
               HostGroup(region="eu", sku="H20", gpus=8, count=2, s0="leaf-2", s1="pod-a", s2="big-1")],
        deployments=[DeploymentSpec(model=MODEL, prefill=RolePoolSpec(sku="H100-80GB", min_replicas=1, max_replicas=8),
                                    decode=RolePoolSpec(sku="H20", min_replicas=1, max_replicas=16))],
        workload=SyntheticWorkloadConfig(
            seed=7, start_s=10.0, duration_s=DURATION_S - 10.0, amplitude=0.8, period_s=4 * DURATION_S,
            streams=(StreamSpec(model=MODEL, region="eu", base_rps=4.0),), tier_weights={"interactive": 1.0},
            prompt_tokens=LengthDistribution(median_tokens=1024, sigma=0.5, max_tokens=4096),
            output_tokens=LengthDistribution(median_tokens=256, sigma=0.5, max_tokens=1024)),
        policy=policy, policy_params=params, warm_start_s=60.0, sample_interval_s=30.0)


Watched = tuple[float, int, int, frozenset[str]]  # at, discoverable prefill and decode, every assigned id


def _run_watched(scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> tuple[RunResult, list[Watched]]:
    """Run `scenario`; also the planner's plan every 5 s."""
    plans: list[Watched] = []
    build = runner.build_world

    def build_and_watch(*args: Any, **kwargs: Any) -> Any:
        world, collector = build(*args, **kwargs)

        def watch(now_s: float) -> None:
            plan = world.planner.plan
            roles = [s.role for s in plan.discoverable().values()]
            plans.append((now_s, roles.count(Role.PREFILL), roles.count(Role.DECODE), frozenset(plan.instances())))

        world.loop.every(5.0, watch, start_s=5.0, until_s=scenario.duration_s)
        return world, collector

    monkeypatch.setattr(runner, "build_world", build_and_watch)
    return runner.run_scenario(scenario), plans


def _run(policy: str, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
         ) -> tuple[RunResult, list[tuple[float, int, int]]]:
    """Run the rising-load scenario; also the planner's discoverable (prefill, decode) split every 5 s."""
    result, plans = _run_watched(_scenario(policy, params), monkeypatch)
    return result, [(t, p, d) for t, p, d, _ in plans]


@pytest.fixture(scope="module")
def heteroscale_run() -> tuple[RunResult, list[tuple[float, int, int]]]:
    with pytest.MonkeyPatch.context() as patch:
        return _run("heteroscale", HETEROSCALE, patch)


def test_both_pools_scale_together_in_ratio_under_rising_load(
        heteroscale_run: tuple[RunResult, list[tuple[float, int, int]]]) -> None:
    _, plans = heteroscale_run
    early = [(p, d) for t, p, d in plans if t < 120.0]
    late = [(p, d) for t, p, d in plans if t > DURATION_S - 60.0]
    assert max(p for p, _ in late) > max(p for p, _ in early)  # prefill grew
    assert max(d for _, d in late) > max(d for _, d in early)  # and decode with it
    for t, p, d in plans:
        assert abs(ratio_error(p, d, PD_RATIO)) < 1, (t, p, d)


def test_the_slo_is_attained_and_no_request_is_dropped(
        heteroscale_run: tuple[RunResult, list[tuple[float, int, int]]]) -> None:
    result = heteroscale_run[0].result
    assert result["requests"] > 2000
    assert result["completed"] == result["requests"] and result["dropped"] == 0
    assert result["slo_attainment"] >= 0.99


def test_pd_hpa_serves_the_same_scenario(monkeypatch: pytest.MonkeyPatch) -> None:
    result, _ = _run("pd_hpa", {"target_util": 0.7}, monkeypatch)
    assert result.result["dropped"] == 0 and result.result["completed"] == result.result["requests"]


def test_instances_withdrawn_at_a_dip_serve_again_at_the_return_without_a_new_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = tmp_path / "dip.csv"
    write_phased_trace(trace, (Phase(10.0, 290.0, 8.0), Phase(300.0, 150.0, 1.5), Phase(450.0, 250.0, 8.0)), seed=3)
    params = {**HETEROSCALE, "decode_tps_per_instance": 200.0, "scale_in_cooldown_s": 60.0,
              "scale_in_step_fraction": 1.0, "soft_scale_in_s": 240.0}
    scenario = _scenario("heteroscale", params).model_copy(update={
        "duration_s": 700.0, "workload": None, "trace": TraceSource(path=trace), "seed": 3})
    result, plans = _run_watched(scenario, monkeypatch)
    assert result.result["dropped"] == 0
    at = {t: (p + d, ids) for t, p, d, ids in plans}
    serving_before, ids_before = at[440.0]  # the end of the dip: most instances withdrawn, still assigned
    serving_after, ids_after = at[500.0]  # the load is back
    assert len(ids_before) >= 2 * serving_before
    assert serving_after >= serving_before + 4
    assert ids_after == ids_before  # the withdrawn ones serve again: none new was placed or loaded
