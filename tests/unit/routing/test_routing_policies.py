"""Load-based routing policies and the registry: each policy's defining behaviour, and invariants over
random candidate sets (a policy always returns one of the candidates it was given; an indexed choice
equals the plain one)."""

from __future__ import annotations

import pytest
from _builders import req
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.model import Role
from opscale.routing import Candidate, IndexedRoutingPolicy, RoutingPolicyName, make_routing_policy
from opscale.routing.base import LoadIndex
from opscale.routing.policies import (
    JoinShortestQueue,
    LeastKvUsage,
    PowerOfTwoChoices,
    RandomChoice,
    RoundRobin,
)

pytestmark = pytest.mark.unit


def cand(i: int, load: int = 0, kv: float = 0.0, region: str = "eu", agent: str = "a1", in_flight: int = 0,
         prefill: int = 0, role: Role = Role.UNIFIED) -> Candidate:
    return Candidate(f"i{i}", "m", region, f"http://x/{i}", agent, outstanding_tokens=load, in_flight=in_flight,
                     kv_usage=kv, outstanding_prefill_tokens=prefill, role=role)


def test_round_robin_rotates_whatever_the_load() -> None:
    policy = RoundRobin()
    cands = [cand(0, load=10**6), cand(1), cand(2)]
    assert [policy.choose(req(n), cands).instance_id for n in range(4)] == ["i0", "i1", "i2", "i0"]


def test_random_is_seeded_and_covers_every_candidate() -> None:
    cands = [cand(i) for i in range(5)]
    a, b, other = RandomChoice(seed=7), RandomChoice(seed=7), RandomChoice(seed=8)
    first = [a.choose(req(n), cands).instance_id for n in range(200)]
    assert first == [b.choose(req(n), cands).instance_id for n in range(200)]
    assert first != [other.choose(req(n), cands).instance_id for n in range(200)]
    assert set(first) == {c.instance_id for c in cands}


def test_power_of_two_never_picks_the_more_loaded_of_its_two_draws() -> None:
    # With two candidates both are always drawn, so the less loaded one must win every time.
    policy = PowerOfTwoChoices(seed=3)
    cands = [cand(0, load=500), cand(1, load=20)]
    assert {policy.choose(req(n), cands).instance_id for n in range(100)} == {"i1"}
    # With many, the most loaded instance can never be chosen (it always loses its pair).
    many = [cand(i, load=i) for i in range(10)]
    assert "i9" not in {policy.choose(req(n), many).instance_id for n in range(500)}


def test_least_kv_prefers_the_emptier_cache_and_spreads_within_a_step() -> None:
    policy = LeastKvUsage(kv_step=0.05)
    cands = [cand(0, kv=0.50), cand(1, kv=0.12, load=900), cand(2, kv=0.11, load=100), cand(3, kv=0.9)]
    assert policy.choose(req(1), cands).instance_id == "i2"  # 0.11 and 0.12 share a step: fewer tokens wins
    cands[2].kv_usage = 0.30
    assert policy.choose(req(2), cands).instance_id == "i1"


def test_least_kv_rejects_a_step_outside_0_1() -> None:
    with pytest.raises(ValueError, match="kv_step"):
        LeastKvUsage(kv_step=0.0)


def test_registry_builds_every_policy_by_name_with_params_and_names_the_known_ones() -> None:
    for name in RoutingPolicyName:
        assert make_routing_policy(name.value).name == name.value
    assert make_routing_policy("power_of_two", {"seed": 5}).seed == 5  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="known: jsq_tokens, round_robin"):
        make_routing_policy("fastest")
    with pytest.raises(ValueError, match="'random'.*seeed"):
        make_routing_policy("random", {"seeed": 1})


def test_multi_region_refuses_itself_as_inner_policy() -> None:
    with pytest.raises(ValueError, match="inner"):
        make_routing_policy("multi_region", {"inner": "multi_region"})


# --- the load index -----------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=40),
       st.lists(st.tuples(st.integers(0, 39), st.integers(0, 50)), max_size=300))
def test_load_index_first_min_is_the_first_least_load_after_any_updates(
        initial: list[int], updates: list[tuple[int, int]]) -> None:
    index = LoadIndex(initial)
    loads = list(initial)
    for i, load in updates:
        i %= len(loads)
        index.set(i, load)
        loads[i] = load
        assert index.first_min() == loads.index(min(loads))
        assert index.least() == min(loads)


def test_load_index_stays_right_across_the_rebuilds_that_clear_stale_entries() -> None:
    # A falling load leaves its older, higher entries deep in the heap: enough of them force rebuilds.
    index = LoadIndex([5_000, 4_000, 6_000])
    for k in range(1_000):
        index.set(1, 3_999 - k)
        index.set(2, 6_000 + k)
        assert index.first_min() == 1 and index.least() == 3_999 - k
    index.set(1, 10**6)
    assert index.first_min() == 0


# --- invariants over every policy ------------------------------------------------------------------

candidate_sets = st.lists(
    st.tuples(st.integers(0, 5000), st.floats(0.0, 1.0), st.integers(0, 8), st.integers(0, 3), st.integers(0, 2000)),
    min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(candidate_sets, st.integers(1, 4000), st.lists(st.integers(0, 2**40), max_size=3))
def test_every_policy_returns_one_of_its_candidates_and_indexes_agree(
        shapes: list[tuple[int, float, int, int, int]], prompt: int, prefix: list[int]) -> None:
    cands = [cand(i, load=load, kv=kv, in_flight=inf, agent=f"a{agent}", prefill=pre)
             for i, (load, kv, inf, agent, pre) in enumerate(shapes)]
    request = req(1, prompt=prompt)
    request = type(request)(request.request_id, request.model, request.tier, request.region, 0.0, prompt, 10,
                            tuple(prefix))
    for name in RoutingPolicyName:
        policy = make_routing_policy(name.value, {"prefill_tokens_per_s": 10_000.0} if name == "slo_aware" else None)
        chosen = policy.choose(request, cands)
        assert any(chosen is c for c in cands), name
        if isinstance(policy, IndexedRoutingPolicy):
            index = policy.build_index(cands)
            assert cands[policy.choose_indexed(request, cands, index)] is chosen, name
    assert JoinShortestQueue().choose(request, cands).outstanding_tokens == min(c.outstanding_tokens for c in cands)
