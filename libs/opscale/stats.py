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


class LogHistogram:
    """A mergeable quantile sketch with bounded relative error (DDSketch's log buckets).

    A positive value v falls into bucket k = ceil(log_gamma(v)) with gamma = (1 + a) / (1 - a); the bucket's
    representative value 2 * gamma**k / (gamma + 1) is within relative error `a` of every value in it. So a
    quantile read from the merged counts is within `a` (default 1%) of the exact one, whatever the data,
    and merging windows of any length costs one addition per occupied bucket.

    Example (a = 0.01): add 0.100, 0.200, 0.300 -> quantile(50) is 0.200 within 1%.
    """

    __slots__ = ("_gamma_log", "_counts", "_zeros", "count")

    def __init__(self, relative_accuracy: float = 0.01) -> None:
        gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._gamma_log = math.log(gamma)
        self._counts: dict[int, int] = {}
        self._zeros = 0
        self.count = 0

    def add(self, value: float) -> None:
        self.count += 1
        if value <= 0:
            self._zeros += 1
            return
        key = math.ceil(math.log(value) / self._gamma_log)
        self._counts[key] = self._counts.get(key, 0) + 1

    def merge(self, other: LogHistogram) -> None:
        self.count += other.count
        self._zeros += other._zeros
        counts = self._counts
        for key, n in other._counts.items():
            counts[key] = counts.get(key, 0) + n

    def quantile(self, q: float) -> float | None:
        """The q-th percentile (0..100), or None when empty."""
        if self.count == 0:
            return None
        rank = min(self.count - 1, max(0, math.ceil(q / 100 * self.count) - 1))
        if rank < self._zeros:
            return 0.0
        seen = self._zeros
        gamma = math.exp(self._gamma_log)
        for key in sorted(self._counts):
            seen += self._counts[key]
            if seen > rank:
                return 2 * gamma**key / (gamma + 1)
        raise AssertionError("unreachable: counts sum to count")


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float] | None:
    """(mean, low, high): the mean of `values` and its two-sided `confidence` interval by Student's t
    over the sample (statsmodels' DescrStatsW); None for fewer than two values, which have no spread to
    estimate. Example: [1, 2, 3] gives (2.0, -0.484, 4.484) (t 4.303 with 2 degrees of freedom x s/sqrt(3))."""
    if len(values) < 2:
        return None
    from statsmodels.stats.weightstats import DescrStatsW

    stats = DescrStatsW([float(v) for v in values])
    low, high = stats.tconfint_mean(alpha=1.0 - confidence)
    return float(stats.mean), float(low), float(high)
