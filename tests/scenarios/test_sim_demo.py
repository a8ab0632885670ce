"""The built-in demo (two regions, two models, a compressed day of diurnal load), cut to a 20-minute
slice: every request is served and the interactive tier meets its SLO."""

from __future__ import annotations

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
