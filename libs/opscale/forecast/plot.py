"""PNG of a backtest: held-out actuals against the forecast and its interval. Writes only the file asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from opscale.forecast.backtest import BacktestResult


def plot_backtest(result: BacktestResult, series_name: str, step_s: float, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: this runs in CLIs and CI
    import matplotlib.pyplot as plt

    path = result.path
    hours = np.arange(len(path.actual)) * step_s / 3600.0
    fig, ax = plt.subplots(figsize=(12, 4.5))
    ax.fill_between(hours, path.lo, path.hi, color="tab:blue", alpha=0.2, step="mid",
                    label=f"{result.level:.0%} interval (covers {result.coverage:.1%})")
    ax.plot(hours, path.mean, color="tab:blue", lw=1.0, label=f"{result.method} forecast")
    ax.plot(hours, path.actual, color="black", lw=0.8, label="actual")
    ax.set_xlabel("hours into the held-out part")
    ax.set_ylabel("rate (req/s)")
    ax.set_title(f"{series_name}: {result.method}, MAPE {result.mape_pct:.1f}%, sMAPE {result.smape_pct:.1f}%")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
