"""`opscale forecast`: backtest forecasters on a rate series. Thin: parses options, then calls
opscale.forecast. Bad input (missing file, bad value, unknown method) is one red line on stderr and exit
code 2."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from opscale.cli.errors import fail as _fail

if TYPE_CHECKING:
    from rich.console import Console

    from opscale.forecast.backtest import BacktestResult

forecast_app = typer.Typer(help="Forecast request rates; backtest the forecasters.", no_args_is_help=True,
                           add_completion=False, pretty_exceptions_enable=False)


@forecast_app.callback()
def _group() -> None:
    """Forecast request rates; backtest the forecasters."""


@forecast_app.command()
def backtest(
    series: Annotated[Path | None, typer.Option(
        help="CSV (or .csv.gz) with a header and one evenly spaced rate per line (column rate, rps, value or "
             "the last one; empty cells are missing points)")] = None,
    servegen: Annotated[Path | None, typer.Option(
        help="ServeGen folder: one model's chunk-*-trace.csv.gz, or a folder holding several models")] = None,
    method: Annotated[str, typer.Option(help="Forecaster name, or 'all'")] = "all",
    step_s: Annotated[float, typer.Option(help="Seconds between points of the series")] = 300.0,
    holdout_days: Annotated[float, typer.Option(help="Days at the end held out and forecast")] = 3.0,
    horizon_steps: Annotated[int, typer.Option(help="Points forecast from each rolling origin", min=1)] = 12,
    refit_every: Annotated[int | None, typer.Option(
        help="Points between parameter re-estimations of fitted models (default: one day)", min=1)] = None,
    level: Annotated[float, typer.Option(help="Central prediction interval level")] = 0.9,
    out: Annotated[Path, typer.Option(help="Folder for backtest.json and the PNGs")] = Path("forecast-out"),
) -> None:
    """Rolling-origin backtest over the last --holdout-days: MAPE, sMAPE, interval coverage and width per
    method; writes backtest.json and, per series, a PNG of the best method (lowest MAPE)."""
    from rich.console import Console
    from rich.progress import Progress

    from opscale.forecast import ForecasterName
    from opscale.forecast.backtest import backtest as run_backtest
    from opscale.forecast.plot import plot_backtest

    methods = [n.value for n in ForecasterName] if method == "all" else [method]
    if any(m not in {n.value for n in ForecasterName} for m in methods):
        known = ", ".join(n.value for n in ForecasterName)
        raise _fail(f"unknown method {method!r}; choose all or one of: {known}")
    if step_s <= 0 or 86400 % step_s:
        raise _fail(f"--step-s must be a positive divisor of a day (86400 s), got {step_s}")
    if not 0 < level < 1:
        raise _fail(f"--level must be strictly between 0 and 1, got {level}")
    season = round(86400 / step_s)
    holdout = round(holdout_days * 86400 / step_s)
    try:
        named_series = _load(series, servegen, step_s)
    except ValueError as exc:
        raise _fail(str(exc)) from None

    metrics_by_series: dict[str, dict[str, dict[str, object]]] = {}
    results: dict[str, list[BacktestResult]] = {}
    console = Console()
    if not console.is_terminal:  # piped or captured: rich would squeeze the table into 80 columns
        console = Console(width=120)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("backtesting", total=len(named_series) * len(methods))
        for name, values in named_series.items():
            if holdout >= len(values):
                raise _fail(f"{name}: {len(values)} points is too short to hold out {holdout} "
                            f"({holdout_days} days at {step_s} s)")
            for m in methods:
                progress.update(task, description=f"{name}: {m}")
                started = time.perf_counter()
                try:
                    result = run_backtest(values, m, season, holdout, horizon_steps, refit_every=refit_every,
                                          level=level)
                except ValueError as exc:
                    raise _fail(f"{name}: {m}: {exc}") from None
                results.setdefault(name, []).append(result)
                metrics = {**_json_ready(result.metrics()), "wall_s": round(time.perf_counter() - started, 3)}
                metrics_by_series.setdefault(name, {})[m] = metrics
                progress.advance(task)

    out.mkdir(parents=True, exist_ok=True)
    per_series: dict[str, dict[str, object]] = {}
    for name, rows in results.items():
        best = _best(rows)
        per_series[name] = {"points": len(named_series[name]), "best": best.method if best else None,
                            "methods": metrics_by_series[name]}
        if best is not None:
            png = out / f"backtest_{name}.png"
            plot_backtest(best, name, step_s, png)
            per_series[name]["plot"] = png.name
    report = {"step_s": step_s, "season_steps": season, "holdout_steps": holdout, "horizon_steps": horizon_steps,
              "level": level, "refit_every": refit_every or season, "methods": methods, "series": per_series}
    (out / "backtest.json").write_text(json.dumps(report, indent=2) + "\n")
    _print_table(console, results, level)
    console.print(f"wrote {out / 'backtest.json'}")


def _load(series: Path | None, servegen: Path | None, step_s: float) -> dict[str, list[float]]:
    from opscale.forecast.series_csv import load_series_csv
    from opscale.forecast.servegen import load_servegen_rates, servegen_model_dirs

    if (series is None) == (servegen is None):
        raise ValueError("give exactly one of --series FILE.csv or --servegen DIR")
    if series is not None:
        return {series.name.split(".")[0]: load_series_csv(series).tolist()}
    assert servegen is not None
    loaded = {}
    for folder in servegen_model_dirs(servegen):
        rates = load_servegen_rates(folder, step_s)
        loaded[rates.name] = rates.values.tolist()
    return loaded


def _best(rows: list[BacktestResult]) -> BacktestResult | None:
    scored = [r for r in rows if math.isfinite(r.mape_pct)]
    return min(scored, key=lambda r: r.mape_pct) if scored else None


def _json_ready(metrics: dict[str, float | int | str]) -> dict[str, float | int | str | None]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def _print_table(console: Console, results: dict[str, list[BacktestResult]], level: float) -> None:
    from rich.table import Table

    table = Table(title=f"Backtest: rolling origin over the held-out days, {level:.0%} intervals")
    for column in ("series", "method", "MAPE %", "sMAPE %", "coverage %", "mean width", "points", "fits",
                   "fallback pts"):
        table.add_column(column, justify="left" if column in ("series", "method") else "right")
    for name, rows in results.items():
        best = _best(rows)
        for r in rows:
            star = " *" if best is not None and r.method == best.method else ""
            table.add_row(name, r.method + star, f"{r.mape_pct:.2f}", f"{r.smape_pct:.2f}",
                          f"{100 * r.coverage:.1f}", f"{r.mean_width:.1f}", str(r.points), str(r.fits),
                          str(r.fallback_points))
    console.print(table)
    console.print("* lowest MAPE per series")
