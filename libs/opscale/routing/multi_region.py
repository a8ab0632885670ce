"""Multi-region routing: serve a request in its own region first and spill to another region only
when every local instance is saturated or none is ready, paying a latency penalty for the crossing;
spilled requests are shared among the regions the planner chose, by its weights.

The router feeds it (see RouterCore): for each request, the least outstanding tokens of an instance in
every region that has a ready instance of the model, and the planner's weights for the request's
(model, origin region) from the newest Plan's `routing_weights` ({region: weight}); None before any
plan names that pair, and then every region weighs the same. The instance inside the chosen region is
picked by the `inner` policy (join-shortest-queue by default).

Rules, with L the least outstanding tokens of a local instance:
1. L < saturation_tokens: stay local.
2. Otherwise a remote region r is eligible when its weight is above 0, its least-loaded instance is
   below saturation_tokens, and (when there is a local instance) that load plus spill_penalty_tokens is
   below L (spilling must pay for the crossing). Eligible regions share the spilled requests in
   proportion to their weights (smooth weighted round-robin, deterministic).
3. No eligible region: stay local when there is a local instance; otherwise the remote region with the
   least load plus penalty, whatever the weights (a request with nowhere local to go is never held
   while a remote instance is ready).

With `follow_plan`, the planner's shares come first, as SageServe's region router sends each region the
share of demand its ILP assigned: while any region the plan gives a weight has an instance below
saturation_tokens, requests go to those regions in proportion to their weights (the origin among them
when the plan keeps a share at home); the rules above apply only when none does, or before the plan names
the pair. Use it with a planner that sizes every region for its planned share (sageserve_mip with
rtt_budget_ms > 0); otherwise the remote share would be unprovisioned.

`spill_penalty_tokens` expresses the cross-region latency as queued work: a penalty of s seconds on
instances that serve t tokens/s is worth about s * t tokens (0.08 s * 25 000 tokens/s = 2 000).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from opscale.model import Request
from opscale.routing.base import Candidate, RegionLoad, RoutingPolicy


@dataclass(slots=True)
class MultiRegion:
    inner: RoutingPolicy
    saturation_tokens: int = 32_768
    spill_penalty_tokens: int = 2_000
    follow_plan: bool = False
    name: str = "multi_region"
    # smooth weighted round-robin state per (model, origin): region -> current credit
    _credit: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.saturation_tokens < 1:
            raise ValueError(f"multi_region: saturation_tokens must be >= 1, got {self.saturation_tokens!r}")
        if self.spill_penalty_tokens < 0:
            raise ValueError(f"multi_region: spill_penalty_tokens must be >= 0, got {self.spill_penalty_tokens!r}")

    def choose(self, request: Request, candidates: list[Candidate]) -> Candidate:
        """Within one region's candidates (or any list the caller already narrowed): the inner policy."""
        return self.inner.choose(request, candidates)

    def choose_region(self, request: Request, regions: Mapping[str, RegionLoad],
                      weights: Mapping[str, float] | None) -> str | None:
        """The region to serve `request` in (see the module docstring), or None when no region has a
        ready instance."""
        origin = request.region
        saturation = self.saturation_tokens
        if self.follow_plan and weights:
            planned = [(region, weight) for region, weight in weights.items()
                       if weight > 0 and (load := regions.get(region)) is not None and load.least() < saturation]
            if planned:
                return planned[0][0] if len(planned) == 1 else self._share(request, planned)
        local = regions.get(origin)
        local_least = local.least() if local is not None else None
        if local_least is not None and local_least < saturation:
            return origin
        penalty = self.spill_penalty_tokens
        eligible: list[tuple[str, float]] = []
        fallback, fallback_cost = None, math.inf
        for region, load in regions.items():
            if region == origin:
                continue
            cost = load.least() + penalty
            if cost < fallback_cost:
                fallback, fallback_cost = region, cost
            weight = 1.0 if weights is None else weights.get(region, 0.0)
            if weight > 0 and cost - penalty < saturation and (local_least is None or cost < local_least):
                eligible.append((region, weight))
        if eligible:
            return eligible[0][0] if len(eligible) == 1 else self._share(request, eligible)
        return origin if local is not None else fallback

    def _share(self, request: Request, eligible: list[tuple[str, float]]) -> str:
        """Smooth weighted round-robin (as nginx balances upstreams): each region gains its weight in
        credit, the richest is chosen and pays the total. Over any run the shares follow the weights."""
        credit = self._credit.setdefault((request.model, request.region), {})
        total = 0.0
        best, best_credit = eligible[0][0], -math.inf
        for region, weight in eligible:
            total += weight
            c = credit[region] = credit.get(region, 0.0) + weight
            if c > best_credit:
                best, best_credit = region, c
        credit[best] -= total
        return best
