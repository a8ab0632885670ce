from __future__ import annotations

import dataclasses

import pytest
from _builders import heartbeat, outcome, status

from opscale.model import InstanceState, InstanceStatus, Role
from opscale.services import subjects
from opscale.services.actions import Publish, Store
from opscale.services.aggregator import AggregatorConfig, AggregatorCore
from opscale.services.events import PoolUtilisation, RequestFinished, WindowStats

pytestmark = pytest.mark.unit


def _windows(actions: list) -> dict[float, WindowStats]:
    return {a.event.window_s: a.event for a in actions if isinstance(a, Publish) and isinstance(a.event, WindowStats)}


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


def test_a_restarted_aggregator_with_the_records_read_back_reports_the_rates_of_the_first() -> None:
    def run(agg: AggregatorCore, start_s: float) -> dict[float, WindowStats]:
        agg.tick(start_s)
        for i in range(30):
            agg.handle(RequestFinished(outcome(i, arrival=35.0 + i * 0.2, ttft=0.1, e2e=0.5)), 49.0)
        return _windows(agg.tick(start_s + 10.0))

    first = run(AggregatorCore(AggregatorConfig(windows_s=(10.0, 60.0), publish_interval_s=10.0)), 40.0)
    restarted = AggregatorCore(AggregatorConfig(windows_s=(10.0, 60.0), publish_interval_s=10.0))
    restarted.observed_since(0.0)  # the stack's aggregator first started at 0 s; this one starts at 40 s
    again = run(restarted, 40.0)
    never_stopped = AggregatorCore(AggregatorConfig(windows_s=(10.0, 60.0), publish_interval_s=10.0))
    for t in (0.0, 10.0, 20.0, 30.0):
        never_stopped.tick(t)
    expected = run(never_stopped, 40.0)
    assert again[60.0] == expected[60.0] and again[60.0].arrival_rps == pytest.approx(0.6)  # 30 over 50 s
    assert first[60.0].arrival_rps == pytest.approx(3.0)  # over its own 10 s: what a restart must not say


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


def _engine(instance_id: str, *, tp: int = 1, role: Role = Role.UNIFIED,
            state: InstanceState = InstanceState.READY, **figures: float) -> InstanceStatus:
    return dataclasses.replace(status(instance_id, state=state, **figures), tp=tp, role=role)


def _utilisation(actions: list) -> dict[tuple[str, float], PoolUtilisation]:
    """Published pool-utilisation windows by (role, window)."""
    return {(a.event.role.value, a.event.window_s): a.event for a in actions
            if isinstance(a, Publish) and isinstance(a.event, PoolUtilisation)}


def test_pool_utilisation_windows_merge_the_samples_of_their_slots_weighting_by_gpus() -> None:
    agg = AggregatorCore(AggregatorConfig(windows_s=(10.0, 60.0), heartbeat_interval_s=5.0))
    agg.tick(0.0)
    big = _engine("i1", tp=2, busy_frac=1.0, sm_activity=0.1, decode_tps=900.0, prefill_tps=4000.0,
                  prefill_missed_tps=1000.0)
    agg.handle(heartbeat("a1", "eu", big, at_s=9.0), 9.0)
    agg.tick(10.0)
    small = _engine("i2", busy_frac=0.4, sm_activity=0.4, decode_tps=300.0)
    agg.handle(heartbeat("a1", "eu", big, small, at_s=19.0), 19.0)
    actions = agg.tick(20.0)
    windows = _utilisation(actions)
    minute, last = windows[("unified", 60.0)], windows[("unified", 10.0)]
    # The module docstring's example: (2 x 1.0 + 2 x 1.0 + 1 x 0.4) / 5 GPUs sampled.
    assert minute.gpu_util == pytest.approx(0.88)
    assert minute.sm_activity == pytest.approx((0.2 + 0.2 + 0.4) / 5)
    assert minute.decode_tps == pytest.approx((900.0 + 1200.0) / 2) and minute.instances == 1.5
    assert minute.prefill_tps == pytest.approx(4000.0) and minute.prefill_missed_tps == pytest.approx(1000.0)
    assert last.gpu_util == pytest.approx(2.4 / 3) and last.decode_tps == pytest.approx(1200.0)
    assert (last.model, last.region, last.end_s) == ("m", "eu", 20.0)
    published = {a.subject for a in actions if isinstance(a, Publish) and isinstance(a.event, PoolUtilisation)}
    assert published == {subjects.pool_utilisation("eu", "m")}
    stores = {a.key: a.value for a in actions if isinstance(a, Store)}
    assert stores["poolutil:60:m:eu:unified"] == minute and stores["poolutil:10:m:eu:unified"] == last


def test_pool_utilisation_is_per_role_and_counts_only_serving_instances_of_fresh_agents() -> None:
    agg = AggregatorCore(AggregatorConfig(windows_s=(10.0,), heartbeat_interval_s=2.0))
    agg.tick(0.0)
    prefill = _engine("p1", role=Role.PREFILL, busy_frac=0.9, sm_activity=0.5, prefill_tps=20_000.0)
    decode = _engine("d1", role=Role.DECODE, busy_frac=1.0, sm_activity=0.08, decode_tps=3000.0)
    draining = _engine("d2", role=Role.DECODE, state=InstanceState.DRAINING, busy_frac=1.0, sm_activity=0.02,
                       decode_tps=float("nan"))
    loading = _engine("d3", role=Role.DECODE, state=InstanceState.LOADING)
    agg.handle(heartbeat("a1", "eu", prefill, decode, draining, loading, at_s=9.0), 9.0)
    agg.handle(heartbeat("a2", "eu", _engine("d4", role=Role.DECODE, busy_frac=0.0), at_s=1.0), 9.0)  # stale
    windows = _utilisation(agg.tick(10.0))
    assert set(windows) == {("prefill", 10.0), ("decode", 10.0)}
    assert windows[("prefill", 10.0)].prefill_tps == 20_000.0 and windows[("prefill", 10.0)].decode_tps == 0.0
    d = windows[("decode", 10.0)]
    # The loading instance and the stale agent's are left out; a NaN rate counts as 0.
    assert d.instances == 2.0 and d.gpu_util == 1.0 and d.sm_activity == pytest.approx(0.05)
    assert d.decode_tps == 3000.0


def test_a_pools_utilisation_windows_end_once_its_samples_leave_the_longest_window() -> None:
    agg = AggregatorCore(AggregatorConfig(windows_s=(10.0, 30.0), heartbeat_interval_s=100.0))
    agg.tick(0.0)
    agg.handle(heartbeat("a1", "eu", _engine("i1", busy_frac=0.5), at_s=9.0), 9.0)
    assert set(_utilisation(agg.tick(10.0))) == {("unified", 10.0), ("unified", 30.0)}
    agg.handle(heartbeat("a1", "eu", at_s=19.0), 19.0)  # the instance is gone
    assert set(_utilisation(agg.tick(20.0))) == {("unified", 30.0)}  # the minute still holds its sample
    agg.tick(30.0)
    assert _utilisation(agg.tick(40.0)) == {}


def test_records_of_unknown_models_and_tiers_are_counted_and_dropped_never_windowed() -> None:
    # defence in depth behind the router's check (issue 16, item 6): random names make no windows or keys
    agg = AggregatorCore(AggregatorConfig(windows_s=(10.0,), models=["scaled-to-zero"]))
    agg.tick(0.0)
    agg.handle(heartbeat("a1", "eu", status("i1", model="m"), at_s=1.0), 1.0)
    records = [outcome(1, arrival=1.0, ttft=0.1, e2e=1.0, model="m"),
               outcome(2, arrival=1.0, ttft=0.1, e2e=1.0, model="scaled-to-zero"),
               outcome(3, arrival=1.0, ttft=0.1, e2e=1.0, model="random-model"),
               outcome(4, arrival=1.0, ttft=0.1, e2e=1.0, model="m", tier="platinum")]
    for record in records:
        agg.handle(RequestFinished(record), 2.0)
    stored = {a.key for a in agg.tick(10.0) if isinstance(a, Store) and a.key.startswith("window:")}
    assert stored == {"window:10:m:eu:interactive", "window:10:scaled-to-zero:eu:interactive"}
    assert agg.dropped_unknown == {"model": 1, "tier": 1}
