"""Configs of the two HeteroScale studies shipped as experiments (`study: heteroscale-metrics` or
`study: heteroscale-ratio` in the YAML), validated with pydantic. `opscale experiment run NAME` runs a
config with a `study` key as a study, any other as a comparison of planning policies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from opscale.engine import EngineConfig
from opscale.experiments.comparison import ExperimentError
from opscale.experiments.scenario import ScenarioError, read_yaml, validation_message
from opscale.experiments.stress import ProbeSettings, Service
from opscale.experiments.stress_traffic import RateSchedule, WorkloadMix
from opscale.model import TierModel
from opscale.perf.transfer import TransferParams
from opscale.planning.base import RolePoolSpec


class RoleShape(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: str = Field(min_length=1, description="GPU SKU of the role's instances")
    tp: int = Field(1, ge=1, description="GPUs per instance")


class ServiceConfig(BaseModel):
    """The disaggregated service studied: its model, each role's instance shape and its latency tier."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    prefill: RoleShape
    decode: RoleShape
    tier: TierModel = Field(default_factory=lambda: TierModel(name="interactive", ttft_slo_s=2.0, tbt_slo_s=0.1))
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig(emit_tokens=False))
    transfer: TransferParams = Field(default_factory=TransferParams)

    def service(self) -> Service:
        return Service(self.model, RolePoolSpec(sku=self.prefill.sku, tp=self.prefill.tp),
                       RolePoolSpec(sku=self.decode.sku, tp=self.decode.tp), self.tier.spec(), self.engine,
                       self.transfer)


class ProbeConfig(BaseModel):
    """A constant-load probe of the stress test (stress.ProbeSettings)."""

    model_config = ConfigDict(extra="forbid")
    warmup_s: float = Field(30.0, gt=0)
    measure_s: float = Field(90.0, gt=0, description="A multiple of warmup_s")
    drain_s: float = Field(60.0, ge=0)
    rel_tol: float = Field(0.03, gt=0, lt=1, description="Bisection stops when hi/lo - 1 is below this")

    def settings(self, seed: int) -> ProbeSettings:
        return ProbeSettings(self.warmup_s, self.measure_s, self.drain_s, seed)


class _StudyBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    description: str = ""
    seed: int = 0
    data_dir: Path | None = Field(None, description="Root of the real data (shared/data layout), relative to the "
                                  "working directory; a mix whose file is absent uses its lognormal fallback")
    service: ServiceConfig
    probe: ProbeConfig = Field(default_factory=ProbeConfig)


class SignalThresholds(BaseModel):
    """What a usable proportional-scaling signal shows (signal_stats): linear in the load, proportional to
    it, and well above its noise."""

    model_config = ConfigDict(extra="forbid")
    min_r2: float = Field(0.9, ge=0, le=1)
    min_snr: float = Field(5.0, ge=0)
    elasticity: tuple[float, float] = Field((0.7, 1.3), description="Accepted log-log slope against the load")


class LoadConfig(BaseModel):
    """The load ramp: `points` are (time s, rate) with rates as fractions of `peak_rps` or, without it, of the
    fleet's highest SLO-meeting rate (found first by the stress test's bisection)."""

    model_config = ConfigDict(extra="forbid")
    points: tuple[tuple[float, float], ...] = Field(min_length=2)
    peak_rps: float | None = Field(None, gt=0, description="The rate a point of 1.0 is; None: the stress test's edge")
    steps_s: tuple[float, ...] = Field((), description="Times of the steps whose response is measured")
    settle_s: float = Field(120.0, gt=0, description="Windows either side of a step used for its levels")

    @model_validator(mode="after")
    def _valid_schedule(self) -> LoadConfig:
        RateSchedule(points=self.points)
        return self


class MetricsStudyConfig(_StudyBase):
    """heteroscale-metrics: every candidate signal, windowed, under a load ramp on a fixed fleet."""

    study: Literal["heteroscale-metrics"]
    mix: WorkloadMix
    prefill_instances: int = Field(ge=1)
    decode_instances: int = Field(ge=1)
    window_s: float = Field(10.0, gt=0, description="Sampling window (engines report over the same window)")
    load: LoadConfig
    max_lag_windows: int = Field(6, ge=0)
    thresholds: SignalThresholds = Field(default_factory=SignalThresholds)
    # PAPERS.md §3.4's verdicts, printed beside ours.
    paper: dict[str, str] = Field(default_factory=dict, description="signal -> the paper's verdict")


class RatioStudyConfig(_StudyBase):
    """heteroscale-ratio: the highest SLO-meeting throughput at each P/D split of an instance budget, per mix."""

    study: Literal["heteroscale-ratio"]
    mixes: list[WorkloadMix] = Field(min_length=1)
    instances: int = Field(8, ge=2, description="Instance budget split every way into P and D")
    objective: Literal["per_gpu", "per_dollar"] = "per_gpu"

    @model_validator(mode="after")
    def _distinct(self) -> RatioStudyConfig:
        names = [m.name for m in self.mixes]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"mixes: names {twice} appear more than once")
        return self


StudyConfig = Annotated[MetricsStudyConfig | RatioStudyConfig, Field(discriminator="study")]
_STUDY = TypeAdapter(StudyConfig)


def load_study(path: Path) -> MetricsStudyConfig | RatioStudyConfig | None:
    """The study at `path`, or None when the YAML is not a study (no `study` key: a policy comparison)."""
    try:
        data: Any = read_yaml(path, "experiment config")
    except ScenarioError as exc:
        raise ExperimentError(str(exc)) from None
    if not isinstance(data, dict) or "study" not in data:
        return None
    try:
        return _STUDY.validate_python(data)
    except ValidationError as exc:
        raise ExperimentError(validation_message(exc, f"experiment config {path}")) from None
