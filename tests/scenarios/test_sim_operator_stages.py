"""Operator-level against model-level scaling in the stage-queue world (`opscale.runtime.sim.operator_stages`,
issue 14 items 5-6): the same requests, objectives, queueing model and accounting for both; nothing is
dropped or counted twice; and a load step is absorbed by operator replicas well before a full replica
of the model could even load."""

from __future__ import annotations

import random

import pytest

from opscale.model import Request, TierSpec
from opscale.perf import default_catalog
from opscale.perf.loading import load_time_s
from opscale.planning.base import DeploymentSpec
from opscale.planning.operators.policy import OperatorScalingPolicy
from opscale.planning.registry import make_planning_policy
from opscale.runtime.sim.operator_stages import StageRunResult, StageWorld

pytestmark = pytest.mark.sim

MODEL, SKU = "Qwen2-7B", "H100-80GB"
TIERS = {"interactive": TierSpec("interactive", ttft_slo_s=1.0, tbt_slo_s=0.1)}
DEPLOYMENT = DeploymentSpec(model=MODEL, sku=SKU, typical_prompt_tokens=2048, typical_output_tokens=16)
LOW_RPS, HIGH_RPS = 5.0, 30.0  # x6 at STEP_S
STEP_S, END_S, UNTIL_S = 30.0, 60.0, 90.0  # arrivals stop at END_S; the rest drains
INTERVAL_S = 1.0  # OpScale's fast loop


def _requests(seed: int) -> list[Request]:
    rng = random.Random(seed)
    out, t = [], 0.0
    while True:
        t += rng.expovariate(LOW_RPS if t < STEP_S else HIGH_RPS)
        if t >= END_S:
            return out
        out.append(Request(f"r{len(out)}", MODEL, "interactive", "eu", t, rng.randint(1536, 2560),
                           rng.randint(8, 24)))


def _run(level: str, seed: int = 5) -> StageRunResult:
    policy = make_planning_policy(f"{level}_level", [DEPLOYMENT], lambda *a, **k: 1.0, tiers=TIERS)
    assert isinstance(policy, OperatorScalingPolicy)
    world = StageWorld(policy, MODEL, region="eu", interval_s=INTERVAL_S, initial_rps=LOW_RPS)
    return world.run(_requests(seed), UNTIL_S)


@pytest.fixture(scope="module")
def runs() -> dict[str, StageRunResult]:
    return {level: _run(level) for level in ("operator", "model")}


def _full_replica_load_s() -> float:
    catalog = default_catalog()
    return load_time_s(catalog.model(MODEL), catalog.sku(SKU), 1, "warm")


@pytest.mark.parametrize("level", ["operator", "model"])
def test_nothing_is_dropped_or_counted_twice(runs: dict[str, StageRunResult], level: str) -> None:
    run = runs[level]
    sent = _requests(5)
    assert run.requests == len(sent)
    assert run.dropped == 0 and run.double_counted == 0
    assert run.completed + run.in_flight == run.requests
    assert run.in_flight == 0  # the drain after the last arrival is long enough
    assert set(run.ttft_s) == set(run.mean_tbt_s) == {r.request_id for r in sent}
    # GPU-hours: at least the floor (one replica of every stage) held for the whole run; energy at
    # least its idle draw
    floor_gpus = min(g for _, g in run.gpu_cost_timeline)
    assert run.gpu_hours >= floor_gpus * UNTIL_S / 3600 * 0.999
    sku = default_catalog().sku(SKU)
    assert run.energy_kwh >= sku.idle_power_w * run.gpu_hours / 1000 * 0.999


def test_the_same_seed_gives_the_same_run() -> None:
    a, b = _run("operator"), _run("operator")
    assert a.ttft_s == b.ttft_s and a.gpu_hours == b.gpu_hours and a.scale_ups == b.scale_ups


def test_a_load_step_is_absorbed_by_operator_replicas_before_a_full_replica_could_load(
        runs: dict[str, StageRunResult]) -> None:
    full_s = _full_replica_load_s()
    op, model = runs["operator"], runs["model"]
    # the first replicas added after the step: operator ones serve within a loop tick or two plus their
    # own load, whole replicas only after the full load
    op_ready = op.first_ready_s(STEP_S, STEP_S + 10 * INTERVAL_S)
    model_ready = model.first_ready_s(STEP_S, STEP_S + 10 * INTERVAL_S)
    assert op_ready is not None and model_ready is not None
    assert op_ready <= INTERVAL_S + 1.0 < full_s <= model_ready
    assert all(e.ready_s - e.added_s < 1.0 for e in op.scale_ups)
    assert all(e.ready_s - e.added_s == pytest.approx(full_s) for e in model.scale_ups)
    # absorbed: after the last TTFT miss, every request is served in time; operator replicas get there
    # before one full replica could have loaded, the model level only after
    assert op.recovered_s(STEP_S, END_S) < full_s < model.recovered_s(STEP_S, END_S)
    # Through the step: the misses are the requests that arrive before the first operator replicas are
    # ready (one loop tick to see the step, then their load); at model level, those until whole ones are
    window = (STEP_S, STEP_S + 15.0)
    assert op.slo_attainment(*window) >= 0.85
    assert op.slo_attainment(*window) >= model.slo_attainment(*window) + 0.1
    assert op.slo_attainment() >= 0.9 > model.slo_attainment()


@pytest.mark.parametrize("level", ["operator", "model"])
def test_gpu_hours_are_the_capacity_held_over_time(runs: dict[str, StageRunResult], level: str) -> None:
    """The GPU-hours charged agree with the GPU-equivalents the loop saw held at each tick (loading
    replicas included), integrated over the run: one accounting for both levels."""
    run = runs[level]
    sampled = sum(g for _, g in run.gpu_cost_timeline) * INTERVAL_S / 3600
    assert run.gpu_hours == pytest.approx(sampled, rel=0.1)


def test_a_one_token_request_finishes_at_its_first_token() -> None:
    policy = make_planning_policy("operator_level", [DEPLOYMENT], lambda *a, **k: 1.0, tiers=TIERS)
    assert isinstance(policy, OperatorScalingPolicy)
    run = StageWorld(policy, MODEL, initial_rps=1.0).run([Request("a", MODEL, "interactive", "sim", 0.5, 512, 1)], 5.0)
    assert run.completed == 1 and run.mean_tbt_s["a"] == 0.0 and 0 < run.ttft_s["a"] < 1.0


def test_the_world_refuses_requests_of_another_model_and_bad_intervals() -> None:
    policy = make_planning_policy("model_level", [DEPLOYMENT], lambda *a, **k: 1.0, tiers=TIERS)
    assert isinstance(policy, OperatorScalingPolicy)
    with pytest.raises(ValueError, match="Llama-3-8B"):
        StageWorld(policy, MODEL).run([Request("a", "Llama-3-8B", "interactive", "sim", 0.5, 512, 4)], 5.0)
    with pytest.raises(ValueError, match="interval_s"):
        StageWorld(policy, MODEL, interval_s=0.0)
