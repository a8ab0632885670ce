"""`pd_hpa`, HeteroScale's baseline: a Kubernetes HPA per pool on GPU utilisation (time busy)."""

from __future__ import annotations

import pytest

from opscale.model import Observation, PoolKey, PoolObservation, Role
from opscale.planning import DeploymentSpec, make_planning_policy
from opscale.planning.base import PlanningPolicy, RolePoolSpec

pytestmark = pytest.mark.unit

PREFILL, DECODE = PoolKey("m", "eu", Role.PREFILL), PoolKey("m", "eu", Role.DECODE)
DEP = DeploymentSpec(model="m", prefill=RolePoolSpec(sku="H100-80GB", min_replicas=1, max_replicas=20),
                     decode=RolePoolSpec(sku="H20", min_replicas=1, max_replicas=20))


def _rps(*_: object, **__: object) -> float:
    return 1.0


def hpa(**params: object) -> PlanningPolicy:
    return make_planning_policy("pd_hpa", [DEP], _rps, **params)


def observe(prefill: PoolObservation, decode: PoolObservation) -> Observation:
    return Observation(0.0, {PREFILL: prefill, DECODE: decode})


def test_each_pool_scales_on_its_own_utilisation_like_kubernetes() -> None:
    pol = hpa(target_util=0.6)
    obs = observe(PoolObservation(PREFILL, ready=2, busy_frac=0.3), PoolObservation(DECODE, ready=4, busy_frac=0.9))
    effects = pol.decide(obs, pol.initial_state(), 0.0)
    assert effects.desired[DECODE] == 6  # ceil(4 x 0.9 / 0.6)
    assert effects.desired[PREFILL] == 2  # a scale-down waits for its stabilisation window


def test_within_the_tolerance_nothing_changes() -> None:
    pol = hpa(target_util=0.6)
    obs = observe(PoolObservation(PREFILL, ready=3, busy_frac=0.65), PoolObservation(DECODE, ready=3, busy_frac=0.55))
    assert pol.decide(obs, pol.initial_state(), 0.0).desired == {PREFILL: 3, DECODE: 3}


def test_a_scale_down_takes_the_highest_recommendation_of_its_window() -> None:
    pol = hpa(target_util=0.6, scale_down_window_s=300.0)
    state = pol.initial_state()
    for t, util in ((0.0, 0.6), (100.0, 0.3), (200.0, 0.3)):
        obs = observe(PoolObservation(PREFILL, ready=4, busy_frac=util), PoolObservation(DECODE, ready=4, busy_frac=0.6))
        effects = pol.decide(obs, state, t)
        state = effects.state
        assert effects.desired[PREFILL] == 4  # the 0 s recommendation (4) is still in the window
    obs = observe(PoolObservation(PREFILL, ready=4, busy_frac=0.3), PoolObservation(DECODE, ready=4, busy_frac=0.6))
    assert pol.decide(obs, state, 301.0).desired[PREFILL] == 2


def test_loading_instances_neither_push_a_scale_up_nor_excuse_a_scale_down() -> None:
    pol = hpa(target_util=0.5)
    obs = observe(PoolObservation(PREFILL, ready=2, loading=2, busy_frac=0.8),
                  PoolObservation(DECODE, ready=2, loading=2, busy_frac=0.1))
    effects = pol.decide(obs, pol.initial_state(), 0.0)
    assert effects.desired[PREFILL] == 4  # 2 x 0.8 over 4 instances is 0.4: no scale-up beyond what loads
    assert effects.desired[DECODE] == 4  # counted busy, the loading ones keep the pool from shrinking


def test_scale_up_is_limited_and_bounded_and_a_cold_pool_starts() -> None:
    pol = hpa(target_util=0.1)
    obs = observe(PoolObservation(PREFILL, ready=0, queued=4), PoolObservation(DECODE, ready=10, busy_frac=1.0))
    effects = pol.decide(obs, pol.initial_state(), 0.0)
    assert effects.desired == {PREFILL: 1, DECODE: 20}  # double at most, and max_replicas 20


def test_bad_parameters_name_the_field() -> None:
    with pytest.raises(ValueError, match="pd_hpa.*target_util"):
        hpa(target_util=0)
