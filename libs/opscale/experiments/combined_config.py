"""The `combined:` section of an experiment config: which variant is the combined policy, which are the
single-paper policies it is measured against, and the acceptance it must meet (issue 17):
its latency tier's SLO attainment at least every other variant's (but those exempted, as `static`), and
at least `gpu_hours_saving` fewer GPU-hours than the best single-paper variant that meets the SLO target.
`opscale.experiments.combined_summary` evaluates it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CombinedComparison(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    variant: str = Field("opscale", min_length=1, description="The combined policy's variant")
    single_paper: tuple[str, ...] = Field(min_length=1, description="Each paper's best policy's variant")
    slo_exempt: tuple[str, ...] = Field(("static",), description="Variants whose SLO attainment the combined "
                                        "one need not reach (static holds peak capacity all the time)")
    slo_target: float = Field(0.99, gt=0, le=1, description="SLO attainment (the latency tier's) a variant must "
                              "reach to count as meeting the SLO")
    gpu_hours_saving: float = Field(0.10, ge=0, lt=1, description="Fewer GPU-hours, as a fraction, than the best "
                                    "single-paper variant meeting the SLO target")
