"""Failures injected into a simulated run (fixed seed): the control plane must ride them out."""

from __future__ import annotations

import pytest

from opscale.experiments.runner import RunResult, run_scenario
from opscale.experiments.scenario import Fault, builtin_demo_scenario

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
