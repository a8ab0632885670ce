"""Soft scale-in as a pure step before placement: which instances are withdrawn, restored or let go."""

from __future__ import annotations

import pytest

from opscale.model import InstanceSpec, InstanceState, PoolKey, Role
from opscale.planning.soft_scale_in import soft_scale_in

pytestmark = pytest.mark.unit

KEY = PoolKey("m", "eu", Role.DECODE)
REGIONS = {"a": "eu", "b": "eu"}


def spec(seq: int) -> InstanceSpec:
    return InstanceSpec(f"m-eu-decode-{seq:05d}", "m", "H20", 1, Role.DECODE)


def fleet(*seqs: int) -> dict[str, tuple[InstanceSpec, ...]]:
    """Odd sequence numbers on agent a, even ones on b."""
    return {"a": tuple(spec(s) for s in seqs if s % 2), "b": tuple(spec(s) for s in seqs if not s % 2)}


READY = {spec(s).instance_id: InstanceState.READY for s in range(1, 10)}


def test_a_scale_in_withdraws_the_newest_ready_instances_and_keeps_them_assigned() -> None:
    out = soft_scale_in({KEY: 2}, fleet(1, 2, 3, 4), REGIONS, READY, {}, 60.0, 100.0)
    assert set(out.withdrawn) == {spec(4).instance_id, spec(3).instance_id}
    assert set(out.withdrawn.values()) == {100.0}
    assert out.desired == {KEY: 4} and out.assignments == fleet(1, 2, 3, 4)  # placement removes nothing


def test_instances_still_loading_are_given_up_first_not_withdrawn() -> None:
    states = {**READY, spec(4).instance_id: InstanceState.LOADING}
    out = soft_scale_in({KEY: 2}, fleet(1, 2, 3, 4), REGIONS, states, {}, 60.0, 100.0)
    assert set(out.withdrawn) == {spec(3).instance_id}
    assert out.desired == {KEY: 3}  # 4 assigned, 3 kept: placement removes the loading one


def test_wanted_back_the_most_recently_withdrawn_is_restored_before_anything_is_placed() -> None:
    withdrawn = {spec(4).instance_id: 50.0, spec(3).instance_id: 80.0}
    out = soft_scale_in({KEY: 3}, fleet(1, 2, 3, 4), REGIONS, READY, withdrawn, 60.0, 100.0)
    assert out.restored == (spec(3).instance_id,) and set(out.withdrawn) == {spec(4).instance_id}
    assert out.desired == {KEY: 4}
    out = soft_scale_in({KEY: 6}, fleet(1, 2, 3, 4), REGIONS, READY, withdrawn, 60.0, 100.0)
    assert out.withdrawn == {} and out.desired == {KEY: 6}  # both restored, two more to place


def test_after_the_window_a_withdrawn_instance_is_unassigned_unless_wanted_back() -> None:
    withdrawn = {spec(4).instance_id: 30.0}
    out = soft_scale_in({KEY: 3}, fleet(1, 2, 3, 4), REGIONS, READY, withdrawn, 60.0, 100.0)
    assert out.expired == (spec(4).instance_id,) and out.withdrawn == {}
    assert spec(4) not in out.assignments["b"] and out.desired == {KEY: 3}
    # Past its window but still running: wanted now, it is restored rather than replaced.
    out = soft_scale_in({KEY: 4}, fleet(1, 2, 3, 4), REGIONS, READY, withdrawn, 60.0, 100.0)
    assert out.restored == (spec(4).instance_id,) and spec(4) in out.assignments["b"]


def test_a_zero_window_withdraws_nothing_and_lets_every_withdrawn_instance_go() -> None:
    out = soft_scale_in({KEY: 2}, fleet(1, 2, 3, 4), REGIONS, READY, {spec(4).instance_id: 99.0}, 0.0, 100.0)
    assert out.withdrawn == {} and out.desired == {KEY: 2}
    assert spec(4) not in out.assignments["b"]


def test_an_instance_no_longer_assigned_is_no_longer_withdrawn() -> None:
    out = soft_scale_in({KEY: 2}, fleet(1, 2), REGIONS, READY, {spec(7).instance_id: 99.0}, 60.0, 100.0)
    assert out.withdrawn == {}
