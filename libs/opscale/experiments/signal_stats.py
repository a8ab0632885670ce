"""How good a scaling signal is, from its windowed series under a known offered load (HeteroScale's metric
study, PAPERS.md §3.4): its noise, its signal-to-noise ratio, its linearity in the load, whether it is
proportional to the load, and how late it follows a change. Pure numpy on plain sequences.

- `noise_std`: window-to-window noise, robust to the load's own slow trend and to steps: the median
  absolute first difference, scaled to a standard deviation (1.4826 x MAD) and divided by sqrt(2) (a
  difference of two independent noisy windows has twice the variance).
- `snr`: the signal's peak/off-peak swing against that noise: |median of y over the windows in the top fifth
  of the load - median over the bottom fifth| / noise_std(y) (`load_levels` gives the two medians).
- `linear_fit`: least squares y = a + b x and its R² (linearity against the load).
- `elasticity`: the slope of log y on log x, 1 for a signal proportional to the load (what proportional
  control, required = signal / per-instance target, assumes); near 0 for one that saturates.
- `xcorr_lag`: the lag (in windows) at which the signal's changes correlate best with the load's.
- `step_response`: the time after a step until the signal covers 63% of its change (linear between
  windows); None when there is no change to follow: within 3 noise deviations, or under 5% of the level
  (a signal pinned at 1 that dips once has noise 0, and no response).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_MAD_TO_STD = 1.4826


def _array(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=float)


def noise_std(y: Sequence[float]) -> float:
    """Window-to-window noise of `y` (see the module docstring); 0 for fewer than 3 values."""
    arr = _array(y)
    if len(arr) < 3:
        return 0.0
    diffs = np.diff(arr)
    return float(_MAD_TO_STD * np.median(np.abs(diffs - np.median(diffs))) / math.sqrt(2))


def load_levels(x: Sequence[float], y: Sequence[float]) -> tuple[float, float] | None:
    """(off-peak, peak): the median of y over the windows in the lowest fifth of the load x, and over the
    highest fifth; None with fewer than 5 windows."""
    xs, ys = _array(x), _array(y)
    if len(xs) != len(ys):
        raise ValueError(f"load_levels needs equal-length series; got {len(xs)}, {len(ys)}")
    if len(xs) < 5:
        return None
    lo, hi = np.quantile(xs, 0.2), np.quantile(xs, 0.8)
    return float(np.median(ys[xs <= lo])), float(np.median(ys[xs >= hi]))


def snr(x: Sequence[float], y: Sequence[float]) -> float:
    """The peak/off-peak swing of y over its noise (module docstring): 0 when y does not move with the load,
    inf when it moves without noise."""
    levels = load_levels(x, y)
    if levels is None:
        return 0.0
    swing = abs(levels[1] - levels[0])
    if swing <= 1e-9 * max(abs(levels[0]), abs(levels[1]), 1e-300):
        return 0.0
    noise = noise_std(y)
    return swing / noise if noise > 0 else math.inf


@dataclass(frozen=True, slots=True)
class LinearFit:
    slope: float
    intercept: float
    r2: float

    def at(self, x: float) -> float:
        return self.intercept + self.slope * x


def linear_fit(x: Sequence[float], y: Sequence[float]) -> LinearFit:
    """Least squares y = intercept + slope x; R² = 1 - SS_res / SS_tot (0 for a constant y)."""
    xs, ys = _array(x), _array(y)
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"linear_fit needs two equal-length series of at least 2 values; got {len(xs)}, {len(ys)}")
    if float(np.ptp(xs)) == 0:
        raise ValueError("linear_fit: x is constant")
    slope, intercept = np.polyfit(xs, ys, 1)
    residual = ys - (intercept + slope * xs)
    total = float(((ys - ys.mean()) ** 2).sum())
    r2 = 1.0 - float((residual ** 2).sum()) / total if total > 0 else 0.0
    return LinearFit(float(slope), float(intercept), r2)


def elasticity(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Slope of log y on log x over the windows where both are positive; None with fewer than 3."""
    xs, ys = _array(x), _array(y)
    keep = (xs > 0) & (ys > 0)
    if keep.sum() < 3 or float(np.ptp(np.log(xs[keep]))) == 0:
        return None
    return float(np.polyfit(np.log(xs[keep]), np.log(ys[keep]), 1)[0])


def xcorr_lag(load: Sequence[float], y: Sequence[float], max_lag: int) -> int | None:
    """The lag k in [0, max_lag] (windows) maximising corr(diff(load)_t, diff(y)_{t+k}); None when neither
    series changes."""
    dl, dy = np.diff(_array(load)), np.diff(_array(y))
    best_k, best_c = None, -math.inf
    for k in range(0, min(max_lag, len(dl) - 2) + 1):
        a, b = dl[: len(dl) - k], dy[k:]
        if a.std() == 0 or b.std() == 0:
            continue
        c = float(np.corrcoef(a, b)[0, 1])
        if c > best_c:
            best_k, best_c = k, c
    return best_k


def step_response(t: Sequence[float], y: Sequence[float], step_s: float, settle_s: float,
                  fraction: float = 0.63, min_rel_change: float = 0.05) -> float | None:
    """Seconds after a step at `step_s` until `y` first covers `fraction` of its change: from the mean of
    the windows before the step (within settle_s) to the mean of the windows ending in the second half of
    [step_s, step_s + settle_s]. Windows are stamped at their end; linear between them."""
    ts, ys = _array(t), _array(y)
    before = ys[(ts <= step_s) & (ts > step_s - settle_s)]
    after = ys[(ts > step_s + settle_s / 2) & (ts <= step_s + settle_s)]
    if len(before) < 2 or len(after) < 2:
        return None
    lo, hi = float(before.mean()), float(after.mean())
    change = hi - lo
    if abs(change) <= max(3 * noise_std(ys), min_rel_change * max(abs(lo), abs(hi))):
        return None
    goal = lo + fraction * change
    prev_t, prev_y = step_s, lo
    for ti, yi in zip(ts[ts > step_s], ys[ts > step_s], strict=True):
        if (yi - goal) * math.copysign(1.0, change) >= 0:
            if yi == prev_y:
                return float(ti - step_s)
            return float(prev_t + (goal - prev_y) / (yi - prev_y) * (ti - prev_t) - step_s)
        prev_t, prev_y = float(ti), float(yi)
    return None
