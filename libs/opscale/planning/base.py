"""The planning-policy contract."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from opscale.model import Observation, OperatorReplicas, PoolKey, Role

# (model, sku, tp, mean prompt tokens, mean output tokens) -> sustainable requests/s of one instance. One
# that serves disaggregated deployments also takes `role` (a keyword, Role.PREFILL or Role.DECODE): the
# rate of one instance doing that phase only (opscale.planning.capacity.CapacityEstimator does).
CapacityFn = Callable[[str, str, int, float, float], float]


def _sku_mapping(value: Any, info: ValidationInfo) -> Any:
    """compatible_skus as {SKU: tp}: a plain list (the common case, the same GPUs per instance) takes the
    pool's own tp; a mapping sets a tp per SKU."""
    if isinstance(value, list | tuple):
        return {name: info.data.get("tp", 1) for name in value}
    return value


CompatibleSkus = Annotated[dict[str, int], BeforeValidator(_sku_mapping)]


class RolePoolSpec(BaseModel):
    """One role's pool of a disaggregated deployment: its SKU, tensor-parallel degree and replica bounds
    per region, and the SKUs it may also run on when its own has no room (HeteroScale's heterogeneous
    allocation: the preferred GPU type first, then the compatible ones, in the order given)."""

    model_config = ConfigDict(extra="forbid")
    sku: str = Field(min_length=1, description="GPU SKU name from the catalogue (the preferred one)")
    tp: int = Field(1, description="Tensor-parallel degree (GPUs per instance)")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(64, ge=1)
    compatible_skus: CompatibleSkus = Field(
        default_factory=dict, description="SKUs an instance may run on when the preferred one has no room, in "
        "order of preference, each with its tensor-parallel degree (a list of names: the same `tp`)")

    @model_validator(mode="after")
    def _bounds(self) -> RolePoolSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        for name, tp in self.compatible_skus.items():
            if not name:
                raise ValueError("compatible_skus: a SKU name is empty")
            if name.casefold() == self.sku.casefold():
                raise ValueError(f"compatible_skus: {name!r} is the pool's own sku; list the other SKUs it may use")
            if tp not in (1, 2, 4, 8):
                raise ValueError(f"compatible_skus.{name}: tp must be 1, 2, 4 or 8, got {tp!r}")
        return self

    def choices(self) -> list[tuple[str, int]]:
        """(SKU, tp) an instance of this pool may take, the preferred first."""
        return [(self.sku, self.tp), *self.compatible_skus.items()]


_UNIFIED_SHAPE = ("sku", "tp", "min_replicas", "max_replicas", "compatible_skus")

# Which switch tier bounds a deployment group (PAPERS.md §3.6): its prefill and decode instances of one
# region live under one S1 (mini-pod) or one S2 (big-pod); "none": anywhere in the region.
SchedulingDomain = Literal["s1", "s2", "none"]


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
    compatible_skus: CompatibleSkus = Field(
        default_factory=dict, description="A unified deployment's other SKUs, as RolePoolSpec.compatible_skus")
    scheduling_domain: SchedulingDomain = Field(
        "s2", description="Disaggregated: the switch tier that holds each of its deployment groups (its prefill "
        "and decode instances of one region): one S1 (mini-pod), one S2 (big-pod), or none (anywhere)")
    domains: list[str] = Field(
        default_factory=list, description="Disaggregated: the S1 or S2 switches (per scheduling_domain) its groups "
        "may use; empty: any in its regions")

    @model_validator(mode="after")
    def _one_shape(self) -> DeploymentSpec:
        if (self.prefill is None) != (self.decode is None):
            missing = "decode" if self.decode is None else "prefill"
            raise ValueError(f"deployment {self.model!r}: a disaggregated deployment gives both 'prefill' and "
                             f"'decode'; '{missing}' is missing")
        if self.disaggregated:
            mixed = self._given(_UNIFIED_SHAPE)
            if mixed:
                raise ValueError(f"deployment {self.model!r}: {mixed} belong to a unified deployment; a "
                                 f"disaggregated one sets them per role under 'prefill' and 'decode'")
        elif self.sku is None:
            raise ValueError(f"deployment {self.model!r}: 'sku' is required (or 'prefill' and 'decode' for a "
                             f"disaggregated deployment)")
        elif self.min_replicas > self.max_replicas:
            raise ValueError(f"deployment {self.model!r}: min_replicas ({self.min_replicas}) is above "
                             f"max_replicas ({self.max_replicas})")
        if not self.disaggregated:
            grouping = self._given(("scheduling_domain", "domains"))
            if grouping:
                raise ValueError(f"deployment {self.model!r}: {grouping} bind a disaggregated deployment's "
                                 f"prefill and decode to one domain; a unified deployment has no pair to bind")
            try:
                self.pool(Role.UNIFIED)  # its compatible_skus are checked as a pool's
            except ValidationError as exc:
                raise ValueError(f"deployment {self.model!r}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
        elif self.domains and self.scheduling_domain == "none":
            raise ValueError(f"deployment {self.model!r}: domains {self.domains} need scheduling_domain s1 or s2, "
                             f"not 'none'")
        return self

    def _given(self, names: tuple[str, ...]) -> list[str]:
        """Which of `names` hold other than their defaults. Not `model_fields_set`: a dumped and reloaded
        deployment (an experiment variant's scenario) sets every field, to its default where not given."""
        return [f for f in names if getattr(self, f) != type(self).model_fields[f].get_default(call_default_factory=True)]

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
                                max_replicas=self.max_replicas, compatible_skus=self.compatible_skus)
        shape = self.prefill if role is Role.PREFILL else self.decode if role is Role.DECODE else None
        if shape is None:
            raise ValueError(f"deployment {self.model!r} has no {role} pool; its roles: "
                             f"{[r.value for r in self.roles()]}")
        return shape

    def skus(self) -> list[str]:
        """Every SKU its pools may run on (preferred and compatible)."""
        return sorted({sku for role in self.roles() for sku, _ in self.pool(role).choices()})

    def for_role(self, role: Role) -> DeploymentSpec:
        """A unified-shaped view of its pool of `role` (that pool's SKU, TP and bounds): what a per-pool
        policy sizes. Itself for its unified pool."""
        if not self.disaggregated and role is Role.UNIFIED:
            return self
        shape = self.pool(role)
        return DeploymentSpec(model=self.model, sku=shape.sku, tp=shape.tp, regions=self.regions,
                              min_replicas=shape.min_replicas, max_replicas=shape.max_replicas,
                              compatible_skus=shape.compatible_skus, typical_prompt_tokens=self.typical_prompt_tokens,
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
    # pool -> instances per (SKU, tp) the policy chose among the deployment's compatible ones (a policy that
    # picks SKUs: SageServe's MIP); placement grows and shrinks the pool toward that mix
    # (opscale.planning.placement.SkuMix). Empty: the deployment's own order of preference.
    sku_mix: dict[PoolKey, dict[tuple[str, int], int]] = field(default_factory=dict)
    # Soft scale-in (HeteroScale, PAPERS.md §3.5): > 0 makes a scale-in of ready instances first withdraw
    # them from discovery for this many seconds, restorable at once, before they are stopped
    # (opscale.planning.soft_scale_in); 0 stops them at once (drained, as every scale-in is).
    soft_scale_in_s: float = 0.0
    # model -> tolerance of the Ready-ratio gate routers apply to its disaggregated pools (Plan.ready_ratio_tolerance)
    ready_ratio_tolerance: dict[str, float] = field(default_factory=dict)
    # pool -> the elastic operator replicas to attach to its base instances, in total (operator-level
    # policies); the planner spreads them over the pool's instances (opscale.planning.operator_replicas).
    # Empty: the pool's instances run no operator replicas.
    operator_replicas: dict[PoolKey, tuple[OperatorReplicas, ...]] = field(default_factory=dict)
    # (region, sku, purchase) -> VMs the fleet should hold (a policy that buys VMs: SageServe's MIP, the
    # opscale policy); empty: leave the fleet's VMs as they are
    vm_counts: dict[tuple[str, str, str], int] = field(default_factory=dict)


class PlanningPolicy(Protocol):
    name: str

    def initial_state(self) -> Any: ...

    def decide(self, observation: Observation, state: Any, now_s: float) -> Effects: ...
