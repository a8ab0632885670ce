"""Discovery as the plan drives it: a withdrawn instance (soft scale-in) takes no new request and serves
again the moment a plan restores it; the Ready-ratio gate holds back newly ready instances of the
over-represented role until the other role catches up, and never hides one that already serves."""

from __future__ import annotations

import pytest
from _builders import heartbeat, req

from opscale.model import InstanceSpec, InstanceState, InstanceStatus, Plan, Role
from opscale.services.actions import Dispatch
from opscale.services.events import PlanPublished, RequestArrived
from opscale.services.router import RouterConfig, RouterCore

pytestmark = pytest.mark.unit


def _st(instance_id: str, state: InstanceState = InstanceState.READY) -> InstanceStatus:
    role = Role.PREFILL if instance_id.startswith("p") else Role.DECODE
    return InstanceStatus(instance_id, "m", "H100-80GB", 1, role, state, endpoint=f"http://x/{instance_id}")


def _plan(epoch: int, prefill: int, decode: int, *, withdrawn: dict[str, float] | None = None,
          tolerance: float | None = None) -> Plan:
    """Prefill instances p1.. on agent ap, decode d1.. on agent ad."""
    specs = {"ap": tuple(InstanceSpec(f"p{i}", "m", "H100-80GB", 1, Role.PREFILL) for i in range(1, prefill + 1)),
             "ad": tuple(InstanceSpec(f"d{i}", "m", "H20", 1, Role.DECODE) for i in range(1, decode + 1))}
    return Plan(epoch, 0.0, specs, {"ap": "eu", "ad": "eu"}, withdrawn=withdrawn or {},
                ready_ratio_tolerance={"m": tolerance} if tolerance is not None else {})


def _router(plan: Plan, prefill: list[InstanceStatus], decode: list[InstanceStatus]) -> RouterCore:
    router = RouterCore(RouterConfig(models=["m"]))
    router.handle(PlanPublished(plan), 0.0)
    router.handle(heartbeat("ap", "eu", *prefill), 0.0)
    router.handle(heartbeat("ad", "eu", *decode), 0.0)
    return router


def _decoders(router: RouterCore, n: int = 40, start: int = 0) -> set[str]:
    """The decode instances `n` new requests are paired with (none finishes, so they spread by load)."""
    used = set()
    for i in range(start, start + n):
        for action in router.handle(RequestArrived(req(i, prompt=100, output=100)), 1.0):
            assert isinstance(action, Dispatch)
            used.add(action.decode_instance_id)
    return used


def test_a_withdrawn_instance_takes_no_new_request_while_it_runs() -> None:
    router = _router(_plan(1, 1, 3, withdrawn={"d3": 0.0}), [_st("p1")], [_st(d) for d in ("d1", "d2", "d3")])
    assert _decoders(router) == {"d1", "d2"}


def test_a_restored_instance_serves_again_at_once_without_a_heartbeat() -> None:
    router = _router(_plan(1, 1, 3), [_st("p1")], [_st(d) for d in ("d1", "d2", "d3")])
    router.handle(PlanPublished(_plan(2, 1, 3, withdrawn={"d3": 5.0})), 5.0)
    assert _decoders(router, start=0) == {"d1", "d2"}
    router.handle(PlanPublished(_plan(3, 1, 3)), 6.0)  # restored: no heartbeat in between
    assert "d3" in _decoders(router, start=100)


def test_the_gate_holds_newly_ready_decode_until_prefill_catches_up() -> None:
    # The plan wants 2P/6D (1:3); one prefill is ready, all six decode: at 25% tolerance one prefill
    # may have ceil(3 x 1.25) = 4 decode beside it.
    plan = _plan(1, 2, 6, tolerance=0.25)
    router = _router(plan, [_st("p1"), _st("p2", InstanceState.LOADING)], [_st(f"d{i}") for i in range(1, 7)])
    assert _decoders(router) == {"d1", "d2", "d3", "d4"}
    router.handle(heartbeat("ap", "eu", _st("p1"), _st("p2")), 2.0)  # the second prefill is ready
    assert _decoders(router, start=100) == {f"d{i}" for i in range(1, 7)}


def test_the_gate_never_hides_an_instance_that_already_serves() -> None:
    router = _router(_plan(1, 2, 6, tolerance=0.25), [_st("p1"), _st("p2")], [_st(f"d{i}") for i in range(1, 7)])
    router.handle(heartbeat("ap", "eu", _st("p1"), _st("p2", InstanceState.DRAINING)), 2.0)  # a prefill is lost
    assert _decoders(router) == {f"d{i}" for i in range(1, 7)}


def test_without_a_tolerance_in_the_plan_there_is_no_gate() -> None:
    router = _router(_plan(1, 2, 6), [_st("p1"), _st("p2", InstanceState.LOADING)], [_st(f"d{i}") for i in range(1, 7)])
    assert _decoders(router) == {f"d{i}" for i in range(1, 7)}


def test_the_gate_holds_back_prefill_too() -> None:
    router = _router(_plan(1, 2, 6, tolerance=0.0), [_st("p1"), _st("p2")], [_st("d1"), _st("d2", InstanceState.LOADING)])
    # one decode allows ceil(1 x 2/6) = 1 prefill: p2 waits
    used = set()
    for i in range(20):
        [action] = router.handle(RequestArrived(req(i, prompt=100, output=100)), 1.0)
        assert isinstance(action, Dispatch)
        used.add(action.instance_id)
    assert used == {"p1"}
