"""Planners: decide replicas (and later VMs, routing weights and operator groups) from observations.

Every policy is `decide(observation, state, now_s) -> Effects`: pure, with its state returned rather
than mutated, so a planner restart or a golden decision trace replays it exactly.
"""

from opscale.planning.base import DeploymentSpec, Effects, PlanningPolicy
from opscale.planning.registry import PlanningPolicyName, make_planning_policy
from opscale.planning.stack import PlanningStack, build_planning_stack, capacity_estimator

__all__ = ["DeploymentSpec", "Effects", "PlanningPolicy", "PlanningPolicyName", "PlanningStack", "build_planning_stack",
           "capacity_estimator", "make_planning_policy"]
