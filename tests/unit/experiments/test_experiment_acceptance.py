"""Pieces the `operators` experiment adds to the experiment machinery: a shaped stream's expected rates
per window are the ones its arrivals are drawn from, and acceptance checks compare a (dotted) metric of
two variants as their relation says, and say n/a when a variant failed."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opscale.experiments.comparison import AcceptanceCheck
from opscale.experiments.shaped_workload import ShapedWorkloadConfig, generate_shaped_requests, window_rates
from opscale.experiments.summary import acceptance_rows, metric_value
from opscale.experiments.variant_runner import VariantOutcome

pytestmark = pytest.mark.unit


def test_window_rates_are_what_the_arrivals_are_drawn_from() -> None:
    config = ShapedWorkloadConfig(seed=4, start_s=5.0, duration_s=3600.0, compress=12.0,
                                  streams=[{"model": "m", "mean_rps": 3.0}, {"model": "n", "mean_rps": 1.0}],
                                  region_offsets_s={"a": 0.0, "b": 6 * 3600.0})
    for model in ("m", "n"):
        for region in ("a", "b"):
            windows = window_rates(config, model, region)
            assert windows[0][0] == 5.0 and windows[-1][1] == pytest.approx(3605.0)
            expected = sum(rate * (hi - lo) for lo, hi, rate in windows)
            count = sum(1 for r in generate_shaped_requests(config) if r.model == model and r.region == region)
            assert abs(count - expected) < 5 * math.sqrt(expected), (model, region)  # Poisson: within 5 sigma
    with pytest.raises(ValueError, match="no stream of model 'x'"):
        window_rates(config, "x", "a")


def outcome(name: str, result: dict[str, Any] | None) -> VariantOutcome:
    return VariantOutcome(name, "p", result, None if result is not None else "crashed")


@given(ours=st.floats(0.0, 100.0), base=st.floats(0.01, 100.0), factor=st.floats(0.1, 2.0),
       relation=st.sampled_from(["<", "<=", ">", ">="]))
def test_a_check_holds_exactly_when_its_relation_does(ours: float, base: float, factor: float, relation: str) -> None:
    check = AcceptanceCheck(claim="c", metric="tiers.interactive.slo_attainment", variant="a", baseline="b",
                            relation=relation, factor=factor)  # type: ignore[arg-type]
    rows = acceptance_rows([check], [outcome("a", {"tiers": {"interactive": {"slo_attainment": ours}}}),
                                     outcome("b", {"tiers": {"interactive": {"slo_attainment": base}}})])
    bound = factor * base
    holds = {"<": ours < bound, "<=": ours <= bound, ">": ours > bound, ">=": ours >= bound}[relation]
    assert rows[0]["passed"] is holds and rows[0]["bound"] == bound


def test_a_failed_variant_or_a_missing_metric_is_not_a_verdict() -> None:
    check = AcceptanceCheck(claim="c", metric="gpu_hours", variant="a", baseline="b", relation="<=", factor=0.85)
    assert acceptance_rows([check], [outcome("a", None), outcome("b", {"gpu_hours": 1.0})])[0]["passed"] is None
    assert acceptance_rows([check], [outcome("a", {"gpu_hours": 1.0}), outcome("b", {})])[0]["passed"] is None
    assert metric_value({"tiers": {"x": {"y": 2}}}, "tiers.x.y") == 2.0
    assert metric_value({"tiers": {"x": True}}, "tiers.x") is None  # a flag is not a number
    assert metric_value({"gpu_hours": 3.5}, "gpu_hours.more") is None
