"""The `operators:` section of an experiment config: which variants are the operator-level policy and its
model-level baseline, and what the operator planner's tables are computed on
(`opscale.experiments.operator_tables` computes them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class PaperFigures(BaseModel):
    """P1's headline figures (PAPERS.md §1.5), printed beside ours."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    fewer_gpus_pct: float = Field(40.0, description="'up to 40% fewer GPUs' at equal SLOs")
    less_energy_pct: float = Field(35.0, description="'35% less energy' at equal SLOs")
    throughput_ratio: float = Field(1.6, gt=0, description="'1.6x throughput' at a fixed GPU budget")


class OperatorTablesConfig(BaseModel):
    """The operator planner's tables beside an experiment's variants (see operator_tables)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    operator_variant: str = Field("operator_level", min_length=1, description="The variant running "
                                  "`operator_level`; its policy_params give the planner's settings")
    model_variant: str = Field("model_level", min_length=1, description="The variant running its baseline, "
                               "`model_level`")
    oracle_rps: tuple[float, ...] = Field((5.0, 10.0, 20.0, 40.0), min_length=1, description="Arrival rates "
                                          "(req/s) of the small cases on which the greedy search is compared "
                                          "with the exhaustive oracle")
    fixed_gpus: dict[str, int] = Field(default_factory=dict, description="Per model, the GPU budget of the "
                                       "throughput comparison; a model not named: the GPUs the model-level "
                                       "plan needs at the traffic's peak rate")
    max_rps: float = Field(2000.0, gt=0, description="The throughput search looks no higher than this rate")
    paper: PaperFigures = Field(default_factory=PaperFigures)

    @field_validator("oracle_rps")
    @classmethod
    def _positive_rates(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        bad = [r for r in value if not r > 0]
        if bad:
            raise ValueError(f"rates must be positive req/s, got {bad[0]!r}")
        return value

    @field_validator("fixed_gpus")
    @classmethod
    def _positive_budgets(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {m: g for m, g in value.items() if g < 1}
        if bad:
            raise ValueError(f"GPU budgets must be at least 1, got {bad}")
        return value
