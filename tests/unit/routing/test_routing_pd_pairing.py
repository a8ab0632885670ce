"""Prefill/decode pairing: least prefill queue, least KV for decode, same domain preferred."""

from __future__ import annotations

import pytest
from _builders import req
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.model import Role
from opscale.routing import Candidate
from opscale.routing.pd_pairing import PdPairing

pytestmark = pytest.mark.unit


def prefill(i: int, agent: str, queued: int = 0, region: str = "eu", switches: tuple[str, str, str] = ("", "", "")
            ) -> Candidate:
    s0, s1, s2 = switches
    return Candidate(f"p{i}", "m", region, "", agent, outstanding_prefill_tokens=queued, role=Role.PREFILL,
                     s0=s0, s1=s1, s2=s2)


def decode(i: int, agent: str, kv: float, load: int = 0, region: str = "eu",
           switches: tuple[str, str, str] = ("", "", "")) -> Candidate:
    s0, s1, s2 = switches
    return Candidate(f"d{i}", "m", region, "", agent, outstanding_tokens=load, kv_usage=kv, role=Role.DECODE,
                     s0=s0, s1=s1, s2=s2)


def tree(agent: int) -> tuple[str, str, str]:
    """Switches of host `agent`: two hosts a leaf, two leaves a mini-pod, two mini-pods a big-pod."""
    return f"l{agent // 2}", f"p{agent // 4}", f"b{agent // 8}"


def test_prefill_by_queue_and_decode_on_the_same_agent_within_the_slack() -> None:
    policy = PdPairing(domain_slack_kv=0.10)
    p = [prefill(0, "a1", queued=9_000), prefill(1, "a2", queued=100)]
    d = [decode(0, "a1", kv=0.30), decode(1, "a2", kv=0.38), decode(2, "a3", kv=0.31)]
    # prefill p1 (shortest queue) on a2; d1 on a2 is 0.08 fuller than the best (d0): within the slack
    assert policy.choose_pair(req(1), p, d) == (p[1], d[1])
    index = policy.build_pair_index(p, d)
    assert policy.choose_pair_indexed(req(1), index) == (1, 1)


def test_a_much_fuller_same_domain_decode_loses_to_the_best_elsewhere() -> None:
    policy = PdPairing(domain_slack_kv=0.10)
    p = [prefill(0, "a1")]
    d = [decode(0, "a1", kv=0.80), decode(1, "a2", kv=0.40, region="us"), decode(2, "a3", kv=0.45)]
    # same agent: 0.8, far beyond the slack; same region (eu): d2 at 0.45, within the slack of 0.40
    assert policy.choose_pair(req(1), p, d) == (p[0], d[2])
    d[2].kv_usage = 0.9
    assert policy.choose_pair(req(1), p, d) == (p[0], d[1])  # nothing close in the domain: best anywhere


def test_the_decode_sharing_the_tightest_switch_within_the_slack_wins() -> None:
    policy = PdPairing(domain_slack_kv=0.10)
    p = [prefill(0, "a0", switches=tree(0))]
    # a1 shares the prefill's leaf, a2 its mini-pod, a4 its big-pod, a8 nothing but the region
    d = [decode(0, "a8", kv=0.30, switches=tree(8)), decode(1, "a4", kv=0.34, switches=tree(4)),
         decode(2, "a2", kv=0.37, switches=tree(2)), decode(3, "a1", kv=0.39, switches=tree(1))]
    index = policy.build_pair_index(p, d)
    assert policy.choose_pair(req(1), p, d) == (p[0], d[3])  # same leaf, 0.09 above the best
    assert policy.choose_pair_indexed(req(1), index) == (0, 3)
    for leaving, expected in ((3, 2), (2, 1), (1, 0)):  # the nearer one fills beyond the slack: next tier
        d[leaving].kv_usage = 0.9
        index.update_decode(leaving)
        assert policy.choose_pair(req(1), p, d) == (p[0], d[expected])
        assert policy.choose_pair_indexed(req(1), index) == (0, expected)


def test_empty_sides_are_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least one prefill and one decode"):
        PdPairing().choose_pair(req(1), [], [decode(0, "a1", 0.1)])


def test_as_a_plain_policy_it_picks_the_prefill_side_and_avoids_decode_only_instances() -> None:
    policy = PdPairing()
    pool = [decode(0, "a1", kv=0.0), prefill(1, "a1", queued=500), prefill(2, "a2", queued=50)]
    assert policy.choose(req(1), pool) is pool[2]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5000)), min_size=1, max_size=12),
       st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["eu", "us"]), st.floats(0, 1), st.integers(0, 5000)),
                min_size=1, max_size=12),
       st.lists(st.tuples(st.booleans(), st.integers(0, 11), st.integers(0, 5000), st.floats(0, 1)), max_size=40))
def test_the_indexed_pair_equals_the_scanned_pair_after_any_updates(
        ps: list[tuple[int, int]], ds: list[tuple[int, str, float, int]],
        updates: list[tuple[bool, int, int, float]]) -> None:
    policy = PdPairing()
    p = [prefill(i, f"a{agent}", queued) for i, (agent, queued) in enumerate(ps)]
    d = [decode(i, f"a{agent}", kv, load, region) for i, (agent, region, kv, load) in enumerate(ds)]
    index = policy.build_pair_index(p, d)
    for on_prefill, i, tokens, kv in [(True, 0, 0, 0.0), *updates]:
        if on_prefill:
            i %= len(p)
            p[i].outstanding_prefill_tokens = tokens
            index.update_prefill(i)
        else:
            i %= len(d)
            d[i].outstanding_tokens, d[i].kv_usage = tokens, kv
            index.update_decode(i)
        pi, di = policy.choose_pair_indexed(req(1), index)
        assert (p[pi], d[di]) == policy.choose_pair(req(1), p, d)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.integers(0, 5000)), min_size=1, max_size=10),
       st.lists(st.tuples(st.integers(0, 15), st.sampled_from(["eu", "us"]), st.floats(0, 1), st.integers(0, 5000)),
                min_size=1, max_size=16),
       st.lists(st.tuples(st.integers(0, 15), st.integers(0, 5000), st.floats(0, 1)), max_size=30))
def test_with_switch_tiers_the_indexed_pair_equals_the_scanned_pair(
        ps: list[tuple[int, int]], ds: list[tuple[int, str, float, int]], updates: list[tuple[int, int, float]]) -> None:
    policy = PdPairing(domain_slack_kv=0.05)
    p = [prefill(i, f"a{agent}", queued, switches=tree(agent)) for i, (agent, queued) in enumerate(ps)]
    d = [decode(i, f"a{agent}", kv, load, region, tree(agent)) for i, (agent, region, kv, load) in enumerate(ds)]
    index = policy.build_pair_index(p, d)
    for i, tokens, kv in [(0, d[0].outstanding_tokens, d[0].kv_usage), *updates]:
        i %= len(d)
        d[i].outstanding_tokens, d[i].kv_usage = tokens, kv
        index.update_decode(i)
        pi, di = policy.choose_pair_indexed(req(1), index)
        assert (p[pi], d[di]) == policy.choose_pair(req(1), p, d)
