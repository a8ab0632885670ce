"""Algorithm 1's arithmetic (opscale.planning.heteroscale.curation) with synthetic probes: the bisection
finds the edge of a known capacity, the best split follows the objective, and the targets are 80% of the
TPS at the edge per instance of the P/D group."""

from __future__ import annotations

import pytest

from opscale.planning.heteroscale import HeteroScaleConfig
from opscale.planning.heteroscale.curation import (
    Bisection,
    LoadPoint,
    Split,
    SplitResult,
    budget_splits,
    curate,
    max_rate_meeting,
    ratio_label,
)

pytestmark = pytest.mark.unit


def _probe(edge_rps: float, tokens_per_request: float = 100.0):
    calls: list[float] = []

    def probe(rate: float) -> LoadPoint:
        calls.append(rate)
        return LoadPoint(rate, rate * tokens_per_request, rate * 1000, rate * 800, 0.5, 0.02, 100, 0,
                         rate <= edge_rps)

    return probe, calls


@pytest.mark.parametrize("start", [0.5, 7.0, 40.0])
def test_bisection_finds_the_edge_from_below_and_above(start: float) -> None:
    probe, calls = _probe(7.3)
    found = max_rate_meeting(probe, start, rel_tol=0.02)
    assert found.best is not None and found.best.meets
    assert 7.3 / 1.02 <= found.best.rate_rps <= 7.3
    assert len(found.probes) == len(calls) < 15


def test_bisection_reports_none_when_nothing_meets() -> None:
    probe, _ = _probe(0.0)
    assert max_rate_meeting(probe, 1.0, min_rps=0.01).best is None
    with pytest.raises(ValueError, match="start_rps"):
        max_rate_meeting(probe, 0.0)


def _result(p: int, d: int, gpus: int, usd: float, decode_tps: float | None) -> SplitResult:
    best = None if decode_tps is None else LoadPoint(1.0, decode_tps, 0.0, decode_tps * 3, 1.0, 0.05, 10, 0, True)
    return SplitResult(Split(p, d, gpus, usd), Bisection(best, (best,) if best else ()))


def test_the_best_split_follows_the_objective() -> None:
    cheap_decode = _result(1, 3, 4, 4.0, 1000.0)  # 250/GPU, 250 per $/h
    more_tps = _result(2, 2, 4, 8.0, 1200.0)  # 300/GPU, 150 per $/h
    never = _result(3, 1, 4, 4.0, None)
    assert curate("m", [cheap_decode, more_tps, never], "per_gpu").chosen is more_tps
    assert curate("m", [cheap_decode, more_tps, never], "per_dollar").chosen is cheap_decode
    with pytest.raises(ValueError, match="no split met"):
        curate("m", [never])


def test_targets_are_80_percent_of_the_edge_per_group_instance_and_load_into_the_policy_config() -> None:
    curated = curate("m", [_result(2, 6, 8, 12.0, 12_000.0)])
    params = curated.params()
    assert params["pd_ratio"] == "1:3"
    assert params["decode_tps_per_instance"] == pytest.approx(0.8 * 12_000 / 8)
    assert params["prefill_missed_tps_per_instance"] == pytest.approx(0.8 * 36_000 / 8)
    config = HeteroScaleConfig(**params)
    assert config.pd_ratio == pytest.approx(1 / 3)
    row = curated.measured()[0]
    assert row["decode_tps_per_gpu"] == pytest.approx(1500) and row["decode_tps_per_decode_instance"] == 2000


def test_splits_and_labels() -> None:
    assert budget_splits(4) == [(1, 3), (2, 2), (3, 1)]
    assert [ratio_label(p, d) for p, d in budget_splits(4)] == ["1:3", "1:1", "3:1"]
    with pytest.raises(ValueError, match="instances"):
        budget_splits(1)
