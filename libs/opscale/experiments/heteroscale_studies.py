"""Run a HeteroScale study config (heteroscale_study_config) and write its outputs: what `opscale experiment
run` calls for a config with a `study` key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from opscale.experiments.heteroscale_study_config import MetricsStudyConfig, RatioStudyConfig


def run_study(study: MetricsStudyConfig | RatioStudyConfig, out: Path, data_dir: Path | None = None,
              log: Callable[[str], None] | None = None) -> list[Path]:
    """Run `study`; its summary.json, summary.md and plots in `out`."""
    from opscale.experiments.heteroscale_reports import write_metrics, write_ratio

    if isinstance(study, MetricsStudyConfig):
        from opscale.experiments.heteroscale_metrics import run_metrics_study

        return write_metrics(out, run_metrics_study(study, data_dir, log))
    from opscale.experiments.heteroscale_ratio import run_ratio_study

    return write_ratio(out, run_ratio_study(study, data_dir, log))
