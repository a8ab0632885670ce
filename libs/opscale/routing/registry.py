"""Registries of the router's pluggable policies, chosen by name in config:

- routing policies (RouterConfig.policy, params in RouterConfig.policy_params): which instance serves
  a request;
- hold orders (RouterConfig.hold_order, params in RouterConfig.hold_order_params): in which order held
  requests are dispatched and how long each may wait. tier_priority is one of these, not an instance
  choice: it orders the router's hold queue.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any

from opscale.model import TierSpec
from opscale.model.tiers import DEFAULT_TIERS
from opscale.routing.base import RoutingPolicy
from opscale.routing.hold_queue import FifoHoldQueue, HoldQueue, TierPriorityHoldQueue
from opscale.routing.kv_aware import KvAware
from opscale.routing.multi_region import MultiRegion
from opscale.routing.pd_pairing import PdPairing
from opscale.routing.policies import (
    JoinShortestQueue,
    LeastKvUsage,
    PowerOfTwoChoices,
    RandomChoice,
    RoundRobin,
)
from opscale.routing.prefix_affinity import PrefixAffinity


class RoutingPolicyName(StrEnum):
    JSQ_TOKENS = "jsq_tokens"
    ROUND_ROBIN = "round_robin"
    RANDOM = "random"
    POWER_OF_TWO = "power_of_two"
    LEAST_KV = "least_kv"
    PREFIX_AFFINITY = "prefix_affinity"
    KV_AWARE = "kv_aware"
    SLO_AWARE = "slo_aware"
    PD_PAIRING = "pd_pairing"
    MULTI_REGION = "multi_region"


class HoldOrderName(StrEnum):
    FIFO = "fifo"
    TIER_PRIORITY = "tier_priority"


def _slo_aware(tiers: Mapping[str, TierSpec], prefill_tokens_per_s: float | None = None,
               fallback_tokens_per_s: float = 20_000.0, reference_tokens: int = 2048) -> RoutingPolicy:
    # the performance model is only imported when this policy is chosen
    from opscale.routing.slo_aware import (
        FixedPrefillThroughput,
        PerfPrefillThroughput,
        SloAware,
        TtftPredictor,
    )

    predictor: TtftPredictor = (
        FixedPrefillThroughput(prefill_tokens_per_s) if prefill_tokens_per_s is not None
        else PerfPrefillThroughput(reference_tokens=reference_tokens, fallback_tokens_per_s=fallback_tokens_per_s))
    return SloAware(predictor, tiers)


def _multi_region(tiers: Mapping[str, TierSpec], inner: str = RoutingPolicyName.JSQ_TOKENS,
                  inner_params: dict[str, Any] | None = None, **params: Any) -> RoutingPolicy:
    if inner == RoutingPolicyName.MULTI_REGION:
        raise ValueError("multi_region: inner must be a per-region policy, not multi_region")
    return MultiRegion(make_routing_policy(inner, inner_params, tiers=tiers), **params)


# Each factory takes the service tiers (used by those that judge SLOs) and the policy's own params.
_FACTORIES: dict[RoutingPolicyName, Callable[..., RoutingPolicy]] = {
    RoutingPolicyName.JSQ_TOKENS: lambda tiers, **p: JoinShortestQueue(**p),
    RoutingPolicyName.ROUND_ROBIN: lambda tiers, **p: RoundRobin(**p),
    RoutingPolicyName.RANDOM: lambda tiers, **p: RandomChoice(**p),
    RoutingPolicyName.POWER_OF_TWO: lambda tiers, **p: PowerOfTwoChoices(**p),
    RoutingPolicyName.LEAST_KV: lambda tiers, **p: LeastKvUsage(**p),
    RoutingPolicyName.PREFIX_AFFINITY: lambda tiers, **p: PrefixAffinity(**p),
    RoutingPolicyName.KV_AWARE: lambda tiers, **p: KvAware(**p),
    RoutingPolicyName.SLO_AWARE: _slo_aware,
    RoutingPolicyName.PD_PAIRING: lambda tiers, **p: PdPairing(**p),
    RoutingPolicyName.MULTI_REGION: _multi_region,
}


def _lookup(enum: type[StrEnum], name: str, what: str) -> Any:
    try:
        return enum(name)
    except ValueError:
        known = ", ".join(n.value for n in enum)  # type: ignore[attr-defined]
        raise ValueError(f"unknown {what} {name!r}; known: {known}") from None


def _build(factory: Callable[..., Any], what: str, name: str, *args: Any, **params: Any) -> Any:
    if "name" in params:
        raise ValueError(f"{what} {name!r}: 'name' is not a parameter")
    try:
        return factory(*args, **params)
    except TypeError as exc:  # an unknown or missing parameter: say which policy and what was given
        raise ValueError(f"{what} {name!r}: bad parameters {sorted(params)}: {exc}") from None


def make_routing_policy(name: str, params: Mapping[str, Any] | None = None, *,
                        tiers: Mapping[str, TierSpec] | None = None) -> RoutingPolicy:
    """The routing policy called `name`, built with `params` (its dataclass fields; see each policy)."""
    key = _lookup(RoutingPolicyName, name, "routing policy")
    return _build(_FACTORIES[key], "routing policy", name, tiers if tiers is not None else DEFAULT_TIERS,
                  **dict(params or {}))


def make_hold_queue(name: str, pending_timeout_s: float, params: Mapping[str, Any] | None = None, *,
                    tiers: Mapping[str, TierSpec] | None = None) -> HoldQueue:
    """A hold queue of the order called `name`; `params` are that order's own (tier_priority:
    deadline_slack_s, deadline_fraction)."""
    key = _lookup(HoldOrderName, name, "hold order")
    if key is HoldOrderName.FIFO:
        return _build(FifoHoldQueue, "hold order", name, pending_timeout_s, **dict(params or {}))
    return _build(TierPriorityHoldQueue, "hold order", name, pending_timeout_s,
                  tiers if tiers is not None else DEFAULT_TIERS, **dict(params or {}))
