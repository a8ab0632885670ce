"""The optional hooks of routing policies are protocols (opscale.routing.hooks), which the router
checks once: every policy of the registry that defines a hook's method is an instance of that hook's
protocol (a policy that names a method right but misses the rest of its protocol would otherwise be
silently routed without it), and the router core finds each hook its policy has."""

from __future__ import annotations

import pytest

from opscale.routing import (
    IndexedRoutingPolicy,
    KvRoutingPolicy,
    LoadRoutingPolicy,
    RegionRoutingPolicy,
    RoutingPolicyName,
    make_routing_policy,
)
from opscale.services.router import RouterConfig, RouterCore

pytestmark = pytest.mark.unit

HOOKS = {"choose_indexed": IndexedRoutingPolicy, "choose_by_load": LoadRoutingPolicy,
         "choose_region": RegionRoutingPolicy, "observe_kv": KvRoutingPolicy}
# (NotingRoutingPolicy names one method, `note`: having it is being one, so it needs no check here)
# slo_aware's predictor reads the performance model unless given a fixed rate
PARAMS = {RoutingPolicyName.SLO_AWARE: {"prefill_tokens_per_s": 10_000.0}}


@pytest.mark.parametrize("name", list(RoutingPolicyName))
def test_a_policy_that_defines_a_hook_follows_its_protocol(name: RoutingPolicyName) -> None:
    policy = make_routing_policy(name, PARAMS.get(name))
    for method, protocol in HOOKS.items():
        assert hasattr(policy, method) == isinstance(policy, protocol), (name, method)


def test_the_router_finds_the_hooks_of_its_policy() -> None:
    jsq = RouterCore(RouterConfig(policy="jsq_tokens"))
    assert jsq._choose_by_load is not None and jsq._index_policy is None and jsq._choose_region is None
    slo = RouterCore(RouterConfig(policy="slo_aware", policy_params=PARAMS[RoutingPolicyName.SLO_AWARE]))
    assert slo._index_policy is slo.policy and slo._note is not None and slo._choose_by_load is None
    region = RouterCore(RouterConfig(policy="multi_region", policy_params={"inner": "least_kv"}))
    assert region._choose_region is not None and region._chooser is region.policy.inner  # type: ignore[attr-defined]
    assert region._index_policy is region._chooser and region._note is None
