"""Synthetic workloads: determinism, the diurnal rate, tiers and lengths, validation."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
from pydantic import ValidationError

from opscale.traces import (
    LengthDistribution,
    StreamSpec,
    SyntheticWorkloadConfig,
    generate_requests,
    rate_rps,
)

pytestmark = pytest.mark.unit


def config(**overrides: object) -> SyntheticWorkloadConfig:
    values: dict[str, object] = {
        "seed": 7,
        "duration_s": 600.0,
        "streams": (StreamSpec(model="Llama-3-8B", region="eu", base_rps=5.0),
                    StreamSpec(model="Qwen2-7B", region="us", base_rps=2.0)),
    }
    values.update(overrides)
    return SyntheticWorkloadConfig.model_validate(values)


def test_same_seed_same_requests_ids_included() -> None:
    assert list(generate_requests(config())) == list(generate_requests(config()))
    assert list(generate_requests(config())) != list(generate_requests(config(seed=8)))


def test_requests_are_sorted_with_unique_ids_within_the_window() -> None:
    cfg = config(start_s=100.0)
    requests = list(generate_requests(cfg))
    arrivals = [r.arrival_s for r in requests]
    assert arrivals == sorted(arrivals)
    assert len({r.request_id for r in requests}) == len(requests)
    assert 100.0 <= arrivals[0] and arrivals[-1] < 700.0
    assert {(r.model, r.region) for r in requests} == {("Llama-3-8B", "eu"), ("Qwen2-7B", "us")}


def test_total_count_matches_the_mean_rate() -> None:
    # Whole periods: the sine integrates to zero, so the mean count is base * duration.
    cfg = config(duration_s=4000.0, period_s=1000.0, amplitude=0.9,
                 streams=(StreamSpec(model="m", region="eu", base_rps=10.0),))
    count = sum(1 for _ in generate_requests(cfg))
    assert count == pytest.approx(40_000, abs=5 * math.sqrt(40_000))


def test_arrival_rate_follows_the_diurnal_curve() -> None:
    period_s, bin_s = 1000.0, 100.0
    stream = StreamSpec(model="m", region="eu", base_rps=20.0)
    cfg = config(duration_s=10 * period_s, period_s=period_s, amplitude=0.8, streams=(stream,))
    bins = [0] * int(period_s / bin_s)
    for r in generate_requests(cfg):
        bins[int((r.arrival_s % period_s) // bin_s)] += 1
    for i, observed in enumerate(bins):
        # Expected count: 10 periods times the integral of r(t) over the bin (midpoint rule is enough).
        expected = 10 * bin_s * statistics.fmean(
            rate_rps(cfg, stream, i * bin_s + bin_s * (j + 0.5) / 10) for j in range(10))
        assert observed == pytest.approx(expected, abs=5 * math.sqrt(expected) + 5)
    assert bins.index(max(bins)) == 2  # sin peaks at a quarter period, 250 s: the bin [200, 300)
    assert bins.index(min(bins)) == 7  # and bottoms out at 750 s


def test_region_phase_shifts_the_peak() -> None:
    period_s = 1000.0
    streams = (StreamSpec(model="m", region="eu", base_rps=20.0), StreamSpec(model="m", region="us", base_rps=20.0))
    cfg = config(duration_s=5 * period_s, period_s=period_s, amplitude=1.0, streams=streams,
                 region_phase_s={"us": 500.0})
    first_half = {"eu": 0, "us": 0}
    for r in generate_requests(cfg):
        if r.arrival_s % period_s < 500.0:
            first_half[r.region] += 1
    # eu peaks in the first half of each period; us, half a period later, in the second.
    assert first_half["eu"] > 2 * first_half["us"]


def test_tiers_follow_their_weights() -> None:
    cfg = config(duration_s=2000.0, tier_weights={"interactive": 3.0, "batch": 1.0})
    tiers = [r.tier for r in generate_requests(cfg)]
    assert tiers.count("interactive") / len(tiers) == pytest.approx(0.75, abs=0.02)


def test_lengths_are_lognormal_around_the_median_and_clipped() -> None:
    cfg = config(duration_s=2000.0,
                 prompt_tokens=LengthDistribution(median_tokens=800, sigma=1.2, max_tokens=4000),
                 output_tokens=LengthDistribution(median_tokens=50, sigma=0.0, max_tokens=100))
    requests = list(generate_requests(cfg))
    prompts = [r.prompt_tokens for r in requests]
    assert statistics.median(prompts) == pytest.approx(800, rel=0.08)
    assert 1 <= min(prompts) and max(prompts) == 4000  # the heavy tail hits the clip
    assert {r.output_tokens for r in requests} == {50}


def test_generation_is_lazy() -> None:
    endless = config(duration_s=1e12)
    first = list(itertools.islice(generate_requests(endless), 5))
    assert len(first) == 5


@pytest.mark.parametrize(("overrides", "message"), [
    ({"tier_weights": {"interactive": 0.0}}, r"tier_weights\['interactive'\] must be a positive number"),
    ({"tier_weights": {}}, "at least one tier"),
    ({"amplitude": 1.5}, "amplitude"),
    ({"duration_s": 0}, "duration_s"),
    ({"streams": (StreamSpec(model="m", region="eu", base_rps=1.0),) * 2}, r"\('m', 'eu'\) appears twice"),
    ({"streams": ()}, "streams"),
])
def test_bad_configs_are_explained(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        config(**overrides)


def test_stream_rates_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="base_rps"):
        StreamSpec(model="m", region="eu", base_rps=0.0)
