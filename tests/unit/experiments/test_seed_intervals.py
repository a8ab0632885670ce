"""Figures over seeds: every number of result.json by dotted path, and each one's mean and interval."""

from __future__ import annotations

import pytest

from opscale.experiments.seed_intervals import numeric_figures, seed_intervals
from opscale.stats import mean_interval

pytestmark = pytest.mark.unit


def result(gpu_hours: float, slo: float, p99: float | None) -> dict:
    return {"seed": 7, "wall_s": 3.2, "policy": "reactive", "gpu_hours": gpu_hours, "cold_starts": 2,
            "ok_flag": True, "tiers": {"interactive": {"slo_attainment": slo, "ttft_p99_s": p99}},
            "ttft_cdf": {"interactive": [[0, 0.1], [100, 0.9]]}}


def test_numeric_figures_are_the_numbers_by_dotted_path() -> None:
    figures = numeric_figures(result(10.0, 0.99, 0.5))
    assert figures == {"gpu_hours": 10.0, "cold_starts": 2.0, "tiers.interactive.slo_attainment": 0.99,
                       "tiers.interactive.ttft_p99_s": 0.5}  # no seed, wall time, CDF, text or flag


def test_intervals_over_seeds() -> None:
    runs = [result(10.0, 0.99, 0.5), result(12.0, 0.97, None), result(11.0, 0.98, 0.7)]
    spread = seed_intervals(runs)
    assert "tiers.interactive.ttft_p99_s" not in spread  # null in one seed: no interval
    gpu = spread["gpu_hours"]
    assert gpu["values"] == [10.0, 12.0, 11.0] and gpu["n"] == 3
    assert (gpu["mean"], gpu["low"], gpu["high"]) == pytest.approx(mean_interval([10.0, 12.0, 11.0]))
    one = seed_intervals(runs[:1])["gpu_hours"]
    assert one == {"values": [10.0], "mean": 10.0, "low": None, "high": None, "n": 1}
    assert seed_intervals([]) == {}
