"""`opscale experiment`: run several planning policies on the same traffic and seed, and compare them.
Thin: parses options, shows progress, then calls opscale.experiments. Bad input (a missing file, an
invalid field) is one red line on stderr and exit code 2; a variant that fails is a row of the table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from opscale.cli.errors import fail as _fail

if TYPE_CHECKING:
    from opscale.experiments.heteroscale_study_config import MetricsStudyConfig, RatioStudyConfig

experiment_app = typer.Typer(help="Compare planning policies on the same traffic: table, JSON and plots.",
                             no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@experiment_app.callback()
def _group() -> None:
    """Compare planning policies on the same traffic: table, JSON and plots."""


@experiment_app.command("run")
def run(
    config: Annotated[str, typer.Argument(help="Experiment YAML, or the name of a shipped one (sageserve, heteroscale, operators, opscale)")],
    out: Annotated[Path, typer.Option(help="Folder for summary.md, summary.json, plots and one folder per "
                                      "variant")] = Path("experiment-out"),
    parallel: Annotated[int | None, typer.Option(help="Runs at once (a variant at a seed each), one process "
                                                 "each, or a local Ray's CPUs (default: the config's, else the "
                                                 "CPU cores)", min=1)] = None,
    hours: Annotated[float | None, typer.Option(help="Simulated hours of traffic (shorter or longer than the "
                                                "config's)", min=0.001)] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Real data (the layout of shared/data) for a shaped "
                                                  "workload; default: the config's data_dir")] = None,
    scale: Annotated[str | None, typer.Option(help="Run the setting at a size the config defines under "
                                              "`scales:` (sageserve: paper, the paper's 3 x 40 DGX-A100 "
                                              "servers and a week of traffic)")] = None,
    variants: Annotated[str | None, typer.Option(help="Run only these variants, comma-separated (default: "
                                                 "all)")] = None,
    executor: Annotated[str, typer.Option(help="Where the runs go: pool (local processes, --parallel at "
                                          "once), serial (this process) or ray (a local Ray, or the "
                                          "cluster at --address; needs the ray extra)")] = "pool",
    address: Annotated[str | None, typer.Option(help="With --executor ray: the cluster's address "
                                                "(HOST:PORT, ray://HOST:PORT or auto); default: a local "
                                                "Ray started for the run")] = None,
    seeds: Annotated[int, typer.Option(help="Run every variant over this many seeds (the config's, then "
                                       "+1 each) and report each figure's mean and 95% interval",
                                       min=1)] = 1,
) -> None:
    """Run every variant of CONFIG, each in its own process, with progress in simulated time; write
    OUT/<variant>/result.json (OUT/<variant>/seed-<seed>/ with --seeds), OUT/summary.md, OUT/summary.json
    and PNG plots. A study config (a `study`
    key: heteroscale-metrics, heteroscale-ratio) runs its study and writes OUT/summary.json, summary.md
    and its plots."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from opscale.experiments.comparison import (
        ExperimentError,
        find_experiment,
        load_experiment,
        scaled_base,
        select_variants,
    )
    from opscale.experiments.executors import ExecutorError, ExecutorOptions, make_executor
    from opscale.experiments.heteroscale_study_config import load_study
    from opscale.experiments.pipeline import TABLES_PROGRESS, run_and_write
    from opscale.experiments.variant_runner import task_labels

    try:
        path = find_experiment(config)
        study = load_study(path)
        if study is not None:
            if (scale, variants, executor, address, seeds) != (None, None, "pool", None, 1):
                raise _fail(f"--scale, --variants, --executor, --address and --seeds run an experiment's "
                            f"variants; {path.name} is a study ({study.study}), which runs in one process")
            _run_study(study, out, hours=hours, data_dir=data_dir)
            return
        exp, base = load_experiment(path)
        base = scaled_base(exp, base, scale)
        exp = select_variants(exp, _names(variants))
        # a bad --executor or --address, or Ray missing, fails here, before the progress bars are drawn
        make_executor(executor, ExecutorOptions(workers=1, address=address))
    except (ExperimentError, ExecutorError) as exc:
        raise _fail(str(exc)) from None
    console = Console()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[sim]}"),
                  TimeElapsedColumn(), console=console) as bar:
        tasks: dict[str, TaskID] = {label: bar.add_task(label, total=None, sim="waiting")
                                    for label in task_labels(exp, base, seeds)}
        if exp.operators is not None:  # the operator planner's tables, after the variants
            tasks[TABLES_PROGRESS] = bar.add_task(TABLES_PROGRESS, total=None, sim="waiting")

        def progress(name: str, now_s: float, end_s: float) -> None:
            if name == TABLES_PROGRESS:
                bar.update(tasks[name], completed=now_s, total=end_s, sim=f"{now_s:.0f} / {end_s:.0f} steps")
                return
            bar.update(tasks[name], completed=now_s, total=end_s, sim=f"{now_s / 3600:.2f} / {end_s / 3600:.2f} "
                       f"simulated h")

        try:
            outputs = run_and_write(exp, base, out, parallel=parallel, hours=hours, data_dir=data_dir,
                                    progress=progress, executor=executor, address=address, seeds=seeds)
        except ValueError as exc:
            raise _fail(str(exc)) from None
        for outcome in outputs.outcomes:
            for run in outcome.seeds or [outcome]:
                bar.update(tasks[run.label], sim="done" if run.ok else "[red]failed", completed=1, total=1)
    console.print((out / "summary.md").read_text())
    failed = [o.name for o in outputs.outcomes if not o.ok]
    per = "per variant" if seeds == 1 else "per variant and seed (<variant>/seed-<seed>/)"
    console.print(f"wrote {', '.join(str(p) for p in outputs.paths)} and one result.json {per}")
    if failed:
        console.print(f"[red]{len(failed)} variant(s) failed: {', '.join(failed)} (see summary.md)")


def _names(listed: str | None) -> list[str] | None:
    """A comma-separated list of names (None: none given)."""
    return None if listed is None else [name.strip() for name in listed.split(",") if name.strip()]


def _run_study(study: MetricsStudyConfig | RatioStudyConfig, out: Path, *, hours: float | None,
               data_dir: Path | None) -> None:
    """A HeteroScale study: one process (its probes are short and sequential), progress as log lines."""
    from rich.console import Console

    from opscale.experiments.heteroscale_studies import run_study

    if hours is not None:
        raise _fail(f"--hours: the load of a study ({study.study}) is its config's; edit the config instead")
    console = Console()
    try:
        paths = run_study(study, out, data_dir, log=lambda line: console.print(f"[dim]{line}"))
    except ValueError as exc:
        raise _fail(str(exc)) from None
    console.print((out / "summary.md").read_text())
    console.print(f"wrote {', '.join(str(p) for p in paths)}")
