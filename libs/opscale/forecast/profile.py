"""The typical shape of one season (a day) of a series, robust to bursts and gaps. Pure numpy."""

from __future__ import annotations

import numpy as np


def seasonal_profile(values: np.ndarray, season: int) -> tuple[float, np.ndarray]:
    """Mean of the first season, and the median over full seasons of each season minus its own mean.

    The profile is in data order (profile[k] belongs to points k, k + season, ...) and sums to zero.
    Example: season 2, data 1, 3, 2, 4 -> seasons (1, 3) and (2, 4) both deviate (-1, +1) from their
    means, so the profile is (-1, +1) and the first season's mean is 2.
    """
    full = len(values) // season
    if full < 1:
        raise ValueError(f"a seasonal profile needs at least one full season of {season} points, got {len(values)}")
    seasons = values[:full * season].reshape(full, season)
    deviations = seasons - seasons.mean(axis=1, keepdims=True)
    profile = np.median(deviations, axis=0)
    return float(seasons[0].mean()), profile - profile.mean()
