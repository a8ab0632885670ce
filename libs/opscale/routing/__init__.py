"""Routing policies: pick an instance for a request from the candidates the router holds.

Policies are pure and fast (the router decides per request, target < 50 µs); they never do I/O.
"""

from opscale.routing.base import Candidate, RoutingPolicy
from opscale.routing.registry import RoutingPolicyName, make_routing_policy

__all__ = ["Candidate", "RoutingPolicy", "RoutingPolicyName", "make_routing_policy"]
