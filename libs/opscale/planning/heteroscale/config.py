"""The HeteroScale controller's configuration: its signal, per-instance target, P/D ratio, stability
settings and latency-feedback tiers. The role bounds are not here: they are the deployment's
(DeploymentSpec.prefill/decode min_replicas and max_replicas), handed to the controller as RoleBounds.

The per-instance target and the P/D ratio are per-service results of HeteroScale's stress test
(Algorithm 1), so they have no default; every other default is the one PAPERS.md §5 infers, cited field
by field. Validation names the field and the value it rejects.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# PAPERS.md §5: the per-instance TPS target comes from the stress test, at ~80% of the highest decode
# TPS one instance sustains while meeting TBT.
STRESS_TEST_TARGET_FRACTION = 0.8


def target_from_stress_test(max_tps_meeting_tbt: float, fraction: float = STRESS_TEST_TARGET_FRACTION) -> float:
    """The per-instance TPS target for a stress-tested service (PAPERS.md §5: ~80% of the max TPS meeting TBT)."""
    if not max_tps_meeting_tbt > 0:
        raise ValueError(f"max_tps_meeting_tbt: must be > 0, got {max_tps_meeting_tbt}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction: must be in (0, 1], got {fraction}")
    return max_tps_meeting_tbt * fraction


def parse_pd_ratio(value: object) -> object:
    """Accepts prefill instances per decode instance as a number, or as "P:D" ("1:3" is 1/3)."""
    if not isinstance(value, str):
        return value
    parts = value.split(":")
    try:
        prefill, decode = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"pd_ratio: {value!r} is neither a number nor 'P:D' (e.g. '1:3')") from None
    if not (prefill > 0 and decode > 0):
        raise ValueError(f"pd_ratio: {value!r} needs two positive numbers P:D")
    return prefill / decode


class FeedbackTier(BaseModel):
    """One tier of negative feedback: when the p99 reaches `over_objective` x the objective, add
    `capacity_step` x the current instances (at least one)."""

    model_config = ConfigDict(extra="forbid")
    over_objective: float = Field(gt=0, description="Threshold as a multiple of the latency objective")
    capacity_step: float = Field(gt=0, description="Capacity added, as a fraction of the current instances")


class LatencyFeedback(BaseModel):
    """Two tiers of negative feedback on one latency signal (PAPERS.md §3.5, §5)."""

    model_config = ConfigDict(extra="forbid")
    # PAPERS.md §5: TBT p99 > 1.1x SLO -> +10% capacity.
    moderate: FeedbackTier = FeedbackTier(over_objective=1.1, capacity_step=0.10)
    # PAPERS.md §5: TBT p99 > 1.3x SLO -> +20% capacity.
    severe: FeedbackTier = FeedbackTier(over_objective=1.3, capacity_step=0.20)

    @model_validator(mode="after")
    def _ordered(self) -> LatencyFeedback:
        if self.severe.over_objective <= self.moderate.over_objective:
            raise ValueError(f"severe.over_objective ({self.severe.over_objective}) must be above "
                             f"moderate.over_objective ({self.moderate.over_objective})")
        if self.severe.capacity_step < self.moderate.capacity_step:
            raise ValueError(f"severe.capacity_step ({self.severe.capacity_step}) must not be below "
                             f"moderate.capacity_step ({self.moderate.capacity_step})")
        return self


class HeteroScaleConfig(BaseModel):
    """How one disaggregated service (one model in one region) is scaled by HeteroScale's metric-driven
    policy. Capacity is counted in instances of the P/D group, both roles alike: the per-instance
    target is the signal's TPS the whole group sustains at the target ratio, divided by its instances."""

    model_config = ConfigDict(extra="forbid")
    signal: Literal["decode_tps", "prefill_missed_tps"] = Field(
        "decode_tps", description="decode_tps: output tokens/s (HeteroScale's production metric, PAPERS.md "
        "§3.4); prefill_missed_tps: prompt tokens/s that missed the prefix cache")
    decode_tps_per_instance: float | None = Field(
        None, gt=0, description="Decode TPS target per instance; required with signal decode_tps")
    prefill_missed_tps_per_instance: float | None = Field(
        None, gt=0, description="Cache-missed prefill TPS target per instance; required with signal "
        "prefill_missed_tps")
    pd_ratio: float = Field(gt=0, description="Target prefill instances per decode instance (1:3 is 1/3; "
                            "HeteroScale's optima range from 1:5 to 9:1, PAPERS.md §3.5)")
    # PAPERS.md §5: deadband of ±10% around the target; separate out and in fields are the hysteresis.
    scale_out_above: float = Field(0.10, ge=0, description="Scale out when the required instances exceed "
                                   "the current ones by more than this fraction")
    scale_in_below: float = Field(0.10, ge=0, lt=1, description="Scale in when the required instances fall "
                                  "below the current ones by more than this fraction")
    # PAPERS.md §5: cooldown 3 min out.
    scale_out_cooldown_s: float = Field(180.0, ge=0, description="Time after a scale-out before another "
                                        "scale-out (proportional or feedback)")
    # PAPERS.md §5: cooldown 10 min in.
    scale_in_cooldown_s: float = Field(600.0, ge=0, description="Time after any change (out or in) before a "
                                       "scale-in")
    # PAPERS.md §3.5 names damping but no value (§5 is silent): a shortfall closes at once, a surplus by half.
    scale_out_step_fraction: float = Field(1.0, gt=0, le=1, description="Share of a scale-out gap closed per "
                                           "decision (at least one instance)")
    scale_in_step_fraction: float = Field(0.5, gt=0, le=1, description="Share of a scale-in gap closed per "
                                          "decision (at least one instance)")
    # PAPERS.md §5: TBT p99 tiers 1.1x -> +10%, 1.3x -> +20%.
    tbt_feedback: LatencyFeedback = Field(default_factory=LatencyFeedback,
                                          description="Negative feedback on TBT p99 against the TBT objective")
    # PAPERS.md §3.4 ranks TTFT below TBT as a signal; the brief of issue #13 asks for it too, on the same
    # tiers as TBT (§5 gives none of its own). None turns it off.
    ttft_feedback: LatencyFeedback | None = Field(
        default_factory=LatencyFeedback, description="Negative feedback on TTFT p99; None: off")
    # PAPERS.md §5: engine period 30 s.
    period_s: float = Field(30.0, gt=0, description="How often the wiring should call the controller")

    @field_validator("pd_ratio", mode="before")
    @classmethod
    def _pd_ratio_text(cls, value: object) -> object:
        return parse_pd_ratio(value)

    @model_validator(mode="after")
    def _consistent(self) -> HeteroScaleConfig:
        if self.target_per_instance is None:
            raise ValueError(f"{self.signal}_per_instance: required when signal is {self.signal!r}")
        return self

    @property
    def target_per_instance(self) -> float | None:
        """The chosen signal's TPS target per instance."""
        if self.signal == "decode_tps":
            return self.decode_tps_per_instance
        return self.prefill_missed_tps_per_instance
