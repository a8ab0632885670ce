"""Small statistics helpers shared by the aggregator and the experiment reports. Pure functions."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks; None when empty.

    Example: percentile([1, 2, 3, 4], 50) == 2.5; percentile([5], 99) == 5.
    """
    if not values:
        return None
    ordered = sorted(values)
    return percentile_sorted(ordered, q)


def percentile_sorted(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * min(100.0, max(0.0, q)) / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    frac = rank - lo
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * frac)


def finite_or_none(value: float | None) -> float | None:
    """Normalise NaN and infinities to None, once, at the boundary where metrics enter."""
    if value is None or not math.isfinite(value):
        return None
    return value
