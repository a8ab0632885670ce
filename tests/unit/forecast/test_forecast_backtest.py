"""Backtests: metrics, loaders (ServeGen, CSV), the `opscale forecast backtest` command, and the acceptance
figures: on ServeGen's 14-day language-model rates the best forecaster beats seasonal-naive on MAPE with a
90% interval covering 85-95% of the held-out points."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
from _paths import SHARED_DATA
from typer.testing import CliRunner

from opscale.cli import app
from opscale.forecast.backtest import BacktestResult, backtest
from opscale.forecast.series_csv import load_series_csv
from opscale.forecast.servegen import load_servegen_rates, servegen_model_dirs
from opscale.forecast.synthetic import diurnal_weekly_rates

pytestmark = pytest.mark.unit

METHODS = ("seasonal_naive", "ewma", "holt_winters", "sarima")
runner = CliRunner()


def _assert_acceptance(results: dict[str, BacktestResult]) -> BacktestResult:
    best = min(results.values(), key=lambda r: r.mape_pct)
    assert best.mape_pct < results["seasonal_naive"].mape_pct, {m: r.mape_pct for m, r in results.items()}
    assert 0.85 <= best.coverage <= 0.95, (best.method, best.coverage)
    return best


def test_a_periodic_series_is_forecast_exactly_by_seasonal_naive() -> None:
    series = [10.0, 20.0, 30.0, 40.0] * 10
    result = backtest(series, "seasonal_naive", season=4, holdout=12, step_horizon=3)
    assert (result.points, result.missing, result.unforecast) == (12, 0, 0)
    assert result.mape_pct == 0 and result.smape_pct == 0 and result.coverage == 1 and result.mean_width == 0


def test_missing_and_zero_actuals_are_handled_as_documented() -> None:
    series = [4.0, 4.0, 4.0, 4.0, 4.0, 4.0, math.nan, 0.0]
    result = backtest(series, "seasonal_naive", season=2, holdout=4, step_horizon=2)
    assert result.points == 3 and result.missing == 1
    assert result.mape_pct == 0  # the zero actual has no percentage error; the 4s are exact
    assert result.smape_pct == pytest.approx(200 / 3)  # sMAPE scores it: 2|0-4|/(0+4) = 200% on one of three
    assert result.coverage == pytest.approx(2 / 3)


def test_backtest_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="holdout must be between 1 and 9 points for a series of 10, got 10"):
        backtest([1.0] * 10, "ewma", season=2, holdout=10, step_horizon=1)
    with pytest.raises(ValueError, match="step_horizon must be at least 1"):
        backtest([1.0] * 10, "ewma", season=2, holdout=5, step_horizon=0)
    with pytest.raises(ValueError, match="unknown forecaster 'arima'"):
        backtest([1.0] * 10, "arima", season=2, holdout=5, step_horizon=1)


def test_acceptance_on_a_synthetic_diurnal_weekly_series() -> None:
    step_s = 1800.0  # half-hour points: the same 14 days as ServeGen, a sixth of the points
    season = round(86400 / step_s)
    series = diurnal_weekly_rates(14, step_s, seed=1)
    results = {m: backtest(series, m, season, 3 * season, 4, refit_every=season) for m in METHODS}
    best = _assert_acceptance(results)
    assert best.method in ("holt_winters", "sarima") and best.failed_fits == 0 and best.fallback_points == 0


@pytest.mark.slow
@pytest.mark.parametrize("model", ["m-large", "m-mid", "m-small"])
def test_acceptance_on_servegen_language_models(model: str) -> None:
    folder = SHARED_DATA / "servegen" / "language" / model
    if not folder.is_dir():
        pytest.skip(f"shared data not present: {folder}")
    rates = load_servegen_rates(folder, step_s=300)
    assert len(rates.values) == 14 * 288
    results = {m: backtest(rates.values, m, 288, 3 * 288, 12, refit_every=288) for m in METHODS}
    _assert_acceptance(results)


def _write_client(folder: Path, index: int, rows: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / f"chunk-{index}-trace.csv.gz", "wt") as handle:
        handle.write("\n".join(rows) + "\n")


def test_servegen_rates_sum_clients_spread_windows_and_mark_gaps(tmp_path: Path) -> None:
    model = tmp_path / "language" / "m-tiny"
    _write_client(model, 0, ["0,10,1.2,Gamma,1,2", "600,20,1,Weibull,1,2", "1200,0,0,,0,0", "1800,30,1,Gamma,1,1"])
    _write_client(model, 1, ["0,5,1,Gamma,1,2", "600,5,1,Gamma,1,2", "1200,0,0,,0,0", "1800,0.5,1,Gamma,1,1"])
    rates = load_servegen_rates(model, step_s=300)
    expected = [15, 15, 25, 25, math.nan, math.nan, 30.5, 30.5]  # the all-zero window is a gap
    np.testing.assert_array_equal(rates.values, expected)
    assert rates.missing == 2 and rates.name == "m-tiny"
    hourly = load_servegen_rates(model, step_s=1200)
    np.testing.assert_array_equal(hourly.values, [20, 30.5])  # a gap window does not drag the mean down
    assert servegen_model_dirs(tmp_path) == [model] and servegen_model_dirs(model) == [model]


def test_servegen_bad_input_names_file_and_line(tmp_path: Path) -> None:
    _write_client(tmp_path, 0, ["0,1,1,Gamma,1,1", "600,fast,1,Gamma,1,1"])
    with pytest.raises(ValueError, match=r"chunk-0-trace.csv.gz:2: rate 'fast' is not a number"):
        load_servegen_rates(tmp_path)
    with pytest.raises(ValueError, match="must divide or be a multiple of ServeGen's 600 s windows, got 420"):
        load_servegen_rates(tmp_path, step_s=420)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no ServeGen client traces"):
        servegen_model_dirs(empty)


def test_series_csv_picks_the_rate_column_and_reports_bad_cells(tmp_path: Path) -> None:
    good = tmp_path / "rates.csv"
    good.write_text("t_s,rate\n0,1.5\n300,\n600,2\n")
    np.testing.assert_array_equal(load_series_csv(good), [1.5, math.nan, 2.0])
    bad = tmp_path / "bad.csv"
    bad.write_text("t_s,rate\n0,1.5\n300,-2\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: column 'rate': '-2' is not a non-negative number"):
        load_series_csv(bad)
    with pytest.raises(ValueError, match="no column 'rps'; columns are t_s, rate"):
        load_series_csv(good, column="rps")


def test_cli_backtest_writes_json_and_a_plot(tmp_path: Path) -> None:
    series = tmp_path / "synthetic.csv"
    values = diurnal_weekly_rates(6, 1800, seed=2)
    series.write_text("rate\n" + "\n".join(f"{v:.4f}" for v in values) + "\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["forecast", "backtest", "--series", str(series), "--method", "seasonal_naive",
                                 "--step-s", "1800", "--holdout-days", "1", "--horizon-steps", "4",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "backtest.json").read_text())
    entry = report["series"]["synthetic"]
    assert report["season_steps"] == 48 and report["holdout_steps"] == 48 and entry["best"] == "seasonal_naive"
    metrics = entry["methods"]["seasonal_naive"]
    assert metrics["points"] == 48 and 0 < metrics["mape_pct"] < 100 and 0 <= metrics["coverage"] <= 1
    assert (out / entry["plot"]).stat().st_size > 10_000
    assert "seasonal_naive" in result.output and "MAPE" in result.output


@pytest.mark.parametrize(("args", "message"), [
    ([], "give exactly one of --series FILE.csv or --servegen DIR"),
    (["--series", "missing.csv"], "series file missing.csv does not exist"),
    (["--series", "x.csv", "--method", "prophet"], "unknown method 'prophet'"),
    (["--series", "x.csv", "--step-s", "7"], "--step-s must be a positive divisor of a day"),
])
def test_cli_backtest_bad_input_is_one_clear_line(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["forecast", "backtest", *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
