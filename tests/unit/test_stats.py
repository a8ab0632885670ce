from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opscale.stats import LogHistogram, mean_interval, percentile

pytestmark = pytest.mark.unit

values = st.lists(st.floats(min_value=1e-6, max_value=1e6, allow_nan=False), min_size=1, max_size=300)


def _nearest_rank(xs: list[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


@given(values, st.sampled_from([0, 1, 10, 50, 90, 99, 100]))
def test_log_histogram_is_within_its_relative_accuracy(xs: list[float], q: float) -> None:
    h = LogHistogram(0.01)
    for x in xs:
        h.add(x)
    exact = _nearest_rank(xs, q)
    assert h.quantile(q) == pytest.approx(exact, rel=0.0101)


@given(values, values)
def test_merging_equals_adding_everything_to_one(a: list[float], b: list[float]) -> None:
    one, left, right = LogHistogram(), LogHistogram(), LogHistogram()
    for x in a + b:
        one.add(x)
    for x in a:
        left.add(x)
    for x in b:
        right.add(x)
    left.merge(right)
    assert left.count == one.count
    assert [left.quantile(q) for q in (1, 50, 99)] == [one.quantile(q) for q in (1, 50, 99)]


def test_empty_zero_and_worked_example() -> None:
    h = LogHistogram()
    assert h.quantile(50) is None
    for x in (0.1, 0.2, 0.3):
        h.add(x)
    assert h.quantile(50) == pytest.approx(0.2, rel=0.01)
    h.add(0.0)
    assert h.quantile(0) == 0.0


def test_percentile_interpolates() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([5], 99) == 5 and percentile([], 50) is None


def test_mean_interval_is_students_t() -> None:
    # t(0.975, 2 degrees of freedom) = 4.302653; s = 1 for 1, 2, 3
    mean, low, high = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert mean - low == pytest.approx(high - mean)
    assert mean_interval([5.0, 5.0]) == (5.0, 5.0, 5.0)  # no spread, no width
    assert mean_interval([1.0]) is None and mean_interval([]) is None  # one seed: nothing to estimate


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=2, max_size=30),
       st.floats(min_value=0.1, max_value=100.0), st.floats(min_value=-1e3, max_value=1e3))
def test_mean_interval_contains_the_mean_and_moves_with_the_data(xs: list[float], scale: float,
                                                                 shift: float) -> None:
    mean, low, high = mean_interval(xs)
    assert low <= mean + 1e-9 * (1 + abs(mean)) and mean <= high + 1e-9 * (1 + abs(mean))
    # affine: the interval of a*x + b is a*interval + b
    moved = mean_interval([scale * x + shift for x in xs])
    tol = 1e-6 * (1 + scale * max(abs(x) for x in xs) + abs(shift))
    assert moved == pytest.approx((scale * mean + shift, scale * low + shift, scale * high + shift), abs=tol)
    assert mean_interval(xs, 0.99)[2] >= high - tol  # more confidence, a wider interval
