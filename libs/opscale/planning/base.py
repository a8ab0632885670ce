"""The planning-policy contract."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from opscale.model import Observation, PoolKey, Role

# (model, sku, tp, mean prompt tokens, mean output tokens) -> sustainable requests/s of one instance. One
# that serves disaggregated deployments also takes `role` (a keyword, Role.PREFILL or Role.DECODE): the
# rate of one instance doing that phase only (opscale.planning.capacity.CapacityEstimator does).
CapacityFn = Callable[[str, str, int, float, float], float]


class RolePoolSpec(BaseModel):
    """One role's pool of a disaggregated deployment: its SKU, tensor-parallel degree and replica bounds
    per region."""

    model_config = ConfigDict(extra="forbid")
    sku: str = Field(min_length=1, description="GPU SKU name from the catalogue")
    tp: int = Field(1, description="Tensor-parallel degree (GPUs per instance)")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> RolePoolSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


_UNIFIED_SHAPE = ("sku", "tp", "min_replicas", "max_replicas")


class DeploymentSpec(BaseModel):
    """How one model is deployed: on which SKU and tensor-parallel degree, in which regions, with which
    bounds on replicas per region.

    A disaggregated deployment (HeteroScale, Splitwise) gives `prefill` and `decode` instead of `sku`,
    `tp` and the replica bounds: two pools per region, each with its own SKU, TP and bounds. A request
    is prefilled on a prefill instance and decoded on a decode instance, its KV moved between them.
    `pool(role)` is each pool's shape, the one place that tells the two kinds apart.
    """

    model: str
    sku: str | None = Field(None, min_length=1, description="GPU SKU of a unified deployment")
    tp: int = Field(1, description="Tensor-parallel degree (GPUs per instance)")
    regions: list[str] = Field(default_factory=list, description="Regions that serve it; empty: all")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(64, ge=1)
    typical_prompt_tokens: float = Field(1024.0, gt=0, description="Used for capacity until traffic is seen")
    typical_output_tokens: float = Field(256.0, gt=0)
    prefill: RolePoolSpec | None = Field(None, description="Disaggregated: the prefill pool (with `decode`)")
    decode: RolePoolSpec | None = Field(None, description="Disaggregated: the decode pool (with `prefill`)")

    @model_validator(mode="after")
    def _one_shape(self) -> DeploymentSpec:
        if (self.prefill is None) != (self.decode is None):
            missing = "decode" if self.decode is None else "prefill"
            raise ValueError(f"deployment {self.model!r}: a disaggregated deployment gives both 'prefill' and "
                             f"'decode'; '{missing}' is missing")
        if self.disaggregated:
            # Set to something else than its default: a deployment dumped and validated again (a scenario
            # merged with overrides) carries the defaults as set fields, and those say nothing.
            defaults = type(self).model_fields
            mixed = [f for f in _UNIFIED_SHAPE if f in self.model_fields_set and getattr(self, f) != defaults[f].default]
            if mixed:
                raise ValueError(f"deployment {self.model!r}: {mixed} belong to a unified deployment; a "
                                 f"disaggregated one sets them per role under 'prefill' and 'decode'")
        elif self.sku is None:
            raise ValueError(f"deployment {self.model!r}: 'sku' is required (or 'prefill' and 'decode' for a "
                             f"disaggregated deployment)")
        elif self.min_replicas > self.max_replicas:
            raise ValueError(f"deployment {self.model!r}: min_replicas ({self.min_replicas}) is above "
                             f"max_replicas ({self.max_replicas})")
        return self

    @property
    def disaggregated(self) -> bool:
        return self.prefill is not None

    def roles(self) -> tuple[Role, ...]:
        """The roles of its pools: (UNIFIED,) or (PREFILL, DECODE)."""
        return (Role.PREFILL, Role.DECODE) if self.disaggregated else (Role.UNIFIED,)

    def pool(self, role: Role) -> RolePoolSpec:
        """The shape of its pool of `role`. A role it has no pool of is a ValueError naming both."""
        if role is Role.UNIFIED and not self.disaggregated:
            assert self.sku is not None  # the validator requires it
            return RolePoolSpec(sku=self.sku, tp=self.tp, min_replicas=self.min_replicas,
                                max_replicas=self.max_replicas)
        shape = self.prefill if role is Role.PREFILL else self.decode if role is Role.DECODE else None
        if shape is None:
            raise ValueError(f"deployment {self.model!r} has no {role} pool; its roles: "
                             f"{[r.value for r in self.roles()]}")
        return shape

    def skus(self) -> list[str]:
        """Every SKU its pools run on."""
        return sorted({self.pool(role).sku for role in self.roles()})

    def for_role(self, role: Role) -> DeploymentSpec:
        """A unified-shaped view of its pool of `role` (that pool's SKU, TP and bounds): what a per-pool
        policy sizes. Itself for its unified pool."""
        if not self.disaggregated and role is Role.UNIFIED:
            return self
        shape = self.pool(role)
        return DeploymentSpec(model=self.model, sku=shape.sku, tp=shape.tp, regions=self.regions,
                              min_replicas=shape.min_replicas, max_replicas=shape.max_replicas,
                              typical_prompt_tokens=self.typical_prompt_tokens,
                              typical_output_tokens=self.typical_output_tokens)


def refuse_disaggregated(policy: str, deployments: list[DeploymentSpec]) -> None:
    """For a policy that sizes unified pools only: a disaggregated deployment is a ValueError naming it."""
    split = [d.model for d in deployments if d.disaggregated]
    if split:
        raise ValueError(f"planning policy {policy!r} sizes unified deployments only; {split} are disaggregated "
                         f"(prefill/decode): use 'heteroscale', 'pd_hpa', 'reactive' or 'static' for them")


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
    # Soft scale-in (HeteroScale, PAPERS.md §3.5): > 0 makes a scale-in of ready instances first withdraw
    # them from discovery for this many seconds, restorable at once, before they are stopped
    # (opscale.planning.soft_scale_in); 0 stops them at once (drained, as every scale-in is).
    soft_scale_in_s: float = 0.0
    # model -> tolerance of the Ready-ratio gate routers apply to its disaggregated pools (Plan.ready_ratio_tolerance)
    ready_ratio_tolerance: dict[str, float] = field(default_factory=dict)


class PlanningPolicy(Protocol):
    name: str

    def initial_state(self) -> Any: ...

    def decide(self, observation: Observation, state: Any, now_s: float) -> Effects: ...
