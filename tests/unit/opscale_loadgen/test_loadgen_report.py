"""The shared latency report: the docstring's worked example, percentiles against a direct computation,
SLO attainment per tier (TTFT/TBT for interactive, the deadline for batch), a request count that always
equals the input's (failures and unsent requests included), the simulator's outcomes, and the CSV."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opscale.model import DEFAULT_TIERS, RequestOutcome
from opscale.reporting.latency_report import (
    REPORT_KIND,
    LatencyRecord,
    RequestStatus,
    build_latency_report,
    latency_report_from_outcomes,
    read_latency_csv,
    write_latency_csv,
)
from opscale.stats import percentile

pytestmark = pytest.mark.unit

INTERACTIVE = "interactive"


def test_the_worked_example_of_the_docstring() -> None:
    records = [
        LatencyRecord("a", INTERACTIVE, 0.0, 0.5, 1.4, 10),
        LatencyRecord("b", INTERACTIVE, 1.0, 4.0, 4.9, 10),
        LatencyRecord("c", INTERACTIVE, 2.0, None, None, 0, RequestStatus.HTTP_5XX, http_status=503),
        LatencyRecord("d", INTERACTIVE, None, None, None, 0, RequestStatus.NOT_SENT),
    ]
    report = build_latency_report(records, DEFAULT_TIERS)
    assert report["kind"] == REPORT_KIND
    assert (report["requests"], report["sent"], report["completed"], report["dropped"], report["not_sent"]) == \
        (4, 3, 2, 1, 1)
    assert report["errors"] == {"http_5xx": 1}
    assert report["ttft_p50_s"] == pytest.approx(1.75)
    assert report["tbt_p50_s"] == pytest.approx(0.1)
    assert report["slo_attainment"] == pytest.approx(1 / 3)
    assert report["tiers"][INTERACTIVE]["requests"] == 4 and report["tiers_without_slo"] == []
    assert "replay" not in report  # no scheduled times: not a replay


def test_percentiles_match_a_direct_computation_and_tiers_are_judged_by_their_own_objectives() -> None:
    records = []
    for i in range(100):
        ttft = 0.01 * (i + 1)  # 10 ms .. 1 s
        records.append(LatencyRecord(f"i{i}", INTERACTIVE, 0.0, ttft, ttft + 0.05 * 9, 10))  # TBT 50 ms: met
    records.append(LatencyRecord("slow-tbt", INTERACTIVE, 0.0, 0.1, 0.1 + 0.2 * 9, 10))  # TBT 200 ms: missed
    records.append(LatencyRecord("b-ok", "batch", 0.0, 100.0, 3000.0, 50))  # within the 1 h deadline
    records.append(LatencyRecord("b-late", "batch", 0.0, 100.0, 4000.0, 50))  # past it
    records.append(LatencyRecord("x", "gold", 0.0, 0.1, 0.2, 2))  # no such tier: never met
    report = build_latency_report(records, DEFAULT_TIERS)
    ttfts = [0.01 * (i + 1) for i in range(100)] + [0.1]
    for q in (50, 90, 99):
        assert report["tiers"][INTERACTIVE][f"ttft_p{q}_s"] == pytest.approx(percentile(ttfts, q))
    assert report["tiers"][INTERACTIVE]["slo_attainment"] == pytest.approx(100 / 101)
    assert report["tiers"]["batch"]["slo_attainment"] == pytest.approx(0.5)
    assert report["tiers"]["gold"]["slo_attainment"] == 0.0 and report["tiers_without_slo"] == ["gold"]
    assert report["slo_attainment"] == pytest.approx(101 / 104)


def test_token_gaps_give_inter_token_percentiles_within_one_percent() -> None:
    gaps = tuple(0.001 * (k + 1) for k in range(100))  # 1 .. 100 ms
    first = 1.0
    finish = first + sum(gaps)
    report = build_latency_report([LatencyRecord("a", INTERACTIVE, 0.0, first, finish, 101, token_gaps_s=gaps)],
                                  DEFAULT_TIERS)
    for q in (50, 90, 99):
        assert report[f"itl_p{q}_s"] == pytest.approx(percentile(gaps, q), rel=0.02)
    assert report["tbt_p50_s"] == pytest.approx(sum(gaps) / 100)


def test_replay_block_reports_rates_and_send_lateness() -> None:
    # ten requests due every 0.1 s, each sent 5 ms late except the last, 50 ms late
    records = [LatencyRecord(f"r{i}", INTERACTIVE, 0.1 * i + (0.05 if i == 9 else 0.005), 0.1 * i + 0.2, 0.1 * i + 0.5, 5,
                             scheduled_s=0.1 * i) for i in range(10)]
    records.append(LatencyRecord("late", INTERACTIVE, None, None, None, 0, RequestStatus.NOT_SENT, scheduled_s=1.0))
    replay = build_latency_report(records, DEFAULT_TIERS)["replay"]
    assert replay["intended_rps"] == pytest.approx(10 / 1.0)  # 11 due over 1 s
    assert replay["achieved_rps"] == pytest.approx(9 / (0.95 - 0.005))
    assert replay["send_lateness_p50_s"] == pytest.approx(0.005)
    assert replay["send_lateness_max_s"] == pytest.approx(0.05)


STATUSES = st.sampled_from(list(RequestStatus))


@st.composite
def record_lists(draw: st.DrawFn) -> list[LatencyRecord]:
    records = []
    for i in range(draw(st.integers(0, 40))):
        status = draw(STATUSES)
        tier = draw(st.sampled_from([INTERACTIVE, "batch", "other"]))
        arrival = draw(st.floats(0, 100, allow_nan=False))
        ttft = draw(st.floats(0, 10, allow_nan=False))
        tokens = draw(st.integers(0, 50))
        if status == RequestStatus.NOT_SENT:
            records.append(LatencyRecord(f"r{i}", tier, None, None, None, 0, status, scheduled_s=arrival))
        else:
            records.append(LatencyRecord(f"r{i}", tier, arrival, arrival + ttft, arrival + ttft + tokens * 0.01,
                                         tokens, status, scheduled_s=arrival))
    return records


@settings(max_examples=100, deadline=None)
@given(records=record_lists())
def test_every_record_is_counted_once_whatever_its_status(records: list[LatencyRecord]) -> None:
    report = build_latency_report(records, DEFAULT_TIERS)
    assert report["requests"] == len(records)
    assert report["completed"] + report["dropped"] + report["not_sent"] == len(records)
    assert report["dropped"] == sum(report["errors"].values())
    assert sum(t["requests"] for t in report["tiers"].values()) == len(records)
    attainment = report["slo_attainment"]
    assert attainment is None or 0.0 <= attainment <= 1.0


def test_the_simulators_outcomes_give_the_same_report() -> None:
    outcomes = [
        RequestOutcome("a", "m", INTERACTIVE, "eu", "eu", "i1", 0.0, 0.5, 1.4, 100, 10),
        RequestOutcome("b", "m", INTERACTIVE, "eu", "eu", "", 1.0, None, None, 100, 0, status="rejected"),
        RequestOutcome("c", "m", "batch", "eu", "eu", "i1", 2.0, 5.0, 9.0, 100, 20),
    ]
    report = latency_report_from_outcomes(outcomes, DEFAULT_TIERS)
    assert (report["requests"], report["completed"], report["dropped"]) == (3, 2, 1)
    assert report["errors"] == {"rejected": 1}
    assert report["tiers"][INTERACTIVE]["ttft_p50_s"] == pytest.approx(0.5)
    assert report["tiers"]["batch"]["e2e_p99_s"] == pytest.approx(7.0)
    met = sum(o.meets(DEFAULT_TIERS[o.tier]) for o in outcomes)
    assert report["slo_attainment"] == pytest.approx(met / 3)


def test_the_csv_has_one_row_per_record(tmp_path: Path) -> None:
    records = [
        LatencyRecord("a", INTERACTIVE, 0.0, 0.5, 1.4, 10, model="m", requested_tokens=10, scheduled_s=0.0,
                      http_status=200, token_gaps_s=(0.1,) * 9),
        LatencyRecord("b", INTERACTIVE, 2.0, None, None, 0, RequestStatus.HTTP_4XX, http_status=400, error="bad, really"),
        LatencyRecord("c", INTERACTIVE, None, None, None, 0, RequestStatus.NOT_SENT, scheduled_s=3.0),
    ]
    path = tmp_path / "requests.csv"
    assert write_latency_csv(path, records, with_gaps=True) == 3
    rows = list(read_latency_csv(path))
    assert [r["request_id"] for r in rows] == ["a", "b", "c"]
    assert [r["status"] for r in rows] == ["ok", "http_4xx", "not_sent"]
    assert float(rows[0]["ttft_s"]) == pytest.approx(0.5) and float(rows[0]["tbt_s"]) == pytest.approx(0.1)
    assert len(rows[0]["token_gaps_ms"].split()) == 9 and rows[1]["error"] == "bad, really"
    assert rows[1]["ttft_s"] == "" and rows[2]["sent_s"] == ""
