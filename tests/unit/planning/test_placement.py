"""Placement of desired replica counts onto hosts: minimal change, warm hosts first, shortfalls reported."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.model import InstanceSpec, InstanceState, PoolKey
from opscale.planning import DeploymentSpec
from opscale.planning.placement import AgentSlot, place, prestage

pytestmark = pytest.mark.unit

DEPLOYMENTS = {
    "small": DeploymentSpec(model="small", sku="L40S", tp=1),
    "big": DeploymentSpec(model="big", sku="L40S", tp=4),
}


def hosts(*warm: frozenset[str], gpus: int = 8) -> list[AgentSlot]:
    return [AgentSlot(f"h{i}", "r", "L40S", gpus, w) for i, w in enumerate(warm)]


def members(assignments: dict[str, tuple[InstanceSpec, ...]], model: str) -> dict[str, int]:
    return {a: sum(1 for s in specs if s.model == model) for a, specs in assignments.items()
            if any(s.model == model for s in specs)}


def test_scale_out_prefers_a_host_that_holds_the_weights() -> None:
    agents = hosts(frozenset(), frozenset({"big"}), frozenset())
    result = place({PoolKey("big", "r"): 1}, {}, agents, DEPLOYMENTS, {}, 1)
    assert members(result.assignments, "big") == {"h1": 1}


def test_without_warm_hosts_the_emptiest_host_is_used() -> None:
    agents = hosts(frozenset(), frozenset(), frozenset())
    current = {"h0": (InstanceSpec("small-r-00001", "small", "L40S", 1),)}
    result = place({PoolKey("small", "r"): 1, PoolKey("big", "r"): 1}, current, agents, DEPLOYMENTS, {}, 2)
    assert members(result.assignments, "big") == {"h1": 1}
    assert members(result.assignments, "small") == {"h0": 1}  # the existing instance stays where it is


def test_warm_hosts_fill_before_a_cold_one_is_touched() -> None:
    agents = hosts(frozenset({"big"}), frozenset(), frozenset({"big"}))
    result = place({PoolKey("big", "r"): 4}, {}, agents, DEPLOYMENTS, {}, 1)
    assert members(result.assignments, "big") == {"h0": 2, "h2": 2}
    assert result.unplaced == {}


def test_scale_in_removes_loading_instances_then_the_newest() -> None:
    specs = tuple(InstanceSpec(f"small-r-0000{i}", "small", "L40S", 1) for i in (1, 2, 3))
    states = {"small-r-00001": InstanceState.READY, "small-r-00002": InstanceState.LOADING,
              "small-r-00003": InstanceState.READY}
    result = place({PoolKey("small", "r"): 1}, {"h0": specs}, hosts(frozenset()), DEPLOYMENTS, states, 4)
    assert [s.instance_id for s in result.assignments["h0"]] == ["small-r-00001"]


def test_what_does_not_fit_is_reported() -> None:
    result = place({PoolKey("big", "r"): 3}, {}, hosts(frozenset()), DEPLOYMENTS, {}, 1)
    assert sum(members(result.assignments, "big").values()) == 2
    assert result.unplaced == {PoolKey("big", "r"): 1}


@settings(max_examples=200, deadline=None)
@given(warm=st.lists(st.sets(st.sampled_from(["small", "big"])), min_size=1, max_size=5),
       small=st.integers(0, 12), big=st.integers(0, 6))
def test_never_overcommits_and_places_or_reports_every_instance(warm: list[set[str]], small: int,
                                                                  big: int) -> None:
    agents = hosts(*(frozenset(w) for w in warm))
    desired = {PoolKey("small", "r"): small, PoolKey("big", "r"): big}
    result = place(desired, {}, agents, DEPLOYMENTS, {}, 1)
    for agent in agents:
        assert sum(s.gpus for s in result.assignments[agent.agent_id]) <= agent.gpus_total
    for key, want in desired.items():
        placed = sum(members(result.assignments, key.model).values())
        assert placed + result.unplaced.get(key, 0) == want


def test_prestage_names_the_hosts_a_growth_would_land_on() -> None:
    # h0 runs one big instance (warm, 4 GPUs free); growth to 3 fills h0, then needs a cold host: h1
    agents = hosts(frozenset({"big"}), frozenset(), frozenset())
    current = {"h0": (InstanceSpec("big-r-00001", "big", "L40S", 4),)}
    assert prestage({PoolKey("big", "r"): 3}, current, agents, DEPLOYMENTS) == {"h1": ("big",)}
    # no growth beyond what runs, or growth onto warm hosts only: nothing to stage
    assert prestage({PoolKey("big", "r"): 1}, current, agents, DEPLOYMENTS) == {}
    assert prestage({PoolKey("big", "r"): 2}, current, agents, DEPLOYMENTS) == {}


def test_prestage_puts_a_second_extra_instance_beside_the_first() -> None:
    # two more small instances: one staged host takes both, not two hosts one each
    agents = hosts(frozenset(), frozenset())
    assert prestage({PoolKey("small", "r"): 2}, {}, agents, DEPLOYMENTS) == {"h0": ("small",)}


def test_a_base_goes_where_its_share_of_the_pool_s_operator_replicas_fits_beside_it() -> None:
    """An operator-level pool's new instances reserve room on their host for the operator replicas they
    will carry; a host's attached replicas hold GPUs too. Without the reserve every base lands on the
    warm host and leaves its replicas no room."""
    from opscale.model import OperatorReplicas

    agents = hosts(frozenset({"small"}), frozenset())
    key = PoolKey("small", "r")
    packed = place({key: 4}, {}, agents, DEPLOYMENTS, {}, 1)
    assert members(packed.assignments, "small") == {"h0": 4}
    spread = place({key: 4}, {}, agents, DEPLOYMENTS, {}, 1, reserve={key: 1.0})
    assert members(spread.assignments, "small") == {"h0": 4}  # 4 x (1 + 1) fits the warm host's 8 GPUs
    wide = place({key: 4}, {}, agents, DEPLOYMENTS, {}, 1, reserve={key: 2.0})
    assert members(wide.assignments, "small") == {"h0": 2, "h1": 2}
    # an instance's attached replicas count against its host: 1 + 6 GPU-equivalents leave h0 one GPU
    held = {"h0": (InstanceSpec("small-r-00001", "small", "L40S", 1,
                                operator_replicas=(OperatorReplicas(("mlp",), 6),)),)}
    grown = place({key: 3}, held, agents, DEPLOYMENTS, {}, 2)
    assert members(grown.assignments, "small") == {"h0": 2, "h1": 1}
    # no host with room for the reserve: the instance is still placed, on room for itself alone
    full = place({key: 1}, {}, hosts(frozenset(), gpus=2), DEPLOYMENTS, {}, 1, reserve={key: 4.0})
    assert members(full.assignments, "small") == {"h0": 1}
