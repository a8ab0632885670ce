"""The router pairs a prefill and a decode instance for a disaggregated model's request, moves its
accounting to the decode instance at the hand-off, and loses nothing when either side fails."""

from __future__ import annotations

import pytest
from _builders import heartbeat, outcome, req, status

from opscale.model import InstanceStatus, Role
from opscale.services.actions import Dispatch
from opscale.services.events import DispatchFailed, PrefillHandedOff, RequestArrived, RequestFinished
from opscale.services.router import RouterConfig, RouterCore

pytestmark = pytest.mark.unit


def _st(instance_id: str, role: Role) -> InstanceStatus:
    return status(instance_id, role=role)


def _router() -> RouterCore:
    router = RouterCore()
    router.handle(heartbeat("a1", "eu", _st("p1", Role.PREFILL), _st("d1", Role.DECODE)), 0.0)
    router.handle(heartbeat("a2", "eu", _st("p2", Role.PREFILL), _st("d2", Role.DECODE)), 0.0)
    return router


def test_a_disaggregated_request_goes_to_a_prefill_and_decode_pair() -> None:
    router = _router()
    [first] = router.handle(RequestArrived(req(1, prompt=1000, output=50)), 0.1)
    [second] = router.handle(RequestArrived(req(2, prompt=1000, output=50)), 0.2)
    assert isinstance(first, Dispatch) and isinstance(second, Dispatch)
    assert (first.instance_id, first.decode_instance_id) == ("p1", "d1")  # decode on the prefill's host
    assert first.decode_endpoint == "http://x/d1"
    assert (second.instance_id, second.decode_instance_id) == ("p2", "d2")  # p1 holds 1000 prefill tokens


def test_the_hand_off_moves_the_request_to_its_decode_instance_until_it_finishes() -> None:
    router = _router()
    router.handle(RequestArrived(req(1, prompt=1000, output=50)), 0.1)
    router.handle(PrefillHandedOff("r1", "p1", "d1", 0.3), 0.3)
    # p1 is free again: the next request's prefill goes there
    [nxt] = router.handle(RequestArrived(req(2, prompt=10, output=5)), 0.4)
    assert nxt.instance_id == "p1"
    assert router.in_flight() == 2
    router.handle(RequestFinished(outcome(1, arrival=0.1, ttft=0.3, e2e=1.0)), 1.1)
    router.handle(PrefillHandedOff("r1", "p1", "d1", 0.3), 1.2)  # a duplicate changes nothing
    assert router.in_flight() == 1


def test_a_failed_decode_side_releases_both_and_pairs_the_request_again_elsewhere() -> None:
    router = _router()
    [first] = router.handle(RequestArrived(req(1, prompt=1000, output=50)), 0.1)
    [retry] = router.handle(DispatchFailed(first.request, "d1", "decode instance is not accepting requests"), 0.2)
    assert isinstance(retry, Dispatch) and retry.decode_instance_id == "d2"
    assert router.in_flight() == 1


def test_a_pair_waits_until_both_roles_are_ready() -> None:
    router = RouterCore(RouterConfig(models=["m"]))
    router.handle(heartbeat("a1", "eu", _st("p1", Role.PREFILL)), 0.0)
    assert router.handle(RequestArrived(req(1)), 0.1) == []  # held: no decode instance yet
    [held] = router.handle(heartbeat("a2", "eu", _st("d1", Role.DECODE)), 0.5)
    assert isinstance(held, Dispatch) and (held.instance_id, held.decode_instance_id) == ("p1", "d1")


def _sized(instance_id: str, role: Role, kv: float = 0.0, capacity: int = 0) -> InstanceStatus:
    return status(instance_id, role=role, kv_used_frac=kv, kv_capacity_tokens=capacity)


def test_a_burst_between_heartbeats_is_spread_by_the_kv_the_router_itself_sent() -> None:
    # d-new reported an empty cache, d-old a 30%-full one, two seconds of traffic before the next
    # heartbeat: by the heartbeats alone every hand-off of the burst would go to d-new and overflow it.
    router = RouterCore()
    router.handle(heartbeat("a1", "eu", _sized("p1", Role.PREFILL), _sized("d-new", Role.DECODE, 0.0, 10_000),
                            _sized("d-old", Role.DECODE, 0.30, 10_000)), 0.0)
    chosen = [router.handle(RequestArrived(req(i, prompt=900, output=100)), 0.01 * i)[0].decode_instance_id
              for i in range(1, 9)]
    assert chosen[:3] == ["d-new"] * 3  # 0, 10, 20% of its cache: still below d-old's 30%
    assert "d-old" in chosen[3:]  # then d-new's routed KV (the requests' prompt + output) passes d-old's


def test_routed_kv_stays_charged_to_the_decode_instance_until_the_request_ends() -> None:
    router = RouterCore()
    router.handle(heartbeat("a1", "eu", _sized("p1", Role.PREFILL), _sized("d1", Role.DECODE, 0.0, 10_000)), 0.0)
    router.handle(RequestArrived(req(1, prompt=900, output=100)), 0.1)
    decode = router._candidates["d1"]
    assert decode.kv_inflight_tokens == 1000 and decode.kv_estimate() == pytest.approx(0.1)
    router.handle(PrefillHandedOff("r1", "p1", "d1", 0.3), 0.3)
    assert decode.kv_inflight_tokens == 1000  # the KV moved to d1 and stays there while it decodes
    router.handle(RequestFinished(outcome(1, arrival=0.1, ttft=0.3, e2e=1.0)), 1.1)
    assert decode.kv_inflight_tokens == 0


def test_a_failed_pair_releases_the_decode_instances_routed_kv() -> None:
    router = RouterCore()
    router.handle(heartbeat("a1", "eu", _sized("p1", Role.PREFILL), _sized("d1", Role.DECODE, 0.0, 10_000),
                            _sized("d2", Role.DECODE, 0.0, 10_000)), 0.0)
    [first] = router.handle(RequestArrived(req(1, prompt=900, output=100)), 0.1)
    [retry] = router.handle(DispatchFailed(first.request, first.decode_instance_id,
                                           "decode instance is not accepting requests"), 0.2)
    assert retry.decode_instance_id != first.decode_instance_id
    # charged once, to the instance it is paired with now
    assert {c.instance_id: c.kv_inflight_tokens for c in router._candidates.values() if c.role is Role.DECODE
            and c.kv_inflight_tokens} == {retry.decode_instance_id: 1000}
