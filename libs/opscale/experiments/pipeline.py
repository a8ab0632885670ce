"""One experiment end to end: run the variants, then write summary.md, summary.json and the plots.

Relative data paths are fixed to absolute ones here, before the variants go to their processes, so every
variant reads the same files whatever its working directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opscale.experiments.comparison import ExperimentConfig, with_hours
from opscale.experiments.comparison_plots import write_plots
from opscale.experiments.executors import DEFAULT_EXECUTOR
from opscale.experiments.scenario import Scenario
from opscale.experiments.shaped_workload import describe_sources
from opscale.experiments.summary import SummarySection, latency_tier, variant_intervals, write_summary
from opscale.experiments.variant_runner import ProgressFn, VariantOutcome, run_experiment

# The name under which the operator planner's tables report progress (beside the variants' names).
TABLES_PROGRESS = "planner tables"


@dataclass(slots=True)
class ExperimentOutputs:
    outcomes: list[VariantOutcome]
    paths: list[Path]
    sources: dict[str, dict[str, str]]


def with_data_dir(base: Scenario, data_dir: Path | None) -> Scenario:
    """`base` with its shaped workload reading `data_dir` (when given), made absolute."""
    if base.shaped is None:
        return base
    chosen = data_dir if data_dir is not None else base.shaped.data_dir
    if chosen is None:
        return base
    shaped = base.shaped.model_copy(update={"data_dir": chosen.resolve()})
    return base.model_copy(update={"shaped": shaped})


def run_and_write(config: ExperimentConfig, base: Scenario, out: Path, *, parallel: int | None = None,
                  hours: float | None = None, data_dir: Path | None = None,
                  progress: ProgressFn | None = None, executor: str = DEFAULT_EXECUTOR,
                  address: str | None = None, seeds: int = 1) -> ExperimentOutputs:
    """Run every variant over `seeds` seeds on `executor` (executors.EXECUTORS; `address`: a Ray
    cluster's), then write the summary and plots."""
    base = with_data_dir(base, data_dir)
    sources = describe_sources(base.shaped) if base.shaped is not None else {}
    shown = with_hours(base, hours)  # a bad --hours (a trace's duration is its own) fails before any run
    outcomes = run_experiment(config, base, out, parallel=parallel, hours=hours, progress=progress,
                              executor=executor, address=address, seeds=seeds)
    sections = [] if config.operators is None else [_operator_section(config, shown, outcomes, progress)]
    spreads = variant_intervals(outcomes)  # once, for the tables, summary.json and the combined section
    if config.combined is not None:
        from opscale.experiments.combined_summary import combined_section

        sections.append(combined_section(config.combined, outcomes, latency_tier(base), spreads))
    paths = write_summary(out, config, shown, outcomes, sources, sections, spreads)
    paths += write_plots(out, outcomes, latency_tier(base), config.name)
    return ExperimentOutputs(outcomes, paths, sources)


def _operator_section(config: ExperimentConfig, base: Scenario, outcomes: list[VariantOutcome],
                      progress: ProgressFn | None) -> SummarySection:
    """The operator planner's tables; a scenario they cannot be computed for is a section saying why (the
    variants' results are written all the same)."""
    from opscale.experiments.operator_tables import SECTION_KEY, operator_tables

    report = (lambda done, total: progress(TABLES_PROGRESS, done, total)) if progress else None
    try:
        return operator_tables(config, base, outcomes, report)
    except ValueError as exc:
        return SummarySection(SECTION_KEY, {"error": str(exc)},
                              f"## Operator level against model level\n\n**failed**: {exc}\n")
