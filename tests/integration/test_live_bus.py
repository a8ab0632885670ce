"""NatsBus against a real nats-server with JetStream: streams, publish/subscribe, de-duplication,
redelivery with bounded deliveries, durable resume, back-pressure, poison messages and `last()`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import nats
import pytest

from opscale.model import InstanceSpec, Plan
from opscale.runtime.live.bus import TYPE_HEADER, BusError, Delivery, NatsBus, StreamSpec
from opscale.runtime.live.local_servers import start_nats
from opscale.services import subjects
from opscale.services.events import ForecastIssued, PlanPublished, WindowStats

pytestmark = pytest.mark.integration

WAIT_S = 10.0  # upper bound for anything to arrive; tests finish as soon as it does


def window(i: int, region: str = "eu", model: str = "llama") -> WindowStats:
    return WindowStats(model=model, region=region, tier="chat", window_s=10.0, end_s=100.0 + i, requests=i,
                       completed=i, arrival_rps=i / 10, prompt_tokens_per_s=12.5 * i, output_tokens_per_s=3.0,
                       ttft_p50_s=0.1, ttft_p99_s=None, tbt_p50_s=None, tbt_p99_s=0.05, e2e_p50_s=1.0,
                       e2e_p99_s=2.0, slo_attainment=0.99)


class Collector:
    """A handler that records deliveries and wakes the test when `until(deliveries)` holds."""

    def __init__(self, until: Callable[[list[Delivery]], bool], fail: Callable[[Delivery], bool] = lambda d: False):
        self.deliveries: list[Delivery] = []
        self.done = asyncio.Event()
        self._until = until
        self._fail = fail

    def expect(self, until: Callable[[list[Delivery]], bool]) -> None:
        """A further goal for the same subscription."""
        self._until = until
        self.done = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        if self._until(self.deliveries):
            self.done.set()
        if self._fail(delivery):
            raise RuntimeError(f"handler refuses delivery {delivery.num_delivered}")

    async def wait(self) -> None:
        await asyncio.wait_for(self.done.wait(), WAIT_S)


async def settled(sub: object, predicate: Callable[[object], bool]) -> None:
    """Wait until the subscription's stats satisfy `predicate` (acks land just after the handler)."""
    async def poll() -> None:
        while not predicate(sub.stats()):  # type: ignore[attr-defined]
            await asyncio.sleep(0.005)  # noqa: TID251 - polling a real server's acknowledgement
    await asyncio.wait_for(poll(), WAIT_S)


async def test_streams_are_created_idempotently_with_namespaced_names_and_limits(
        bus: NatsBus, namespace: str, nats_url: str) -> None:
    names = await bus.ensure_streams()  # connect() already ran it once: this is the update path
    assert f"{namespace.upper()}_OPSCALE_RECORDS" in names
    assert set(names) == set(bus.stream_names())
    raw = nats.NATS()
    await raw.connect(nats_url)
    try:
        jsm = raw.jetstream()
        plans = await jsm.stream_info(bus.stream_name("plans"))
        records = await jsm.stream_info(bus.stream_name("records"))
    finally:
        await raw.close()
    assert plans.config.subjects == [f"{namespace}.opscale.plans.>"]
    assert plans.config.max_msgs_per_subject == 100
    assert records.config.max_age == pytest.approx(86_400.0)
    assert records.config.max_bytes == 1024 * 1024 * 1024


async def test_publish_subscribe_delivers_in_order_without_namespace(bus: NatsBus) -> None:
    sent = [window(i) for i in range(25)]
    for w in sent:
        await bus.publish(subjects.windows(w.region, w.model), w)
    got = Collector(until=lambda ds: len(ds) >= len(sent))
    sub = await bus.subscribe(subjects.WINDOWS_ALL, "planner-windows", got)
    await got.wait()
    await settled(sub, lambda s: s.acked == len(sent))
    assert [d.event for d in got.deliveries] == sent
    assert {d.subject for d in got.deliveries} == {"opscale.windows.eu.llama"}
    assert all(d.type_name == "WindowStats" and d.num_delivered == 1 for d in got.deliveries)
    stats = sub.stats()
    assert (stats.received, stats.acked, stats.nacked, stats.dead_lettered, stats.pending) == (25, 25, 0, 0, 0)


async def test_namespaces_do_not_see_each_other(bus: NatsBus, nats_url: str) -> None:
    other = NatsBus("zz" + bus.namespace)
    await other.connect(nats_url, "other-namespace")
    try:
        await other.publish(subjects.windows("eu", "llama"), window(99))
        await bus.publish(subjects.windows("eu", "llama"), window(1))
        got = Collector(until=lambda ds: len(ds) >= 1)
        sub = await bus.subscribe(subjects.WINDOWS_ALL, "ns-check", got)
        await got.wait()
        await settled(sub, lambda s: s.acked == 1)
        assert [d.event.requests for d in got.deliveries] == [1]
    finally:
        await other.delete_streams()
        await other.close()


async def test_msg_id_deduplicates_within_the_window(bus: NatsBus) -> None:
    forecast = ForecastIssued("llama", "eu", "chat", 60.0, 300.0, 2.0, 1.0, 3.0, "ewma")
    first = await bus.publish(subjects.forecasts("eu", "llama"), forecast, msg_id="fc-eu-llama-60")
    again = await bus.publish(subjects.forecasts("eu", "llama"), forecast, msg_id="fc-eu-llama-60")
    marker = ForecastIssued("llama", "eu", "chat", 120.0, 300.0, 9.0, 8.0, 10.0, "ewma")
    await bus.publish(subjects.forecasts("eu", "llama"), marker, msg_id="fc-eu-llama-120")
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.seq == first.seq
    got = Collector(until=lambda ds: any(d.event.at_s == 120.0 for d in ds))
    await bus.subscribe(subjects.FORECASTS_ALL, "dedup", got)
    await got.wait()
    assert [d.event.at_s for d in got.deliveries] == [60.0, 120.0]
    assert got.deliveries[0].msg_id == "fc-eu-llama-60"


async def test_failed_handler_is_redelivered_then_acked(bus: NatsBus) -> None:
    await bus.publish(subjects.windows("eu", "llama"), window(1))
    got = Collector(until=lambda ds: len(ds) >= 2, fail=lambda d: d.num_delivered == 1)
    sub = await bus.subscribe(subjects.WINDOWS_ALL, "retry-once", got, retry_base_s=0.01)
    await got.wait()
    await settled(sub, lambda s: s.acked == 1)
    assert [d.num_delivered for d in got.deliveries] == [1, 2]
    stats = sub.stats()
    assert (stats.nacked, stats.acked, stats.dead_lettered) == (1, 1, 0)


async def test_deliveries_are_bounded_and_the_give_up_is_counted(bus: NatsBus) -> None:
    await bus.publish(subjects.windows("eu", "llama"), window(1))
    await bus.publish(subjects.windows("eu", "llama"), window(2))
    # Message 1 always fails; message 2 must still get through (no head-of-line blocking forever).
    got = Collector(until=lambda ds: sum(1 for d in ds if d.event.requests == 1) >= 3
                    and any(d.event.requests == 2 for d in ds),
                    fail=lambda d: d.event.requests == 1)
    sub = await bus.subscribe(subjects.WINDOWS_ALL, "poisoned", got, max_deliveries=3, retry_base_s=0.01)
    await got.wait()
    await settled(sub, lambda s: s.dead_lettered == 1 and s.acked == 1)
    assert [d.num_delivered for d in got.deliveries if d.event.requests == 1] == [1, 2, 3]
    stats = sub.stats()
    assert (stats.nacked, stats.dead_lettered, stats.acked) == (2, 1, 1)


async def test_handler_timeout_counts_as_a_failure(bus: NatsBus) -> None:
    await bus.publish(subjects.windows("eu", "llama"), window(1))
    stuck = asyncio.Event()

    async def slow_then_fine(d: Delivery) -> None:
        if d.num_delivered == 1:
            await stuck.wait()  # never set: the handler deadline must cut it off

    sub = await bus.subscribe(subjects.WINDOWS_ALL, "slow", slow_then_fine, handler_timeout_s=0.05,
                              retry_base_s=0.01)
    await settled(sub, lambda s: s.acked == 1)
    assert sub.stats().nacked == 1


async def test_durable_consumer_resumes_after_restart(bus_factory: Callable[..., object]) -> None:
    first_bus = await bus_factory()  # type: ignore[misc]
    for i in range(3):
        await first_bus.publish(subjects.records("eu"), window(i))  # any event type may ride any stream
    got = Collector(until=lambda ds: len(ds) >= 3)
    sub = await first_bus.subscribe(subjects.RECORDS_ALL, "aggregator", got)
    await got.wait()
    await settled(sub, lambda s: s.acked == 3)
    await first_bus.close()

    second_bus = await bus_factory()  # type: ignore[misc]
    for i in range(3, 5):
        await second_bus.publish(subjects.records("eu"), window(i))
    later = Collector(until=lambda ds: len(ds) >= 2)
    await second_bus.subscribe(subjects.RECORDS_ALL, "aggregator", later)
    await later.wait()
    assert [d.event.requests for d in later.deliveries] == [3, 4]


async def test_max_pending_bounds_what_is_fetched_ahead(bus: NatsBus) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()
    seen: list[int] = []

    async def blocked(d: Delivery) -> None:
        entered.set()
        await release.wait()
        seen.append(d.event.requests)

    for i in range(10):
        await bus.publish(subjects.windows("eu", "llama"), window(i))
    sub = await bus.subscribe(subjects.WINDOWS_ALL, "bounded", blocked, max_pending=2, fetch_wait_s=0.05)
    await asyncio.wait_for(entered.wait(), WAIT_S)
    await settled(sub, lambda s: s.received == 2)
    assert sub.stats().pending == 2 and sub.stats().received == 2  # nothing more while the handler holds
    release.set()
    await settled(sub, lambda s: s.acked == 10)
    assert seen == list(range(10))
    assert sub.stats().pending == 0


async def test_undecodable_message_is_terminated_counted_and_skipped(bus: NatsBus, nats_url: str) -> None:
    raw = nats.NATS()
    await raw.connect(nats_url)
    try:
        await raw.jetstream().publish(bus.subject(subjects.windows("eu", "llama")), b"\xff\x00garbage",
                                      headers={TYPE_HEADER: "WindowStats"})
        await raw.jetstream().publish(bus.subject(subjects.windows("eu", "llama")), b"",
                                      headers={TYPE_HEADER: "NoSuchType"})
    finally:
        await raw.close()
    await bus.publish(subjects.windows("eu", "llama"), window(7))
    got = Collector(until=lambda ds: len(ds) >= 1)
    sub = await bus.subscribe(subjects.WINDOWS_ALL, "poison", got)
    await got.wait()
    await settled(sub, lambda s: s.acked == 1 and s.decode_errors == 2)
    assert got.deliveries[0].event == window(7)


async def test_last_reads_the_newest_plan_per_subject(bus: NatsBus) -> None:
    assert await bus.last(subjects.plans()) is None
    for epoch in (1, 2, 3):
        plan = Plan(epoch=epoch, created_s=float(epoch), assignments={"a1": (InstanceSpec("i1", "llama", "H100", 2),)},
                    agent_regions={"a1": "eu"})
        await bus.publish(subjects.plans(), PlanPublished(plan), msg_id=f"plan-{epoch}")
    newest = await bus.last(subjects.plans())
    assert isinstance(newest, PlanPublished) and newest.plan.epoch == 3
    assert newest.plan.assignments["a1"][0].tp == 2


async def test_plans_stream_keeps_only_the_last_n_per_subject(bus_factory: Callable[..., object],
                                                              nats_url: str) -> None:
    streams = (StreamSpec("plans", "PLANS", max_age_s=None, max_bytes=1024 * 1024, max_msgs_per_subject=2),)
    small = await bus_factory(streams=streams)  # type: ignore[misc]
    for epoch in range(1, 6):
        await small.publish(subjects.plans(), PlanPublished(Plan(epoch=epoch, created_s=0.0)))
    raw = nats.NATS()
    await raw.connect(nats_url)
    try:
        info = await raw.jetstream().stream_info(small.stream_name("plans"))
    finally:
        await raw.close()
    assert info.state.messages == 2
    newest = await small.last(subjects.plans())
    assert newest.plan.epoch == 5


async def test_bad_arguments_are_refused_with_the_value(bus: NatsBus) -> None:
    with pytest.raises(ValueError, match="'Bad Space'"):
        NatsBus("Bad Space")
    with pytest.raises(BusError, match="not an opscale subject"):
        await bus.publish("elsewhere.thing", window(1))
    with pytest.raises(BusError, match="no stream for kind 'nosuch'"):
        await bus.publish("opscale.nosuch.eu", window(1))
    with pytest.raises(ValueError, match="durable name"):
        await bus.subscribe(subjects.WINDOWS_ALL, "has.dot", Collector(until=lambda ds: True))


async def test_connect_to_a_closed_port_fails_clearly() -> None:
    bus = NatsBus("tclosed")
    with pytest.raises(BusError, match="cannot connect to NATS at nats://127.0.0.1:9"):
        await bus.connect("nats://127.0.0.1:9", "nobody", connect_timeout_s=0.2)


async def test_publisher_and_consumer_survive_a_nats_restart(tmp_path: Path) -> None:
    """A NATS restart loses nothing: the stream is on disk, both sides reconnect, the durable consumer
    carries on from its last ack."""
    first = start_nats(store_dir=tmp_path / "js")
    restarted = None
    bus = NatsBus("trestart")
    try:
        await bus.connect(first.url, "restart-test", reconnect_wait_s=0.05)
        got = Collector(until=lambda ds: len(ds) >= 1)
        sub = await bus.subscribe(subjects.WINDOWS_ALL, "survivor", got, fetch_wait_s=0.2, retry_base_s=0.01,
                                  retry_max_s=0.1)
        await bus.publish(subjects.windows("eu", "llama"), window(1))
        await got.wait()
        await settled(sub, lambda s: s.acked == 1)

        first.stop()
        restarted = start_nats(port=first.port, store_dir=tmp_path / "js")
        got.expect(lambda ds: len(ds) >= 2)

        async def publish_once_reconnected() -> None:
            while True:
                try:
                    await bus.publish(subjects.windows("eu", "llama"), window(2), msg_id="after-restart",
                                      timeout_s=0.5)
                    return
                except BusError:
                    await asyncio.sleep(0.02)  # noqa: TID251 - waiting for the client to reconnect

        await asyncio.wait_for(publish_once_reconnected(), WAIT_S)
        await got.wait()
        assert [d.event.requests for d in got.deliveries] == [1, 2]
    finally:
        await bus.close(timeout_s=1.0)
        first.stop()
        if restarted is not None:
            restarted.stop()


async def test_replay_reads_back_what_the_stream_holds_since_a_time_and_moves_no_consumer(bus: NatsBus) -> None:
    from opscale.runtime.clock import WallClock

    WALL = WallClock()  # noqa: N806 - the stream stores events by wall time
    subject = subjects.windows("eu", "llama")
    for i in range(3):
        await bus.publish(subject, window(i))
    await asyncio.sleep(0.05)  # noqa: TID251 - so that the later events are stored at a later time
    since_s = WALL.now_s()
    for i in range(3, 8):
        await bus.publish(subject, window(i))
    replayed: list[Delivery] = []

    async def keep(delivery: Delivery) -> None:
        replayed.append(delivery)

    assert await bus.replay(subjects.WINDOWS_ALL, since_s, keep) == 5
    assert [d.event.requests for d in replayed] == [3, 4, 5, 6, 7]  # in stream order, decoded
    assert await bus.replay(subjects.WINDOWS_ALL, WALL.now_s() + 60, keep) == 0  # nothing that new
    # a durable consumer created afterwards still starts from the beginning: the replay acknowledged nothing
    everything = Collector(lambda ds: len(ds) == 8)
    sub = await bus.subscribe(subjects.WINDOWS_ALL, "after-replay", everything)
    await everything.wait()
    await sub.stop()
