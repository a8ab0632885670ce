"""Chiron-style scaling on hand-built observations: the mixed/batch split of the global autoscaler, the
local autoscaler's batch factor, and scale-down stabilisation."""

from __future__ import annotations

import math

import pytest

from opscale.model import Observation, PoolKey, PoolObservation, TierSpec
from opscale.planning import DeploymentSpec, make_planning_policy
from opscale.planning.chiron import ChironConfig, ChironPolicy, local_batch_factor, size_pools

pytestmark = pytest.mark.unit

KEY = PoolKey("m", "eu")
DEP = DeploymentSpec(model="m", sku="H100-80GB", min_replicas=1, max_replicas=32)


def five_rps(*_: object) -> float:
    return 5.0


def obs(rps: float, ready: int, *, queued: int = 0, loading: int = 0, tbt_p99_s: float | None = None) -> Observation:
    pool = PoolObservation(KEY, ready=ready, loading=loading, arrival_rps=rps, prompt_tokens_per_s=rps * 1000,
                           output_tokens_per_s=rps * 100, queued=queued, tbt_p99_s=tbt_p99_s)
    return Observation(0.0, {KEY: pool})


def test_batch_is_absorbed_by_the_mixed_share_when_there_is_room() -> None:
    sizing = size_pools(10.0, 0, 5.0, ChironConfig())  # the docstring's example
    assert (sizing.mixed, sizing.batch) == (3, 0)
    assert sizing.absorbed_rps == pytest.approx(2.0)


def test_batch_beyond_the_mixed_room_is_deferred_until_its_drain_time_passes_the_deadline() -> None:
    cfg = ChironConfig(interactive_fraction=0.5, batch_deadline_s=3600.0)
    # 10 interactive rps need 4 mixed instances (3 rps each at 0.6); room up to 0.9: 18 - 10 = 8 rps
    sizing = size_pools(20.0, 0, 5.0, cfg)
    assert sizing.mixed == 4
    assert sizing.batch == 1  # 10 batch rps > 8 rps of room: drain time over the deadline
    assert sizing.drain_s > 3600.0
    # a backlog that drains within the deadline on the room needs no batch instance
    relaxed = size_pools(8.0, 1000, 5.0, cfg)  # 4 + 4: 2 mixed, room 9 - 4 = 5 rps > 4 + 1000 / 3600
    assert relaxed.batch == 0
    assert relaxed.drain_s <= 3600.0


def test_a_large_backlog_adds_batch_instances() -> None:
    cfg = ChironConfig(interactive_fraction=1.0, batch_deadline_s=100.0)
    sizing = size_pools(3.0, 5000, 5.0, cfg)  # 1 mixed, room 1.5 rps; 5000 queued in 100 s needs 50 rps
    assert sizing.mixed == 1
    assert sizing.batch == math.ceil((50.0 - 1.5) / (5.0 * 0.95))


def test_local_autoscaler_halves_on_a_breach_and_grows_with_slack() -> None:
    cfg = ChironConfig()
    assert local_batch_factor(1.0, 0.2, 0.1, cfg) == 0.5
    assert local_batch_factor(0.3, 0.2, 0.1, cfg) == cfg.min_batch_factor
    assert local_batch_factor(0.5, 0.05, 0.1, cfg) == pytest.approx(0.6)
    assert local_batch_factor(0.5, 0.09, 0.1, cfg) == 0.5  # within the slack band: unchanged
    assert local_batch_factor(0.5, None, 0.1, cfg) == 0.5


def test_the_tbt_objective_is_the_tiers() -> None:
    relaxed = {"interactive": TierSpec("interactive", ttft_slo_s=2.0, tbt_slo_s=0.5)}
    policy = make_planning_policy("chiron", [DEP], five_rps, tiers=relaxed, interactive_fraction=1.0)
    state = policy.decide(obs(6.0, 2), policy.initial_state(), 0.0).state
    kept = policy.decide(obs(6.0, 2, tbt_p99_s=0.3), state, 10.0)  # 0.3 s breaches 0.1 s, not 0.5 s
    assert kept.desired[KEY] == 2 and "batch factor 1.00" in kept.reasons[KEY]
    with pytest.raises(ValueError, match=r"tbt_slo_s \(got 0.1\) is not a policy parameter.*tiers"):
        make_planning_policy("chiron", [DEP], five_rps, tbt_slo_s=0.1)


def test_policy_plans_more_instances_after_a_tbt_breach() -> None:
    policy = ChironPolicy([DEP], five_rps, ChironConfig(interactive_fraction=1.0))
    calm = policy.decide(obs(6.0, 2), policy.initial_state(), 0.0)
    assert calm.desired[KEY] == 2  # 6 / (5 x 0.6)
    breached = policy.decide(obs(6.0, 2, tbt_p99_s=0.3), calm.state, 10.0)
    assert breached.desired[KEY] == 4  # capacity halved by the local autoscaler
    assert "batch factor 0.50" in breached.reasons[KEY]


def test_scale_down_waits_for_the_stabilisation_window_and_for_loading() -> None:
    policy = ChironPolicy([DEP], five_rps, ChironConfig(interactive_fraction=1.0, down_window_s=60.0))
    state = policy.decide(obs(12.0, 4), policy.initial_state(), 0.0).state
    held = policy.decide(obs(3.0, 4), state, 30.0)
    assert held.desired[KEY] == 4
    assert held.reasons[KEY].startswith("hold")
    loading = policy.decide(obs(3.0, 3, loading=1), held.state, 100.0)
    assert loading.desired[KEY] == 4
    down = policy.decide(obs(3.0, 4), held.state, 100.0)
    assert down.desired[KEY] == 1
    assert down.reasons[KEY].startswith("scale down")


def test_cold_start_and_bounds() -> None:
    spec = DeploymentSpec(model="m", sku="H100-80GB", min_replicas=0, max_replicas=3)
    policy = ChironPolicy([spec], five_rps)
    assert policy.decide(obs(0.0, 0, queued=2), policy.initial_state(), 0.0).desired[KEY] == 1
    assert policy.decide(obs(100.0, 1), policy.initial_state(), 0.0).desired[KEY] == 3


def test_registry_and_config_errors() -> None:
    assert make_planning_policy("chiron", [DEP], five_rps).name == "chiron"
    with pytest.raises(ValueError, match="interactive_fraction"):
        make_planning_policy("chiron", [DEP], five_rps, interactive_fraction=1.5)
    with pytest.raises(ValueError, match="capacity_rps"):
        size_pools(1.0, 0, 0.0, ChironConfig())
