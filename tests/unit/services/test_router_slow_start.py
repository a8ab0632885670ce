"""The router's slow start (RouterConfig.slow_start_s): a newly ready instance's share of new requests
ramps up over the window instead of it taking every request until it holds as much as the others."""

from __future__ import annotations

import pytest
from _builders import heartbeat, outcome, req, status
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.model import InstanceState
from opscale.services.actions import Dispatch, Reject
from opscale.services.events import RequestArrived, RequestFinished
from opscale.services.router import RouterConfig, RouterCore

pytestmark = pytest.mark.unit

LOAD_POLICIES = ["jsq_tokens", "least_kv", "power_of_two", "slo_aware", "kv_aware", "prefix_affinity"]


def _busy_pool(slow_start_s: float, policy: str = "jsq_tokens", **cfg: int) -> tuple[RouterCore, int]:
    """Two instances each running 10 requests of 1100 tokens; then i3 becomes ready at t = 10."""
    router = RouterCore(RouterConfig(slow_start_s=slow_start_s, policy=policy, **cfg))
    router.handle(heartbeat("a1", "eu", status("i1"), status("i2")), 0.0)
    for i in range(20):
        router.handle(RequestArrived(req(i, prompt=1000, output=100)), 1.0)
    router.handle(heartbeat("a1", "eu", status("i1"), status("i2"), status("i3"), at_s=10.0), 10.0)
    return router, 20


def _send(router: RouterCore, first: int, n: int, at_s: float) -> list[str]:
    picks = []
    for i in range(first, first + n):
        picks += [a.instance_id for a in router.handle(RequestArrived(req(i, prompt=1000, output=100)), at_s)
                  if isinstance(a, Dispatch)]
    return picks


def test_without_slow_start_a_new_instance_takes_every_request_until_it_holds_as_much() -> None:
    router, n = _busy_pool(slow_start_s=0)
    assert _send(router, n, 10, 10.1) == ["i3"] * 10


@pytest.mark.parametrize("policy", LOAD_POLICIES)
def test_a_new_instance_takes_its_share_not_every_request_in_its_first_seconds(policy: str) -> None:
    router, n = _busy_pool(slow_start_s=10, policy=policy)
    picks = _send(router, n, 12, 10.1)
    assert 1 <= picks.count("i3") <= 6, picks  # about a third, as if it held the others' mean
    assert {"i1", "i2"} <= set(picks)


def test_its_share_ramps_up_over_the_window_and_after_it_it_is_as_any_other() -> None:
    router, n = _busy_pool(slow_start_s=10)
    early = _send(router, n, 12, 10.1).count("i3")
    router.tick(17.5)  # three quarters of the window: a quarter of the phantom load is left
    late = _send(router, n + 12, 12, 17.6).count("i3")
    assert late > early
    router.tick(20.5)  # past the window: only its own load counts
    assert not router._ramping
    cands = router._candidates
    assert cands["i3"].slow_start_tokens == 0 and cands["i3"].outstanding_prefill_tokens == 1000 * (early + late)
    # plain join-shortest-queue from here: the next request goes to the fewest real outstanding tokens
    least = min(cands.values(), key=lambda c: (c.outstanding_tokens, c.instance_id)).instance_id
    assert _send(router, n + 24, 1, 20.6) == [least]


def test_the_phantom_load_never_holds_back_a_request_the_new_instance_has_room_for() -> None:
    # both running instances at the admission limit: requests are held, and the newcomer takes them
    router = RouterCore(RouterConfig(slow_start_s=10, max_outstanding_tokens_per_instance=5500))
    router.handle(heartbeat("a1", "eu", status("i1"), status("i2")), 0.0)
    assert len(_send(router, 0, 10, 1.0)) == 10
    assert _send(router, 10, 3, 2.0) == [] and router.pending() == {"m": 3}
    actions = router.handle(heartbeat("a1", "eu", status("i1"), status("i2"), status("i3"), at_s=10.0), 10.0)
    assert [a.instance_id for a in actions if isinstance(a, Dispatch)] == ["i3"] * 3
    assert _send(router, 13, 2, 10.1) == ["i3", "i3"]


def test_a_pool_of_new_instances_has_nothing_to_ramp_against() -> None:
    router = RouterCore(RouterConfig(slow_start_s=10))
    router.handle(heartbeat("a1", "eu", status("i1"), status("i2")), 0.0)
    assert _send(router, 0, 4, 0.1) == ["i1", "i2", "i1", "i2"]


def test_a_finished_request_on_a_ramping_instance_releases_only_its_own_tokens() -> None:
    router, n = _busy_pool(slow_start_s=10)
    picks = _send(router, n, 12, 10.1)
    k = picks.index("i3")
    phantom = router._candidates["i3"].slow_start_tokens
    assert phantom > 0
    router.handle(RequestFinished(outcome(n + k, arrival=10.1, ttft=0.1, e2e=1.0)), 11.0)
    cand = router._candidates["i3"]
    assert cand.outstanding_tokens - cand.slow_start_tokens == 1100 * (picks.count("i3") - 1)


# -- the laws, over random event sequences --------------------------------------------------------

_AGENTS = {"a1": ["i1", "i2"], "a2": ["i3", "i4"]}
_STATES = [InstanceState.READY, InstanceState.READY, InstanceState.LOADING, InstanceState.DRAINING]
_STEPS = {
    "heartbeat": st.tuples(st.just("heartbeat"), st.sampled_from(sorted(_AGENTS)),
                           st.lists(st.tuples(st.integers(0, 1), st.sampled_from(_STATES)), max_size=2)),
    "arrive": st.tuples(st.just("arrive"), st.integers(1, 4000), st.integers(1, 500)),
    "finish": st.tuples(st.just("finish"), st.integers(0, 1000)),
    "tick": st.tuples(st.just("tick"), st.floats(0.0, 4.0)),
}
# arrivals weigh most, so that instances hold load when others join and ramp against it
_step = st.sampled_from(["arrive", "arrive", "arrive", "heartbeat", "finish", "tick"]).flatmap(_STEPS.__getitem__)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(_step, min_size=10, max_size=80), slow_start_s=st.sampled_from([0.0, 3.0, 10.0]),
       policy=st.sampled_from(LOAD_POLICIES), limit=st.sampled_from([None, 3000]))
def test_no_request_is_lost_or_sent_to_an_instance_not_ready(steps: list, slow_start_s: float, policy: str,
                                                            limit: int | None) -> None:
    router = RouterCore(RouterConfig(slow_start_s=slow_start_s, policy=policy, models=["m"],
                                     max_outstanding_tokens_per_instance=limit))
    # a1 serves from the start; then the agents' instances come, go and change state at random
    ready: dict[str, set[str]] = {"a1": {"i1"}}  # agent -> the instances its newest heartbeat said ready
    arrived: list[str] = []
    dispatched: dict[str, str] = {}
    rejected: set[str] = set()
    finished: set[str] = set()
    now = 0.0

    def take(actions: list) -> None:
        serving = set().union(*ready.values())
        for a in actions:
            if isinstance(a, Dispatch):
                assert a.request.request_id not in dispatched, "dispatched twice"
                assert a.instance_id in serving, f"{a.instance_id} is not ready"
                dispatched[a.request.request_id] = a.instance_id
            elif isinstance(a, Reject):
                rejected.add(a.request.request_id)

    take(router.handle(heartbeat("a1", "eu", status("i1")), now))
    for step in steps:
        match step:
            case ("heartbeat", agent, instances):
                mine = {_AGENTS[agent][k]: state for k, state in instances}
                ready[agent] = {i for i, state in mine.items() if state is InstanceState.READY}
                take(router.handle(heartbeat(agent, "eu", *(status(i, state=state) for i, state in mine.items()),
                                             at_s=now), now))
            case ("arrive", prompt, output):
                i = len(arrived)
                arrived.append(f"r{i}")
                take(router.handle(RequestArrived(req(i, t=now, prompt=prompt, output=output)), now))
            case ("finish", pick):
                running = sorted(set(dispatched) - finished)
                if running:
                    rid = running[pick % len(running)]
                    finished.add(rid)
                    take(router.handle(RequestFinished(outcome(int(rid[1:]), arrival=now, ttft=0.1, e2e=0.2)), now))
            case ("tick", dt):
                now += dt
                take(router.tick(now))
    held = {r.request_id for r in router.held()}
    assert set(dispatched) | rejected | held == set(arrived)
    assert not (set(dispatched) & rejected) and not (set(dispatched) & held) and not (rejected & held)
    # the phantom load is never more than a candidate's counts, and real loads are never negative
    for cand in router._candidates.values():
        assert 0 <= cand.slow_start_prefill_tokens <= cand.slow_start_tokens <= cand.outstanding_tokens
        assert cand.slow_start_prefill_tokens <= cand.outstanding_prefill_tokens
