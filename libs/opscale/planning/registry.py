"""Registry of planning policies, chosen by name in config."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any

from opscale.planning.base import CapacityFn, DeploymentSpec, PlanningPolicy


class PlanningPolicyName(StrEnum):
    REACTIVE = "reactive"
    STATIC = "static"


def _reactive(deployments: list[DeploymentSpec], capacity: CapacityFn, **params: Any) -> PlanningPolicy:
    from opscale.planning.reactive import ReactiveConfig, ReactivePolicy

    return ReactivePolicy(deployments, capacity, ReactiveConfig(**params))


def _static(deployments: list[DeploymentSpec], capacity: CapacityFn, **params: Any) -> PlanningPolicy:
    from opscale.planning.static import StaticPolicy

    return StaticPolicy(deployments, **params)


_FACTORIES: dict[PlanningPolicyName, Callable[..., PlanningPolicy]] = {
    PlanningPolicyName.REACTIVE: _reactive,
    PlanningPolicyName.STATIC: _static,
}


def make_planning_policy(name: str, deployments: list[DeploymentSpec], capacity: CapacityFn,
                         **params: Any) -> PlanningPolicy:
    try:
        key = PlanningPolicyName(name)
    except ValueError:
        known = ", ".join(n.value for n in PlanningPolicyName)
        raise ValueError(f"unknown planning policy {name!r}; known policies: {known}") from None
    return _FACTORIES[key](deployments, capacity, **params)
