"""A variant's figures over several seeds: each numeric figure of result.json with its mean and 95%
interval (Student's t over the seeds), so that a difference between policies can be told from seed noise.

Figures are result.json's numbers by dotted path (`gpu_hours`, `tiers.interactive.slo_attainment`,
`pools.Llama-3-8B/eu.gpu_hours`); the seed itself, the wall time and the TTFT CDF's points are not
figures. A figure is kept when every seed that ran has it as a number (a p99 of no requests is null).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opscale.stats import mean_interval

CONFIDENCE = 0.95
NOT_FIGURES = frozenset({"seed", "wall_s", "ttft_cdf"})


def numeric_figures(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number in `result` by dotted path, in the result's order (NOT_FIGURES left out at the top)."""
    figures: dict[str, float] = {}
    for key, value in result.items():
        if not prefix and key in NOT_FIGURES:
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            figures.update(numeric_figures(value, f"{path}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            figures[path] = float(value)
    return figures


def seed_intervals(results: Sequence[dict[str, Any]], confidence: float = CONFIDENCE) -> dict[str, dict[str, Any]]:
    """Per figure: the seeds' `values`, their `mean`, and the interval's `low` and `high` (None with one
    seed), over `results` (one per seed that ran)."""
    per_seed = [numeric_figures(r) for r in results]
    if not per_seed:
        return {}
    shared = [k for k in per_seed[0] if all(k in f for f in per_seed[1:])]
    intervals: dict[str, dict[str, Any]] = {}
    for key in shared:
        values = [f[key] for f in per_seed]
        spread = mean_interval(values, confidence)
        mean, low, high = spread if spread is not None else (values[0], None, None)
        intervals[key] = {"values": values, "mean": mean, "low": low, "high": high, "n": len(values)}
    return intervals
