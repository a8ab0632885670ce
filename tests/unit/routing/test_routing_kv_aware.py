"""The global prefix index and the kv_aware policy: the index follows events and dispatches, stays within
its bounds and counts what it refuses; kv_aware sends a request where its prefix is cached unless load
outweighs it; the router core feeds both and survives hostile events."""

from __future__ import annotations

import pytest
from _builders import heartbeat, status
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.model import Request
from opscale.routing import Candidate, make_routing_policy
from opscale.routing.kv_aware import KvAware
from opscale.routing.prefix_index import PrefixIndex
from opscale.services.actions import Dispatch
from opscale.services.events import KvBlockEvent, KvEventBatch, KvEventKind, RequestArrived
from opscale.services.router import RouterConfig, RouterCore

pytestmark = pytest.mark.unit

STORED, REMOVED, CLEARED = KvEventKind.STORED, KvEventKind.REMOVED, KvEventKind.CLEARED


def batch(instance: str, seq: int, *events: KvBlockEvent, model: str = "m") -> KvEventBatch:
    return KvEventBatch(instance, model, float(seq), seq, events)


def stored(*hashes: int, parent: int | None = None) -> KvBlockEvent:
    return KvBlockEvent(STORED, hashes, parent, (), 512, "GPU")


def removed(*hashes: int) -> KvBlockEvent:
    return KvBlockEvent(REMOVED, hashes, medium="GPU")


def request(n: int, hashes: tuple[int, ...], prompt: int = 4096, output: int = 10) -> Request:
    return Request(f"r{n}", "m", "interactive", "eu", 0.0, prompt, output, hashes)


# --- the index -------------------------------------------------------------------------------------------


def test_index_follows_stores_removals_and_clears() -> None:
    index = PrefixIndex()
    index.apply(batch("a", 1, stored(1, 2, 3)), known=True)
    index.apply(batch("b", 1, stored(1, 2), stored(7, parent=2)), known=True)
    assert index.matched_blocks("m", (1, 2, 3, 4)) == {"a": 3, "b": 2}
    assert index.match("m", (1, 2, 3)) == [(2, {"b"}), (3, {"a"})]  # shortest first, each in its longest
    assert index.matched_blocks("m", (9, 1)) == {}  # a miss on the first block matches nothing
    assert index.matched_blocks("other", (1,)) == {}  # per model
    index.apply(batch("a", 2, removed(2)), known=True)
    assert index.matched_blocks("m", (1, 2, 3)) == {"a": 1, "b": 2}  # a's chain breaks at the removed block
    index.apply(batch("b", 2, KvBlockEvent(CLEARED)), known=True)
    assert index.matched_blocks("m", (1, 2)) == {"a": 1}
    assert len(index) == 2 and index.stats.batches == 4


def test_index_counts_and_drops_what_it_refuses() -> None:
    index = PrefixIndex(max_blocks=5)
    index.apply(batch("a", 1, stored(1, 2)), known=False)
    assert index.stats.unknown_instance == 1 and len(index) == 0
    index.apply(batch("a", 1, stored(1, 2)), known=True)
    index.apply(batch("a", 1, stored(3)), known=True)  # redelivered seq
    index.apply(batch("a", 2, removed(9)), known=True)  # never stored
    index.apply(batch("a", 3, KvBlockEvent(STORED), stored(2**70)), known=True)  # no hashes; out of int64
    index.apply(batch("a", 4, stored(10, 11, 12, 13, 14)), known=True)  # a flood past the bound
    index.apply(batch("a", 5, stored(20), model="other"), known=True)  # an instance serves one model
    index.apply(batch("a", 6, KvBlockEvent(STORED, (30,), None, (), 512, "CPU")), known=True)  # a host tier's
    stats = index.stats
    assert (stats.stale, stats.out_of_order, stats.malformed, stats.overflow) == (1, 1, 3, 2)
    assert stats.other_medium == 1
    assert len(index) == 5


def test_routed_blocks_are_tracked_within_each_instance_bound() -> None:
    index = PrefixIndex(max_blocks_per_instance=3)
    index.note_routed("m", "a", (1, 2))
    index.note_routed("m", "a", (1, 5, 6))  # a's oldest entry (2) makes way
    assert index.blocks_of("a") == 3 and index.stats.evicted == 1
    assert index.matched_blocks("m", (1, 5, 6)) == {"a": 3}
    index.forget("a")
    assert len(index) == 0 and index.matched_blocks("m", (1,)) == {}


# --- the policy ------------------------------------------------------------------------------------------


def pool(n: int) -> list[Candidate]:
    return [Candidate(f"i{i}", "m", "eu", "", "a1") for i in range(n)]


def test_kv_aware_prefers_the_cached_prefix_unless_load_outweighs_it() -> None:
    policy = KvAware(load_weight=1.0)
    cands = pool(3)
    policy.observe_kv(batch("i2", 1, stored(*range(1, 7))), known=True)  # 6 of the 8 blocks on i2
    index = policy.build_index(cands)
    r = request(0, tuple(range(1, 9)))
    assert policy.choose_indexed(r, cands, index) == 2
    assert policy.choose(r, cands).instance_id == "i2"
    cands[2].outstanding_tokens = cands[2].outstanding_prefill_tokens = 4000  # 4000 + 1024 > 4096 + 0
    index.update(2)
    assert policy.choose_indexed(r, cands, index) == 0
    assert policy.choose(r, cands).instance_id == "i0"
    lighter = KvAware(load_weight=0.25)  # load counts a quarter: 1000 + 1024 < 4096
    lighter.observe_kv(batch("i2", 1, stored(*range(1, 7))), known=True)
    assert lighter.choose_indexed(r, cands, lighter.build_index(cands)) == 2


def test_kv_aware_keeps_within_its_load_bound() -> None:
    policy = KvAware(load_factor=1.5)
    cands = pool(2)
    policy.observe_kv(batch("i1", 1, stored(1, 2, 3)), known=True)
    cands[1].in_flight = 3  # bound ceil(1.5 x 4 / 2) = 3: i1 is full
    index = policy.build_index(cands)
    assert policy.choose_indexed(request(0, (1, 2, 3, 4)), cands, index) == 0


@settings(max_examples=60, deadline=None)
@given(held=st.lists(st.lists(st.integers(1, 6), max_size=6), min_size=3, max_size=3),
       loads=st.lists(st.integers(0, 5000), min_size=3, max_size=3),
       hashes=st.lists(st.integers(1, 6), min_size=1, max_size=8, unique=True))
def test_the_indexed_choice_costs_what_the_plain_one_does(held: list[list[int]], loads: list[int],
                                                          hashes: list[int]) -> None:
    policy = KvAware()
    cands = pool(3)
    for i, blocks in enumerate(held):
        if blocks:
            policy.observe_kv(batch(f"i{i}", 1, stored(*blocks)), known=True)
        cands[i].outstanding_tokens = cands[i].outstanding_prefill_tokens = loads[i]
    r = request(0, tuple(hashes), prompt=512 * len(hashes) + 100)
    cached = policy.index.matched_blocks("m", r.prefix_hashes)

    def cost(c: Candidate) -> int:
        return max(r.prompt_tokens - 512 * cached.get(c.instance_id, 0), 1) + policy.load(c)

    chosen = cands[policy.choose_indexed(r, cands, policy.build_index(cands))]
    assert cost(chosen) == min(cost(c) for c in cands) == cost(policy.choose(r, cands))


def test_kv_aware_is_in_the_registry_with_its_parameters_checked() -> None:
    assert make_routing_policy("kv_aware", {"decode_weight": 0.5}).name == "kv_aware"
    with pytest.raises(ValueError, match="load_factor"):
        make_routing_policy("kv_aware", {"load_factor": 1.0})


# --- through the router core -----------------------------------------------------------------------------


def router() -> RouterCore:
    core = RouterCore(RouterConfig(region="eu", policy="kv_aware"))
    core.handle(heartbeat("a1", "eu", status("i1"), status("i2")), 0.0)
    return core


def test_a_follow_up_turn_goes_where_its_prefix_is_cached() -> None:
    core = router()
    core.handle(batch("i2", 1, stored(11, 12, 13, 14)), 1.0)
    (dispatch,) = core.handle(RequestArrived(request(1, (11, 12, 13, 14, 15, 16, 17, 18))), 1.0)
    assert isinstance(dispatch, Dispatch) and dispatch.instance_id == "i2"
    # no events at all for a fresh conversation: its dispatch is remembered (approximate tracking)
    (first,) = core.handle(RequestArrived(request(2, (31, 32, 33, 34))), 2.0)
    (second,) = core.handle(RequestArrived(request(3, (31, 32, 33, 34, 35, 36))), 2.1)
    assert isinstance(first, Dispatch) and isinstance(second, Dispatch)
    assert first.instance_id == second.instance_id


def test_an_instance_that_leaves_is_dropped_from_the_index() -> None:
    core = router()
    core.handle(batch("i2", 1, stored(11, 12, 13)), 1.0)
    policy = core.policy
    assert isinstance(policy, KvAware) and policy.index.blocks_of("i2") == 3
    core.handle(heartbeat("a1", "eu", status("i1")), 2.0)  # i2 is gone
    assert policy.index.blocks_of("i2") == 0
    core.handle(batch("i2", 2, stored(14)), 3.0)  # late events of a departed instance
    assert policy.index.blocks_of("i2") == 0 and policy.index.stats.unknown_instance == 1


junk = st.one_of(st.none(), st.integers(), st.text(max_size=3), st.floats(), st.lists(st.integers(), max_size=3))
hostile_events = st.builds(KvBlockEvent, kind=st.one_of(st.sampled_from(list(KvEventKind)), junk),
                           block_hashes=st.one_of(st.tuples(st.integers(-(2**70), 2**70)), junk),
                           parent_block_hash=junk, token_ids=junk, block_size=junk, medium=junk)


@settings(max_examples=200, deadline=None)
@given(batches=st.lists(st.builds(KvEventBatch, instance_id=st.one_of(st.sampled_from(["i1", "i2", "x"]), junk),
                                  model=st.one_of(st.just("m"), junk), at_s=st.floats(), seq=st.one_of(st.integers(), junk),
                                  events=st.one_of(st.lists(hostile_events, max_size=4).map(tuple), junk)),
                        max_size=6))
def test_hostile_events_never_crash_the_router(batches: list[KvEventBatch]) -> None:
    core = router()
    for b in batches:
        assert core.handle(b, 1.0) == []
    (dispatch,) = core.handle(RequestArrived(request(1, (1, 2, 3))), 2.0)
    assert isinstance(dispatch, Dispatch)
