"""Experiment configs: one base scenario (the fleet, the traffic and the seed) and the variants compared
on it (a planning policy each, with optional routing and other scenario overrides), validated from YAML.

What must be equal for a fair comparison is fixed here: a variant may not change the traffic, the seed or
the duration. Running the variants is variant_runner.py's job; this module only builds their scenarios.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from opscale.experiments.combined_config import CombinedComparison
from opscale.experiments.operator_tables_config import OperatorTablesConfig
from opscale.experiments.scenario import Scenario, ScenarioError, load_scenario, read_yaml, validation_message

# Fields that define the traffic every variant sees; a variant overriding them would compare apples
# with oranges.
FIXED_FIELDS = frozenset({"seed", "workload", "trace", "shaped", "duration_s", "name"})
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ExperimentError(ValueError):
    """An experiment that cannot run: the message names the file and the field."""


class Variant(BaseModel):
    """One policy to compare: its name (a folder name in the output), planning policy and overrides."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Unique; names the variant's output folder")
    policy: str = Field(min_length=1, description="Planning policy (opscale.planning.registry)")
    policy_params: dict[str, Any] = Field(default_factory=dict)
    routing_policy: str | None = Field(None, description="Routing policy; None: the base scenario's")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Other Scenario fields, merged into "
                                      "the base (nested mappings merge key by key)")

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        if not _VARIANT_NAME.match(value):
            raise ValueError(f"{value!r} must be a folder name: letters, digits, '_', '.', '-'")
        return value

    @field_validator("overrides")
    @classmethod
    def _not_the_traffic(cls, value: dict[str, Any]) -> dict[str, Any]:
        fixed = sorted(FIXED_FIELDS & set(value))
        if fixed:
            raise ValueError(f"{fixed} are the same for every variant (the traffic, seed and duration); set them "
                             f"in the base scenario")
        unknown = sorted(set(value) - set(Scenario.model_fields))
        if unknown:
            raise ValueError(f"unknown scenario fields {unknown}")
        return value


class ReferenceFigure(BaseModel):
    """A published figure, and which of our variants and metric answer it: ours is the change of `metric`
    for each of `variants` against `baseline`, relative (percent of the baseline: "41% higher cost per
    token") or in percentage points (`change: points`, for a metric that is itself a fraction: "GPU
    utilisation +26.6 pp" is 0.50 -> 0.766)."""

    model_config = ConfigDict(extra="forbid")
    claim: str = Field(min_length=1, description="The published figure, quoted")
    source: str = Field(min_length=1, description="Where it is published")
    metric: str = Field(min_length=1, description="result.json key compared (e.g. gpu_hours, scaling_gpu_s)")
    variants: list[str] = Field(min_length=1, description="Our variants whose change is reported")
    baseline: str = Field(min_length=1, description="Our variant the change is measured against")
    change: Literal["relative", "points"] = Field("relative", description="relative: percent of the baseline; "
                                                  "points: percentage points of a fraction (utilisation)")
    paper_change_pct: float | None = Field(None, description="The published change (negative: less): percent, or "
                                           "percentage points with change: points")


class AcceptanceCheck(BaseModel):
    """A criterion the experiment must meet, checked on the results and printed plainly (PASS / FAIL):
    `metric` of `variant` stands in `relation` to `factor` x the same metric of `baseline` (e.g. GPU-hours
    <= 0.85 x the baseline's). `metric` is a result.json key, dotted for a nested one
    (`tiers.interactive.slo_attainment`)."""

    model_config = ConfigDict(extra="forbid")
    claim: str = Field(min_length=1, description="What is checked, in words")
    metric: str = Field(min_length=1, description="result.json key, dotted for a nested one")
    variant: str = Field(min_length=1, description="Our variant checked")
    baseline: str = Field(min_length=1, description="The variant it is checked against")
    relation: Literal["<", "<=", ">", ">="] = Field(description="ours <relation> factor x baseline's")
    factor: float = Field(1.0, gt=0, allow_inf_nan=False, description="Multiplies the baseline's value")


class ExperimentScale(BaseModel):
    """Another size of the experiment's setting (`opscale experiment run CONFIG --scale NAME`): scenario
    fields laid over the base, the traffic, seed and duration included, so every variant runs the scaled
    setting. Mappings merge key by key; a list (hosts, deployments, shaped.streams) is replaced whole."""

    model_config = ConfigDict(extra="forbid")
    description: str = Field("", description="What this scale is, in words (printed nowhere: for the reader)")
    base: dict[str, Any] = Field(min_length=1, description="Scenario fields laid over the base scenario")

    @field_validator("base")
    @classmethod
    def _known_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(Scenario.model_fields))
        if unknown:
            raise ValueError(f"unknown scenario fields {unknown}")
        return value


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("experiment", min_length=1)
    description: str = ""
    base: Scenario | None = Field(None, description="The base scenario, inline")
    base_file: Path | None = Field(None, description="The base scenario's YAML, relative to this config")
    variants: list[Variant] = Field(min_length=1)
    parallel: int | None = Field(None, ge=1, description="Variants run at once, one process each (None: cores)")
    reference: list[ReferenceFigure] = Field(default_factory=list, description="Published figures to print "
                                             "beside ours in summary.md")
    acceptance: list[AcceptanceCheck] = Field(default_factory=list, description="Criteria checked on the "
                                              "results, printed as PASS / FAIL in summary.md")
    operators: OperatorTablesConfig | None = Field(None, description="The operator planner's tables (throughput "
                                                   "at fixed GPUs, gains by phase and model, scale-up latency, "
                                                   "oracle gap) beside the variants' results")
    combined: CombinedComparison | None = Field(None, description="The combined policy beside each single-paper "
                                                "policy, and its acceptance (PASS / FAIL)")
    scales: dict[str, ExperimentScale] = Field(default_factory=dict, description="Other sizes of the setting, "
                                               "by name (--scale NAME), e.g. `paper`: the paper's own fleet "
                                               "and traffic")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.base is None) == (self.base_file is None):
            raise ValueError("give exactly one of 'base' (the scenario inline) or 'base_file' (its YAML)")
        names = [v.name for v in self.variants]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"variants: names {twice} appear more than once")
        for i, figure in enumerate(self.reference):
            unknown = sorted({*figure.variants, figure.baseline} - set(names))
            if unknown:
                raise ValueError(f"reference.{i}: variants {unknown} are not in 'variants' ({names})")
        for i, check in enumerate(self.acceptance):
            unknown = sorted({check.variant, check.baseline} - set(names))
            if unknown:
                raise ValueError(f"acceptance.{i}: variants {unknown} are not in 'variants' ({names})")
        if self.combined is not None:
            unknown = sorted({self.combined.variant, *self.combined.single_paper, *self.combined.slo_exempt} - set(names))
            if unknown:
                raise ValueError(f"combined: variants {unknown} are not in 'variants' ({names})")
        if self.operators is not None:
            for label in ("operator_variant", "model_variant"):
                name = getattr(self.operators, label)
                if name not in names:
                    raise ValueError(f"operators.{label}: variant {name!r} is not in 'variants' ({names})")
        return self

    def workers(self) -> int:
        return self.parallel or os.cpu_count() or 1


def load_experiment(path: Path) -> tuple[ExperimentConfig, Scenario]:
    """The config at `path` and its base scenario (read from `base_file` when not inline)."""
    try:
        data = read_yaml(path, "experiment config")
    except ScenarioError as exc:
        raise ExperimentError(str(exc)) from None
    if not isinstance(data, dict):
        raise ExperimentError(f"experiment config {path}: expected a mapping of fields, got {type(data).__name__}")
    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ExperimentError(validation_message(exc, f"experiment config {path}")) from None
    if config.base is not None:
        base = config.base
    else:
        assert config.base_file is not None
        base_path = config.base_file if config.base_file.is_absolute() else path.parent / config.base_file
        try:
            base = load_scenario(base_path)
        except ScenarioError as exc:
            raise ExperimentError(f"experiment config {path}: base_file: {exc}") from None
    for name in config.scales:  # a scale that cannot build its scenario is named when the config loads
        scaled_base(config, base, name, where=f"experiment config {path}")
    return config, base


def scaled_base(config: ExperimentConfig, base: Scenario, scale: str | None, where: str = "--scale") -> Scenario:
    """`base` at the config's scale `scale` (None: as it is). A name the config does not define, or a
    scale whose fields do not make a valid scenario, is an ExperimentError naming it."""
    if scale is None:
        return base
    chosen = config.scales.get(scale)
    if chosen is None:
        defined = ", ".join(sorted(config.scales)) if config.scales else "none (the config has no 'scales' block)"
        raise ExperimentError(f"--scale {scale!r}: experiment {config.name!r} does not define that scale; its "
                              f"scales: {defined}")
    try:
        return Scenario.model_validate(merge_overrides(base.model_dump(), chosen.base))
    except ValidationError as exc:
        raise ExperimentError(validation_message(exc, f"{where}: scales.{scale}")) from None


def select_variants(config: ExperimentConfig, names: list[str] | None) -> ExperimentConfig:
    """`config` running only the variants `names` (None: all), in the config's order. Reference figures and
    acceptance checks keep only what the chosen variants can answer; the operator tables stay only when
    both their variants run; the combined section keeps the chosen single-paper variants, and goes when the
combined variant or every single-paper one is left out (it would judge against runs that never happened).
An unknown name is an ExperimentError listing the known ones."""
    if names is None:
        return config
    known = [v.name for v in config.variants]
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        raise ExperimentError(f"--variants: {unknown or 'nothing'} not in experiment {config.name!r}; its variants: "
                              f"{', '.join(known)}")
    chosen = set(names)
    reference = [figure.model_copy(update={"variants": [v for v in figure.variants if v in chosen]})
                 for figure in config.reference
                 if figure.baseline in chosen and any(v in chosen for v in figure.variants)]
    acceptance = [check for check in config.acceptance if {check.variant, check.baseline} <= chosen]
    operators = config.operators
    if operators is not None and not {operators.operator_variant, operators.model_variant} <= chosen:
        operators = None
    combined = config.combined
    if combined is not None:
        single_paper = tuple(v for v in combined.single_paper if v in chosen)
        combined = (None if combined.variant not in chosen or not single_paper else combined.model_copy(
            update={"single_paper": single_paper, "slo_exempt": tuple(v for v in combined.slo_exempt if v in chosen)}))
    return config.model_copy(update={"variants": [v for v in config.variants if v.name in chosen],
                                     "reference": reference, "acceptance": acceptance, "operators": operators,
                                     "combined": combined})


def shipped_experiments() -> dict[str, Path]:
    """The configs shipped with opscale, by name (file stem)."""
    folder = resources.files("opscale").joinpath("data", "experiments")
    if not folder.is_dir():
        return {}
    return {Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def find_experiment(name_or_path: str) -> Path:
    """A config path as given, or a shipped config by name (`sageserve`)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = shipped_experiments()
    if name_or_path in shipped:
        return shipped[name_or_path]
    raise ExperimentError(f"experiment config {name_or_path} does not exist, and no shipped config has that name "
                          f"(shipped: {', '.join(sorted(shipped)) or 'none'})")


def variant_scenario(base: Scenario, variant: Variant, hours: float | None = None, seed_offset: int = 0) -> Scenario:
    """The scenario `variant` runs: the base with its policy and overrides; `hours` resets the duration
    (of a generated workload; a trace's is its own); `seed_offset` moves every seed (with_seed_offset)."""
    data = with_seed_offset(with_hours(base, hours), seed_offset).model_dump()
    data = merge_overrides(data, variant.overrides)
    data.update({"name": f"{base.name} | {variant.name}", "policy": variant.policy,
                 "policy_params": variant.policy_params})
    if variant.routing_policy is not None:
        data["routing_policy"] = variant.routing_policy
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ExperimentError(validation_message(exc, f"variant {variant.name!r}")) from None


def with_hours(base: Scenario, hours: float | None) -> Scenario:
    """`base` with its generated workload lasting `hours` (None: as it is)."""
    if hours is None:
        return base
    return Scenario.model_validate({**base.model_dump(), **_duration_update(base, hours)})


def with_seed_offset(base: Scenario, offset: int) -> Scenario:
    """`base` with `offset` added to every seed in it: the scenario's (a trace's labels) and its generated
    workload's; 0: `base` itself. The traffic changes with it, the same for every variant."""
    if offset == 0:
        return base
    update: dict[str, Any] = {"seed": base.seed + offset}
    for field in ("workload", "shaped"):
        source = getattr(base, field)
        if source is not None:
            update[field] = source.model_copy(update={"seed": source.seed + offset})
    return base.model_copy(update=update)


def _duration_update(base: Scenario, hours: float) -> dict[str, Any]:
    if not hours > 0:
        raise ExperimentError(f"--hours must be positive, got {hours!r}")
    if base.trace is not None:
        raise ExperimentError("--hours needs a generated workload ('workload' or 'shaped'); a trace's duration is "
                              "its own (window the trace instead)")
    duration_s = hours * 3600.0
    update: dict[str, Any] = {"duration_s": duration_s}
    for field in ("workload", "shaped"):
        source = getattr(base, field)
        if source is not None:
            if duration_s <= source.start_s:
                raise ExperimentError(f"--hours {hours:g} ends before the first arrival ({source.start_s:g} s)")
            update[field] = {**source.model_dump(), "duration_s": duration_s - source.start_s}
    return update


def merge_overrides(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` laid over it, mappings merged key by key, anything else replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_overrides(merged[key], value)
        else:
            merged[key] = value
    return merged

