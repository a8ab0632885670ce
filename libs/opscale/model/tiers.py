"""Service tiers: the one home of their latency objectives.

The built-in tiers below are the only definition of the default TTFT and TBT objectives. Interactive
objectives follow the OpScale setting for a 7-8B model (P99 TTFT about 1-2 s, TBT 100 ms); the
latency-insensitive tier is judged only on finishing within its deadline (SageServe's NIW tier).

A scenario or the live settings carry a tier table (`TierList`, validated from YAML as `TierModel`s,
the built-in tiers by default); routers, aggregators, reports and planning policies receive that table
as `TierSpec`s, and a policy that defends an objective takes it from `latency_objective(tiers)`, never
from a number of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from opscale.model.request import TierSpec

INTERACTIVE = TierSpec("interactive", ttft_slo_s=2.0, tbt_slo_s=0.1, priority=0)
BATCH = TierSpec("batch", ttft_slo_s=600.0, tbt_slo_s=1.0, deadline_s=3600.0, priority=1)

DEFAULT_TIERS: dict[str, TierSpec] = {t.name: t for t in (INTERACTIVE, BATCH)}


class TierModel(BaseModel):
    """One tier as a config file spells it; `spec()` is the decision core's form."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The tier requests name (e.g. interactive): "
                      "letters, digits, '-' and '_', as it becomes a subject token and a metric label")
    ttft_slo_s: float = Field(gt=0, allow_inf_nan=False, description="Time-to-first-token objective, seconds")
    tbt_slo_s: float = Field(gt=0, allow_inf_nan=False, description="Time-between-tokens objective, seconds")
    deadline_s: float | None = Field(None, gt=0, allow_inf_nan=False, description="End-to-end deadline of "
                                     "latency-insensitive work; None: an interactive tier")
    priority: int = Field(0, description="Held requests of a lower priority are served first")

    @classmethod
    def of(cls, spec: TierSpec) -> TierModel:
        return cls(name=spec.name, ttft_slo_s=spec.ttft_slo_s, tbt_slo_s=spec.tbt_slo_s,
                   deadline_s=spec.deadline_s, priority=spec.priority)

    def spec(self) -> TierSpec:
        return TierSpec(self.name, self.ttft_slo_s, self.tbt_slo_s, self.deadline_s, self.priority)


def _distinct_names(tiers: list[TierModel]) -> list[TierModel]:
    seen: set[str] = set()
    for tier in tiers:
        if tier.name in seen:
            raise ValueError(f"tier {tier.name!r} appears twice; give each tier one entry")
        seen.add(tier.name)
    return tiers


TierList = Annotated[list[TierModel], Field(min_length=1), AfterValidator(_distinct_names)]
"""A config's tier table: at least one tier, names distinct."""


def default_tier_models() -> list[TierModel]:
    """The built-in tiers as a config's tier table (the default of every `TierList` field)."""
    return [TierModel.of(t) for t in DEFAULT_TIERS.values()]


def tier_table(tiers: Iterable[TierModel]) -> dict[str, TierSpec]:
    """The decision core's tiers by name."""
    return {t.name: t.spec() for t in tiers}


@dataclass(frozen=True, slots=True)
class LatencyObjective:
    """What capacity is sized for and what scaling policies defend: the strictest TTFT and TBT of the
    latency-sensitive tiers (those without a deadline; every tier when all have one).

    Example: interactive (TTFT 2 s, TBT 0.1 s) and batch (TTFT 600 s, TBT 1 s, deadline 3600 s) give
    TTFT 2 s and TBT 0.1 s; the batch tier's deadline, not its TBT, is what it is judged on.
    """

    ttft_slo_s: float
    tbt_slo_s: float


def latency_objective(tiers: Mapping[str, TierSpec]) -> LatencyObjective:
    if not tiers:
        raise ValueError("tiers: none given; the latency objective comes from at least one tier")
    sensitive = [t for t in tiers.values() if t.deadline_s is None] or list(tiers.values())
    return LatencyObjective(min(t.ttft_slo_s for t in sensitive), min(t.tbt_slo_s for t in sensitive))
