"""The planning-policy contract."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, Field

from opscale.model import Observation, PoolKey

# (model, sku, tp, mean prompt tokens, mean output tokens) -> sustainable requests/s of one instance
CapacityFn = Callable[[str, str, int, float, float], float]


class DeploymentSpec(BaseModel):
    """How one model is deployed: on which SKU and tensor-parallel degree, in which regions, with which
    bounds on replicas per region."""

    model: str
    sku: str
    tp: int = Field(1, description="Tensor-parallel degree (GPUs per instance)")
    regions: list[str] = Field(default_factory=list, description="Regions that serve it; empty: all")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(64, ge=1)
    typical_prompt_tokens: float = Field(1024.0, gt=0, description="Used for capacity until traffic is seen")
    typical_output_tokens: float = Field(256.0, gt=0)


@dataclass(frozen=True, slots=True)
class Effects:
    """What a policy decided: desired replicas per pool, its new state, and why."""

    desired: dict[PoolKey, int]
    state: Any
    reasons: dict[PoolKey, str] = field(default_factory=dict)
    # (model, origin region) -> {serving region: share}, for a policy that plans routing across regions
    # (empty: keep the plan's current weights)
    routing_weights: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    # pool -> replicas it may grow to before the policy next re-plans (a forecasting policy knows): the
    # hosts that would take the growth stage the model's weights now, so the scale-out loads warm
    prepare: dict[PoolKey, int] = field(default_factory=dict)


class PlanningPolicy(Protocol):
    name: str

    def initial_state(self) -> Any: ...

    def decide(self, observation: Observation, state: Any, now_s: float) -> Effects: ...
