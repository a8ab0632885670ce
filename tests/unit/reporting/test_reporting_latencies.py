"""One builder of the latency figures: its worked example, and the simulator's result.json and the load
generator's report giving the same TTFT/TBT/E2E keys and values for the same requests, so `opscale
loadgen compare` lines them up with nothing missing on either side."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.experiments.collector import RunCollector
from opscale.model import DEFAULT_TIERS, RequestOutcome
from opscale.perf.catalog import default_catalog
from opscale.reporting.latencies import LATENCY_KEYS, LatencySamples, latency_figures
from opscale.reporting.latency_report import latency_report_from_outcomes

from opscale_loadgen.compare import comparison_rows

pytestmark = pytest.mark.unit


def _outcome(request_id: str, tier: str, arrival_s: float, first_s: float | None, finish_s: float | None,
             tokens: int, status: str = "ok") -> RequestOutcome:
    return RequestOutcome(request_id, "m", tier, "eu", "eu", "i1", arrival_s, first_s, finish_s, 100, tokens, status)


def test_the_worked_example_of_the_docstring() -> None:
    samples = LatencySamples()
    samples.add(_outcome("a", "interactive", 0.0, 0.5, 1.4, 10))
    samples.add(_outcome("b", "interactive", 1.0, 4.0, 4.9, 10))
    figures = samples.figures()
    assert list(figures) == list(LATENCY_KEYS)
    expected = {"ttft_p50_s": 1.75, "ttft_p90_s": 2.75, "ttft_p99_s": 2.975, "tbt_p50_s": 0.1, "tbt_p90_s": 0.1,
                "tbt_p99_s": 0.1, "e2e_p50_s": 2.65, "e2e_p90_s": 3.65, "e2e_p99_s": 3.875}
    assert figures == pytest.approx(expected)
    assert set(LatencySamples().figures().values()) == {None}


def test_a_one_token_answer_has_no_tbt_and_parts_merge_as_one_set() -> None:
    one, other = LatencySamples(), LatencySamples()
    one.add(_outcome("a", "interactive", 0.0, 0.5, 0.5, 1))
    other.add(_outcome("b", "batch", 0.0, 2.0, 3.0, 11))
    assert (len(one.ttft), len(one.tbt), len(one.e2e)) == (1, 0, 1)
    merged = latency_figures([one, other])
    assert merged["ttft_p50_s"] == pytest.approx(1.25) and merged["tbt_p99_s"] == pytest.approx(0.1)


def test_an_unknown_metric_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match="'itl'"):
        LatencySamples().of("itl")


OUTCOMES = st.lists(
    st.tuples(st.sampled_from(["interactive", "batch", "gold"]), st.floats(0, 100), st.floats(0, 10),
              st.floats(0, 100), st.integers(1, 60), st.sampled_from(["ok", "ok", "ok", "rejected", "failed"])),
    max_size=40)


@settings(max_examples=60, deadline=None)
@given(drawn=OUTCOMES)
def test_result_json_and_the_replay_report_agree_key_for_key(drawn: list[tuple]) -> None:
    outcomes = []
    for i, (tier, arrival, ttft, decode, tokens, status) in enumerate(drawn):
        if status == "ok":
            outcomes.append(_outcome(f"r{i}", tier, arrival, arrival + ttft, arrival + ttft + decode, tokens))
        else:
            outcomes.append(_outcome(f"r{i}", tier, arrival, None, None, 0, status))
    catalog = default_catalog()
    collector = RunCollector(dict(DEFAULT_TIERS), catalog.sku)
    for outcome in outcomes:
        collector.outcome(outcome)
    result = collector.summary(3600.0)
    report = latency_report_from_outcomes(outcomes, DEFAULT_TIERS)
    for key in LATENCY_KEYS:
        assert result[key] == report[key], key
        for tier, block in report["tiers"].items():
            assert result["tiers"][tier][key] == block[key], (tier, key)
    # compare finds every latency figure on both sides
    rows = {(row.scope, row.metric): row for row in comparison_rows(result, report)}
    for scope in ("all", *report["tiers"]):
        for key in LATENCY_KEYS:
            row = rows.get((scope, key))
            assert row is None or (row.a is None) == (row.b is None), (scope, key)
