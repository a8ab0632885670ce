"""The built-in demo (two regions, two models, a compressed day of diurnal load), cut to a 20-minute
slice: every request is served, the interactive tier meets its SLO, and result.json's per-pool block
(GPU utilisation, SM activity, token rates, GPU-hours) agrees with the run's figures."""

from __future__ import annotations

import json

import pytest

from opscale.experiments.runner import RunResult, run_scenario
from opscale.experiments.scenario import builtin_demo_scenario

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def demo() -> RunResult:
    return run_scenario(builtin_demo_scenario(seed=1, duration_s=1200.0))


def test_demo_slice_drops_no_request(demo: RunResult) -> None:
    result = demo.result
    assert result["requests"] == result["requests_submitted"] > 10_000
    assert result["dropped"] == 0
    assert result["completed"] == result["requests"]
    for name, tier in result["tiers"].items():
        assert tier["dropped"] == 0, name


def test_demo_slice_meets_the_interactive_slo(demo: RunResult) -> None:
    assert demo.result["tiers"]["interactive"]["slo_attainment"] >= 0.95
    assert demo.result["tiers"]["batch"]["slo_attainment"] >= 0.95


def test_demo_slice_scales_every_pool(demo: RunResult) -> None:
    # the load rises from the first minute, so each of the four pools must have grown beyond its minimum
    peak: dict[str, int] = {}
    for point in demo.collector.timeline:
        for pool, ready in point.instances.items():
            peak[pool] = max(peak.get(pool, 0), ready)
    assert len(peak) == 4
    assert all(n >= 2 for n in peak.values()), peak


def test_demo_slice_reports_both_utilisation_figures_per_pool(demo: RunResult) -> None:
    result = demo.result
    pools = result["pools"]
    assert sorted(pools) == [f"{model}/{region}/unified" for model in ("Llama-3-70B", "Llama-3-8B")
                             for region in ("eu-west", "us-east")]
    assert sum(p["gpu_hours"] for p in pools.values()) == pytest.approx(result["gpu_hours"], rel=1e-12)
    # Both utilisations are over the GPU time held: the pools' GPU-hour-weighted busy fractions make the
    # run's. SM activity is weighted by peak FLOP/s as well, so it lies within the pools' range.
    weighted_busy = sum(p["gpu_util"] * p["gpu_hours"] for p in pools.values()) / result["gpu_hours"]
    assert weighted_busy == pytest.approx(result["mean_gpu_util"], rel=1e-9)
    sm = [p["sm_activity"] for p in pools.values()]
    assert min(sm) <= result["mean_sm_activity"] <= max(sm)
    for name, p in pools.items():
        # The roofline computes at no more than compute_efficiency of the peak while busy.
        assert 0.0 < p["sm_activity"] < 0.7 * p["gpu_util"] <= 0.7, name
        assert p["decode_tps"] > 0 and p["prefill_tps"] > p["decode_tps"], name  # the demo's prompts are long
        assert p["prefill_missed_tps"] == p["prefill_tps"], name  # no prefix caching in the demo
    assert json.loads(json.dumps(result))["pools"] == pools  # plain JSON, as result.json writes it
