"""Trace transforms: laziness aside, every output is sorted by arrival and keeps its promise (window
bounds, compressed span, thinning fraction, superposition count and unique ids, rotation by region)."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.model import Request
from opscale.stats import percentile
from opscale.traces import (
    AssignRule,
    assign_by_rules,
    assign_by_weights,
    compress_time,
    parse_rule,
    scale_rate,
    shift_regions,
    thin,
    time_window,
)
from opscale.traces.summary import weighted_percentile

pytestmark = pytest.mark.unit

arrivals = st.lists(st.floats(min_value=0, max_value=1e5, allow_nan=False), max_size=200).map(sorted)


def stream(times: list[float], region: str = "eu") -> list[Request]:
    return [Request(f"r{i}", "m", "interactive", region, t, 1 + i % 50, 1 + i % 7) for i, t in enumerate(times)]


def is_sorted(requests: list[Request]) -> bool:
    return all(a.arrival_s <= b.arrival_s for a, b in itertools.pairwise(requests))


@given(arrivals, st.floats(0, 1e5), st.floats(1, 1e5), st.booleans())
def test_window_keeps_exactly_the_arrivals_in_bounds(times: list[float], start: float, length: float,
                                                     rebase: bool) -> None:
    end = start + length
    out = list(time_window(stream(times), start, end, rebase=rebase))
    assert len(out) == sum(1 for t in times if start <= t < end)
    assert is_sorted(out)
    shift = start if rebase else 0.0
    assert all(start - shift <= r.arrival_s < end - shift + 1e-6 for r in out)


@given(arrivals.filter(lambda t: len(t) >= 2), st.floats(0.01, 100))
def test_compression_divides_the_span(times: list[float], factor: float) -> None:
    out = list(compress_time(stream(times), factor))
    assert is_sorted(out)
    assert out[-1].arrival_s - out[0].arrival_s == pytest.approx((times[-1] - times[0]) / factor, rel=1e-9, abs=1e-9)


@settings(max_examples=10, deadline=None)
@given(st.floats(0.05, 0.95), st.integers(0, 2**32))
def test_thinning_keeps_the_expected_fraction(keep: float, seed: int) -> None:
    n = 10_000
    out = list(thin(stream([float(i) for i in range(n)]), keep, seed))
    assert is_sorted(out)
    # 5 standard deviations of a binomial: a false alarm is a ~1e-6 event per example
    assert abs(len(out) - keep * n) <= 5 * (n * keep * (1 - keep)) ** 0.5


@settings(max_examples=30, deadline=None)
@given(arrivals, st.integers(2, 4), st.integers(0, 2**32))
def test_whole_factor_superposition_multiplies_the_count_with_unique_ids(times: list[float], factor: int,
                                                                          seed: int) -> None:
    out = list(scale_rate(stream(times), float(factor), seed, spread_s=30.0))
    assert len(out) == factor * len(times)
    assert is_sorted(out)
    assert len({r.request_id for r in out}) == len(out)
    if times:
        assert out[0].arrival_s >= times[0] and out[-1].arrival_s < times[-1] + 30.0


def test_fractional_superposition_adds_a_thinned_copy() -> None:
    n = 10_000
    out = list(scale_rate(stream([i * 0.1 for i in range(n)]), 2.5, seed=3))
    assert is_sorted(out)
    assert abs(len(out) - 2.5 * n) <= 5 * (n * 0.25) ** 0.5
    assert Counter(r.request_id.partition("~")[2] for r in out).keys() == {"", "1", "2"}


def test_scale_of_one_is_the_identity_and_bad_factors_are_refused() -> None:
    requests = stream([0.0, 1.0, 2.0])
    assert list(scale_rate(requests, 1.0, 0)) == requests
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rate scale factor"):
            scale_rate(requests, bad, 0)


def test_assignment_by_weights_is_seeded_and_proportional() -> None:
    requests = stream([float(i) for i in range(20_000)])
    first = [r.model for r in assign_by_weights(requests, "model", {"a": 3, "b": 1}, seed=7)]
    again = [r.model for r in assign_by_weights(requests, "model", {"a": 3, "b": 1}, seed=7)]
    assert first == again
    assert first.count("a") / len(first) == pytest.approx(0.75, abs=0.02)
    with pytest.raises(ValueError, match="cannot assign 'arrival_s'"):
        next(assign_by_weights(requests, "arrival_s", {"a": 1}, seed=0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive numbers"):
        next(assign_by_weights(requests, "tier", {"a": 0}, seed=0))


def test_rules_set_fields_first_match_wins() -> None:
    requests = [Request("a", "m", "interactive", "eu", 0.0, 5000, 10),
                Request("b", "m", "interactive", "eu", 1.0, 100, 900)]
    rules = [parse_rule("tier=batch if prompt_tokens>4096"), parse_rule("tier=long if total_tokens >= 1000"),
             AssignRule("model", "big", "output_tokens", ">=", 500)]
    out = list(assign_by_rules(requests, rules))
    assert [(r.tier, r.model) for r in out] == [("batch", "m"), ("long", "big")]
    with pytest.raises(ValueError, match="cannot read rule 'tier batch'"):
        parse_rule("tier batch")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 99.99), st.sampled_from(["eu", "us", "ap"])), max_size=120),
       st.floats(0, 250), st.floats(0, 100))
def test_region_rotation_is_sorted_and_moves_each_region_by_its_offset(items: list[tuple[float, str]],
                                                                      us_offset: float, ap_offset: float) -> None:
    period = 100.0
    items = sorted(items)
    requests = [Request(f"r{i}", "m", "t", region, t, 1, 1) for i, (t, region) in enumerate(items)]
    offsets = {"us": us_offset, "ap": ap_offset}
    out = list(shift_regions(lambda: iter(requests), offsets, period))
    assert is_sorted(out)
    assert sorted(r.request_id for r in out) == sorted(r.request_id for r in requests)
    by_id = {r.request_id: r for r in requests}
    for r in out:
        expected = (by_id[r.request_id].arrival_s + offsets.get(r.region, 0.0)) % period
        assert r.arrival_s == pytest.approx(expected, abs=1e-6) or abs(abs(r.arrival_s - expected) - period) < 1e-6
        assert 0 <= r.arrival_s < period


def test_region_rotation_refuses_a_trace_longer_than_the_period() -> None:
    requests = stream([0.0, 150.0], region="us")
    with pytest.raises(ValueError, match=r"r1 arrives at 150\.0 s, not within the period \[0, 100\.0\)"):
        list(shift_regions(lambda: iter(requests), {"us": 10.0}, 100.0))


@given(st.lists(st.integers(1, 50), min_size=1, max_size=60), st.floats(0, 100))
def test_trace_stats_percentiles_equal_the_plain_ones(values: list[int], q: float) -> None:
    assert weighted_percentile(Counter(values), q) == pytest.approx(percentile(values, q))
