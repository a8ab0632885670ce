from __future__ import annotations

import pytest
from _builders import heartbeat, outcome, status

from opscale.services.actions import Publish, Store
from opscale.services.aggregator import AggregatorConfig, AggregatorCore
from opscale.services.events import RequestFinished, WindowStats

pytestmark = pytest.mark.unit


def _windows(actions: list) -> dict[float, WindowStats]:
    return {a.event.window_s: a.event for a in actions if isinstance(a, Publish)}


def test_window_rates_percentiles_and_slo() -> None:
    agg = AggregatorCore(AggregatorConfig(windows_s=(10.0, 60.0), publish_interval_s=10.0))
    agg.tick(0.0)
    # 30 requests finishing in (0, 10]: ttft 0.05..2.95 s; interactive SLO is TTFT <= 2 s and TBT <= 0.1 s
    for i in range(30):
        agg.handle(RequestFinished(outcome(i, arrival=i * 0.2, ttft=0.1 * i + 0.05, e2e=0.1 * i + 0.5)), 9.0)
    w = _windows(agg.tick(10.0))
    assert w[10.0].requests == 30 and w[10.0].arrival_rps == pytest.approx(3.0)
    assert w[10.0].prompt_tokens_per_s == pytest.approx(300.0)
    assert w[10.0].ttft_p50_s == pytest.approx(1.45, rel=0.01)  # nearest rank: the 15th of 30, within 1%
    assert w[10.0].slo_attainment == pytest.approx(20 / 30)
    # ten seconds after start-up the minute window has seen ten seconds: the rate is over those, not 60 s
    assert w[60.0].arrival_rps == pytest.approx(3.0)
    for t in (20.0, 30.0, 40.0, 50.0):
        agg.tick(t)
    later = _windows(agg.tick(60.0))
    assert later[60.0].arrival_rps == pytest.approx(0.5) and later[60.0].requests == 30


def test_old_records_leave_the_window_and_duplicates_count_once() -> None:
    agg = AggregatorCore(AggregatorConfig(windows_s=(10.0,), publish_interval_s=10.0))
    agg.tick(0.0)
    rec = RequestFinished(outcome(1, arrival=1.0, ttft=0.2, e2e=1.0))
    agg.handle(rec, 2.0)
    agg.handle(rec, 2.5)
    assert _windows(agg.tick(10.0))[10.0].requests == 1
    assert _windows(agg.tick(20.0)) == {}  # evicted: no key left to report


def test_windows_are_stored_per_key_and_pools_from_fresh_heartbeats_only() -> None:
    agg = AggregatorCore(AggregatorConfig(windows_s=(10.0,), heartbeat_interval_s=2.0))
    agg.tick(0.0)
    agg.handle(RequestFinished(outcome(1, arrival=1.0, ttft=0.2, e2e=1.0)), 2.0)
    agg.handle(heartbeat("a1", "eu", status("i1", queued=3, kv_used_frac=0.5), at_s=9.0), 9.0)
    agg.handle(heartbeat("a2", "eu", status("i2", queued=7), at_s=1.0), 9.0)  # silent since t=1: stale at t=10
    stores = {a.key: a.value for a in agg.tick(10.0) if isinstance(a, Store)}
    assert "window:10:m:eu:interactive" in stores
    assert stores["pool:m:eu"]["queued"] == 3 and stores["pool:m:eu"]["kv_used_frac"] == pytest.approx(0.5)
