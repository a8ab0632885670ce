"""One experiment end to end: run the variants, then write summary.md, summary.json and the plots.

Relative data paths are fixed to absolute ones here, before the variants go to their processes, so every
variant reads the same files whatever its working directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opscale.experiments.comparison import ExperimentConfig
from opscale.experiments.comparison_plots import write_plots
from opscale.experiments.scenario import Scenario
from opscale.experiments.shaped_workload import describe_sources
from opscale.experiments.summary import latency_tier, write_summary
from opscale.experiments.variant_runner import ProgressFn, VariantOutcome, run_experiment


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
                  progress: ProgressFn | None = None) -> ExperimentOutputs:
    base = with_data_dir(base, data_dir)
    sources = describe_sources(base.shaped) if base.shaped is not None else {}
    outcomes = run_experiment(config, base, out, parallel=parallel, hours=hours, progress=progress)
    shown = base if hours is None else base.model_copy(update={"duration_s": hours * 3600.0})
    paths = write_summary(out, config, shown, outcomes, sources)
    paths += write_plots(out, outcomes, latency_tier(base), config.name)
    return ExperimentOutputs(outcomes, paths, sources)
