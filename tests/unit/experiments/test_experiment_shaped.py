"""The shaped multi-region workload: the fallback shape has the documented daily and weekly cycles, the
generator follows the shape (counts, time zones, compression), is deterministic, and uses real ServeGen
shapes and Azure lengths when ../shared/data is present, saying which it used."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _paths import SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from opscale.experiments.scenario import Scenario
from opscale.experiments.shaped_workload import (
    SHAPE_STEP_S,
    FallbackShape,
    ShapedWorkloadConfig,
    describe_sources,
    fallback_shape,
    generate_shaped_requests,
    shape_rate,
)

pytestmark = pytest.mark.unit

DAY_S = 86_400.0


def workload(**changes: Any) -> ShapedWorkloadConfig:
    data: dict[str, Any] = {
        "seed": 3, "duration_s": 7200.0, "compress": 12.0,
        "streams": [{"model": "m", "mean_rps": 2.0}],
        "region_offsets_s": {"a": 0.0, "b": 12 * 3600.0},
    }
    data.update(changes)
    return ShapedWorkloadConfig.model_validate(data)


def test_fallback_shape_has_mean_one_a_daily_peak_and_quieter_weekends() -> None:
    fallback = FallbackShape(diurnal_amplitude=0.5, peak_hour=14.0, weekend_factor=0.7)
    shape = fallback_shape(fallback)
    per_day = int(DAY_S / SHAPE_STEP_S)
    assert len(shape) == 14 * per_day and shape.mean() == pytest.approx(1.0)
    monday = shape[:per_day]
    assert int(np.argmax(monday)) * SHAPE_STEP_S // 3600 == 13  # the 13:50-14:00 window's midpoint is closest
    assert monday.max() / monday.min() == pytest.approx(1.5 / 0.5, rel=0.01)
    days = shape.reshape(14, per_day).mean(axis=1)
    assert days[5] / days[0] == pytest.approx(0.7) and days[6] / days[0] == pytest.approx(0.7)


@given(st.floats(0, 30 * DAY_S))
@settings(max_examples=50, deadline=None)
def test_shape_rate_stays_between_the_series_extremes_and_hits_window_midpoints(tau_s: float) -> None:
    shape = fallback_shape(FallbackShape())
    value = shape_rate(shape, tau_s)
    assert shape.min() - 1e-12 <= value <= shape.max() + 1e-12
    k = int(tau_s // SHAPE_STEP_S) % len(shape)
    assert shape_rate(shape, (k + 0.5) * SHAPE_STEP_S) == pytest.approx(shape[k])


def test_requests_are_sorted_deterministic_and_follow_the_mean_rate() -> None:
    # the whole 14-day shape, 12x compressed
    config = workload(duration_s=14 * DAY_S / 12, streams=[{"model": "m", "mean_rps": 0.2}])
    first = list(generate_shaped_requests(config))
    assert first == list(generate_shaped_requests(config))
    arrivals = [r.arrival_s for r in first]
    assert arrivals == sorted(arrivals) and len({r.request_id for r in first}) == len(first)
    for region in ("a", "b"):
        count = sum(r.region == region for r in first)
        expected = 0.2 * config.duration_s  # mean_rps over a whole number of shape periods
        assert abs(count - expected) < 5 * math.sqrt(expected), (region, count, expected)
    assert {r.tier for r in first} == {"interactive", "batch"}
    batch_share = sum(r.tier == "batch" for r in first) / len(first)
    assert batch_share == pytest.approx(0.2, abs=0.01)


def test_regions_see_the_same_day_shifted_by_their_time_zone() -> None:
    # region b is 12 hours ahead: its busy half-day is region a's quiet one
    config = workload(duration_s=DAY_S / 12, fallback={"diurnal_amplitude": 0.8, "weekend_factor": 1.0})
    half = DAY_S / 24  # half a compressed day in simulated seconds
    requests = list(generate_shaped_requests(config))

    def count(region: str, first_half: bool) -> int:
        return sum(r.region == region and (r.arrival_s < half) == first_half for r in requests)

    a_first, a_second = count("a", True), count("a", False)
    b_first, b_second = count("b", True), count("b", False)
    assert a_first < 0.8 * a_second and b_first > 1.25 * b_second  # peak at 14:00 is in a's second half
    assert abs(a_first - b_second) < 0.15 * a_first


def test_lengths_are_clipped_to_the_stream_limits() -> None:
    config = workload(streams=[{"model": "m", "mean_rps": 5.0, "max_prompt_tokens": 700,
                                "max_output_tokens": 90}])
    requests = list(generate_shaped_requests(config))
    assert max(r.prompt_tokens for r in requests) == 700 and max(r.output_tokens for r in requests) == 90
    assert min(r.prompt_tokens for r in requests) >= 1


def test_missing_data_falls_back_and_says_so(tmp_path: Path) -> None:
    config = workload(data_dir=tmp_path, streams=[{"model": "m", "mean_rps": 1.0, "rate_shape": "servegen/x",
                                                    "lengths": "azure.csv"}])
    sources = describe_sources(config)["m"]
    assert sources["rate_shape"].startswith("synthetic fallback")
    assert sources["lengths"].startswith("synthetic fallback")
    assert next(generate_shaped_requests(config)).model == "m"


def test_bad_fields_are_named() -> None:
    with pytest.raises(ValidationError, match="models \\['m'\\] appear more than once"):
        workload(streams=[{"model": "m", "mean_rps": 1.0}, {"model": "m", "mean_rps": 2.0}])
    with pytest.raises(ValidationError, match="tier_weights"):
        workload(tier_weights={"interactive": 0.0})
    with pytest.raises(ValidationError, match="streams.0.mean_rps"):
        workload(streams=[{"model": "m", "mean_rps": -1}])


def test_a_scenario_rejects_a_shaped_workload_it_cannot_serve() -> None:
    base: dict[str, Any] = {
        "duration_s": 60.0, "hosts": [{"region": "a", "sku": "H100-80GB"}],
        "deployments": [{"model": "m", "sku": "H100-80GB"}],
        "shaped": workload().model_dump()}
    with pytest.raises(ValidationError, match="shaped.region_offsets_s: regions \\['b'\\] have no hosts"):
        Scenario.model_validate(base)
    base["deployments"] = [{"model": "other", "sku": "H100-80GB"}]
    with pytest.raises(ValidationError, match="shaped.streams: models \\['m'\\] have no deployment"):
        Scenario.model_validate(base)
    with pytest.raises(ValidationError, match="give at most one of 'workload'"):
        Scenario.model_validate({**base, "trace": {"path": "trace.csv"}})


def test_real_servegen_shape_and_azure_lengths_when_present() -> None:
    if not (SHARED_DATA / "servegen" / "language" / "m-large").is_dir():
        pytest.skip("../shared/data (ServeGen) is not present")
    lengths = "azure_llm_2023/AzureLLMInferenceTrace_conv.csv"
    config = workload(data_dir=SHARED_DATA, duration_s=600.0,
                      streams=[{"model": "m", "mean_rps": 3.0, "rate_shape": "servegen/language/m-large",
                                "lengths": lengths, "max_prompt_tokens": 100_000}])
    sources = describe_sources(config)["m"]
    assert sources == {"rate_shape": "ServeGen servegen/language/m-large", "lengths": lengths}
    requests = list(generate_shaped_requests(config))
    prompts = sorted(r.prompt_tokens for r in requests)
    # Azure 2023 conversation: prompt median 1,020 tokens (shared/data/README.md)
    assert 800 <= prompts[len(prompts) // 2] <= 1300
    # a real shape is not the fallback's: the counts differ from the fallback run's
    fallback = list(generate_shaped_requests(workload(duration_s=600.0, streams=[
        {"model": "m", "mean_rps": 3.0}])))
    assert len(requests) != len(fallback)
