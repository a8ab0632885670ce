"""ServeGen's per-client rate windows summed into one evenly spaced arrival-rate series per model.

Each `chunk-<i>-trace.csv.gz` is one client: gzip CSV, no header, rows `window_start_s, rate (req/s),
cv, pattern, param1, param2`, one row per 600 s window. The model's rate in a window is the sum over
clients; the windows are then spread onto `step_s` steps (a 600 s window covers two 5-minute steps).

Some windows are gaps in the record, not idle time: the rate summed over dozens of clients drops from
thousands of req/s to exactly zero, or to a few req/s, for one to a dozen windows and then recovers.
Windows whose summed rate is below `gap_fraction` of the model's median window (default 5%; real troughs
in these traces stay above 25% of the median) become missing points (NaN), which forecasters impute and
backtests do not score. Must not: depend on the trace
readers in opscale.traces (they model requests, this models rates).
"""

from __future__ import annotations

import csv
import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WINDOW_S = 600.0
TRACE_GLOB = "chunk-*-trace.csv.gz"


@dataclass(frozen=True, slots=True)
class RateSeries:
    """An evenly spaced rate series (req/s), NaN where the record has a gap."""

    name: str
    step_s: float
    values: np.ndarray

    @property
    def missing(self) -> int:
        return int(np.isnan(self.values).sum())


def servegen_model_dirs(root: Path) -> list[Path]:
    """`root` itself when it holds client traces, else every folder below it that does (sorted)."""
    if not root.is_dir():
        raise ValueError(f"ServeGen folder {root} does not exist or is not a folder")
    if any(root.glob(TRACE_GLOB)):
        return [root]
    found = sorted({p.parent for p in root.rglob(TRACE_GLOB)})
    if not found:
        raise ValueError(f"no ServeGen client traces ({TRACE_GLOB}) in {root} or below it")
    return found


def load_servegen_rates(model_dir: Path, step_s: float = 300.0, gap_fraction: float = 0.05) -> RateSeries:
    """Sum the client rates of one ServeGen model folder onto `step_s` steps (see the module docstring)."""
    windows_per_step, steps_per_window = _resampling(step_s)
    files = sorted(model_dir.glob(TRACE_GLOB))
    if not files:
        raise ValueError(f"no ServeGen client traces ({TRACE_GLOB}) in {model_dir}")
    totals: dict[int, float] = {}
    for path in files:
        _add_client(path, totals)
    count = max(totals) + 1
    windows = np.zeros(count)
    for index, rate in totals.items():
        windows[index] = rate
    if not 0.0 <= gap_fraction < 1.0:
        raise ValueError(f"gap_fraction must be in [0, 1), got {gap_fraction!r}")
    median = float(np.median(windows))
    if median > 0:
        windows[windows < gap_fraction * median] = np.nan
    if steps_per_window > 1:
        values = np.repeat(windows, steps_per_window)
    else:
        usable = count - count % windows_per_step
        blocks = windows[:usable].reshape(-1, windows_per_step)
        values = np.array([np.nan if np.isnan(b).all() else float(np.nanmean(b)) for b in blocks])
    return RateSeries(model_dir.name, step_s, values)


def _resampling(step_s: float) -> tuple[int, int]:
    """(windows per step, steps per window); exactly one of them is 1."""
    if step_s > 0 and math.isclose(WINDOW_S / step_s, round(WINDOW_S / step_s)):
        return 1, round(WINDOW_S / step_s)
    if step_s > 0 and math.isclose(step_s / WINDOW_S, round(step_s / WINDOW_S)):
        return round(step_s / WINDOW_S), 1
    raise ValueError(f"step_s must divide or be a multiple of ServeGen's {WINDOW_S:.0f} s windows, got {step_s}")


def _add_client(path: Path, totals: dict[int, float]) -> None:
    try:
        with gzip.open(path, "rt", newline="") as handle:
            for line_no, row in enumerate(csv.reader(handle), start=1):
                if not row or not "".join(row).strip():
                    continue
                start_s = _number(row, 0, "window_start_s", path, line_no)
                rate = _number(row, 1, "rate", path, line_no) if len(row) > 1 else math.nan
                if len(row) < 2 or rate < 0 or start_s < 0:
                    raise ValueError(f"{path}:{line_no}: expected window_start_s >= 0 and rate >= 0, got {row[:2]}")
                index = round(start_s / WINDOW_S)
                totals[index] = totals.get(index, 0.0) + rate
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read as gzip CSV ({exc})") from None


def _number(row: list[str], column: int, field: str, path: Path, line_no: int) -> float:
    try:
        value = float(row[column])
    except (ValueError, IndexError):
        raise ValueError(f"{path}:{line_no}: {field} {row[column] if column < len(row) else ''!r} "
                         "is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{path}:{line_no}: {field} {row[column]!r} is not finite")
    return value
