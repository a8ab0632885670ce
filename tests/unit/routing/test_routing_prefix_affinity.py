"""Prefix affinity (consistent hashing with bounded loads): the same prefix goes to the same instance,
no instance exceeds the load bound, adding an instance moves few prefixes."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from _builders import heartbeat, outcome, status
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.model import Request
from opscale.routing import Candidate
from opscale.routing.prefix_affinity import PrefixAffinity, PrefixAffinityIndex
from opscale.services.events import RequestArrived, RequestFinished
from opscale.services.router import RouterConfig, RouterCore

pytestmark = pytest.mark.unit


def cands(n: int) -> list[Candidate]:
    return [Candidate(f"i{i}", "m", "eu", "", "a1") for i in range(n)]


def request(n: int, prefix: tuple[int, ...] = (), prompt: int = 100) -> Request:
    return Request(f"r{n}", "m", "interactive", "eu", 0.0, prompt, 10, prefix)


def place(policy: PrefixAffinity, pool: list[Candidate], index: PrefixAffinityIndex, r: Request) -> int:
    """Route `r` the way the router does: choose, charge, tell the index."""
    i = policy.choose_indexed(r, pool, index)
    pool[i].in_flight += 1
    pool[i].outstanding_tokens += r.total_tokens
    index.update(i)
    return i


def test_the_same_prefix_goes_to_the_same_instance_while_it_has_room() -> None:
    policy, pool = PrefixAffinity(), cands(8)
    for c in pool:
        c.in_flight = 4  # background load: the bound, ceil(1.25 * 33 / 8) = 6, leaves room everywhere
    index = policy.build_index(pool)
    homes: dict[int, int] = {}
    for p in range(6):
        homes[p] = place(policy, pool, index, request(p, (p, 99)))
        # the next request with this prefix (and a different tail) goes there too
        assert policy.choose_indexed(request(100 + p, (p, 12345)), pool, index) == homes[p]
        pool[homes[p]].in_flight -= 1  # and the first finishes
        index.update(homes[p])
    assert len(set(homes.values())) > 1  # different prefixes spread over instances


def test_a_hot_prefix_spills_past_its_home_at_the_load_bound() -> None:
    policy, pool = PrefixAffinity(load_factor=1.25), cands(4)
    index = policy.build_index(pool)
    chosen = [place(policy, pool, index, request(n, (7,))) for n in range(12)]
    assert len(set(chosen)) > 1  # one prefix, but the bound pushes it past its home
    for c in pool:
        assert c.in_flight <= math.ceil(1.25 * 12 / 4)


def test_without_prefix_hashes_the_least_loaded_instance_is_chosen() -> None:
    policy, pool = PrefixAffinity(), cands(3)
    pool[0].outstanding_tokens, pool[1].outstanding_tokens, pool[2].outstanding_tokens = 500, 40, 300
    index = policy.build_index(pool)
    assert policy.choose_indexed(request(1), pool, index) == 1
    assert policy.choose(request(1), pool) is pool[1]


def test_adding_an_instance_moves_only_the_prefixes_it_takes_over() -> None:
    policy = PrefixAffinity()
    before, after = cands(10), cands(11)
    requests = [request(p, (p,)) for p in range(400)]
    olds = [policy.choose(r, before) for r in requests]  # one list at a time: its ring is reused
    news = [policy.choose(r, after) for r in requests]
    moved = 0
    for old, new in zip(olds, news, strict=True):
        if old.instance_id != new.instance_id:
            moved += 1
            assert new.instance_id == "i10"  # a moved prefix only ever goes to the newcomer
    assert 0 < moved < 400 * 0.25


def test_bad_parameters_are_named() -> None:
    with pytest.raises(ValueError, match="load_factor"):
        PrefixAffinity(load_factor=1.0)
    with pytest.raises(ValueError, match="replicas"):
        PrefixAffinity(replicas=0)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.floats(1.05, 3.0),
       st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=1, max_size=200))
def test_bounded_load_never_exceeds_ceil_c_times_mean_plus_one(
        n: int, c: float, steps: list[tuple[bool, int]]) -> None:
    policy, pool = PrefixAffinity(load_factor=c, replicas=8), cands(n)
    index = policy.build_index(pool)
    placed: list[int] = []
    for k, (finish_one, prefix) in enumerate(steps):
        if finish_one and placed:
            i = placed.pop(k * 31 % len(placed))
            pool[i].in_flight -= 1
            index.update(i)
        i = place(policy, pool, index, request(k, (prefix,)))
        placed.append(i)
        total = sum(x.in_flight for x in pool)
        assert index.total_in_flight == total
        # the chosen instance is within the bound it was placed under: ceil(c * total / n)
        assert pool[i].in_flight <= math.ceil(c * total / n)
        assert max(x.in_flight for x in pool) <= math.ceil(c * total / n) + 1


def test_through_the_router_a_prefix_sticks_and_the_bound_holds_as_requests_finish() -> None:
    router = RouterCore(RouterConfig(policy="prefix_affinity", policy_params={"load_factor": 1.5}))
    router.handle(heartbeat("a1", "eu", *(status(f"i{k}") for k in range(6))), 0.0)
    running: Counter[str] = Counter()
    where: dict[int, str] = {}
    for n in range(120):
        if n >= 12:  # a steady 12 in flight: the oldest finishes as each new one arrives
            router.handle(RequestFinished(outcome(n - 12, arrival=0.0, ttft=0.1, e2e=1.0)), float(n))
            running[where[n - 12]] -= 1
        [d] = router.handle(RequestArrived(request(n, (n % 3,))), float(n))
        where[n] = d.instance_id  # type: ignore[union-attr]
        running[d.instance_id] += 1  # type: ignore[union-attr]
        assert running[d.instance_id] <= math.ceil(1.5 * min(n + 1, 12) / 6)  # type: ignore[union-attr]
    # three prefixes, 12 in flight, bound 3 per instance: each prefix keeps to a few instances
    per_prefix = {p: {where[n] for n in range(60, 120) if n % 3 == p} for p in range(3)}
    assert all(len(homes) <= 3 for homes in per_prefix.values())
