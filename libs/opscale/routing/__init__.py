"""Routing policies: pick an instance for a request from the candidates the router holds, and order
the requests it holds while no instance can take them.

Policies are pure and fast (the router decides per request, target < 50 µs); they never do I/O.
"""

from opscale.routing.base import Candidate, CandidateIndex, LoadIndex, RoutingPolicy
from opscale.routing.hold_queue import HoldQueue
from opscale.routing.hooks import (
           IndexedRoutingPolicy,
           KvRoutingPolicy,
           LoadRoutingPolicy,
           NotingRoutingPolicy,
           RegionRoutingPolicy,
)
from opscale.routing.registry import HoldOrderName, RoutingPolicyName, make_hold_queue, make_routing_policy

__all__ = ["Candidate", "CandidateIndex", "HoldOrderName", "HoldQueue", "IndexedRoutingPolicy", "KvRoutingPolicy",
           "LoadIndex",
           "LoadRoutingPolicy", "NotingRoutingPolicy", "RegionRoutingPolicy", "RoutingPolicy", "RoutingPolicyName",
           "make_hold_queue", "make_routing_policy"]
