"""Registry of routing policies, chosen by name in config."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from opscale.routing.base import RoutingPolicy
from opscale.routing.policies import JoinShortestQueue, RoundRobin


class RoutingPolicyName(StrEnum):
    JSQ_TOKENS = "jsq_tokens"
    ROUND_ROBIN = "round_robin"


_FACTORIES: dict[RoutingPolicyName, Callable[[], RoutingPolicy]] = {
    RoutingPolicyName.JSQ_TOKENS: JoinShortestQueue,
    RoutingPolicyName.ROUND_ROBIN: RoundRobin,
}


def make_routing_policy(name: str) -> RoutingPolicy:
    try:
        key = RoutingPolicyName(name)
    except ValueError:
        known = ", ".join(n.value for n in RoutingPolicyName)
        raise ValueError(f"unknown routing policy {name!r}; known policies: {known}") from None
    return _FACTORIES[key]()
