"""Restarts lose no state, on real NATS and Redis: an aggregator stopped and started again publishes the
same windows (its records are read back from the stream), and a restarted forecaster issues the same
forecast (its series is rebuilt from the windows the stream holds)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from _stack import LiveStack, clean_namespace, eventually, start_service

from opscale.forecast import make_forecaster
from opscale.model import RequestOutcome
from opscale.runtime.clock import WallClock
from opscale.runtime.live.bus import NatsBus
from opscale.runtime.live.settings import AggregatorSettings, ForecasterSettings, LiveSettings
from opscale.runtime.live.store import RedisStore
from opscale.services import subjects
from opscale.services.events import WindowStats

pytestmark = pytest.mark.integration

WALL = WallClock()  # the streams store events, and the services stamp windows, by wall time



class Service:
    """One live service run as a task with its own stop event, so that a test can stop and start it."""

    def __init__(self, run: Callable[..., Awaitable[None]], settings: LiveSettings) -> None:
        self.run, self.settings = run, settings
        self.task: asyncio.Task[None] | None = None
        self.stop = asyncio.Event()

    async def start(self) -> None:
        self.stop = asyncio.Event()
        self.task, _ = await start_service(self.run, self.settings, self.stop)

    async def close(self) -> None:
        if self.task is not None:
            self.stop.set()
            await asyncio.wait_for(self.task, 30)
            self.task = None


@pytest.fixture
async def store(redis_url: str, namespace: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_url, namespace)
    try:
        yield s
    finally:
        await s.delete_namespace()
        await s.close()


def _common(nats_url: str, redis_url: str, namespace: str) -> dict[str, Any]:
    return {"nats_url": nats_url, "redis_url": redis_url, "namespace": namespace, "ops_host": "127.0.0.1",
            "ops_port": 0, "stop_timeout_s": 5.0}


def _record(i: int, now_s: float) -> RequestOutcome:
    arrival = now_s - 2.0 + i * 0.01
    return RequestOutcome(f"req-{i}", "m", "interactive", "eu", "eu", "m-eu-00001", arrival,
                          arrival + 0.05 + 0.01 * (i % 7), arrival + 1.0, 100 + i, 20)


async def test_a_restarted_aggregator_publishes_the_same_windows(bus: NatsBus, store: RedisStore, nats_url: str,
                                                                  redis_url: str, namespace: str) -> None:
    from opscale_services.aggregator import main as aggregator

    settings = AggregatorSettings(**_common(nats_url, redis_url, namespace), tick_s=0.2,
                                  core={"publish_interval_s": 1.0, "windows_s": [10.0, 60.0]})
    service = Service(aggregator.run, settings)
    await service.start()
    try:
        now = WALL.now_s()
        records = [_record(i, now) for i in range(30)]
        await bus.publish(subjects.records("eu"), tuple(records[:20]))
        await bus.publish(subjects.records("eu"), tuple(records[20:]))
        key = "window:60:m:eu:interactive"

        async def windowed() -> WindowStats | None:
            window = (await store.windows(key)).get(key)
            return window if window is not None and window.requests == 30 else None

        before = await eventually(windowed)
        await service.close()
        restarted_at = WALL.now_s()
        await service.start()

        async def republished() -> WindowStats | None:
            window = (await store.windows(key)).get(key)
            return window if window is not None and window.end_s > restarted_at else None

        after = await eventually(republished)  # by the restarted aggregator
        same = ("requests", "completed", "ttft_p50_s", "ttft_p99_s", "e2e_p99_s", "slo_attainment")
        assert {f: getattr(after, f) for f in same} == {f: getattr(before, f) for f in same}
        # rates are over the time observed since the stack's aggregator first started, not since the
        # restart: the same prompt tokens, not more per second
        started = await store.get_json("aggregator:started_s")
        prompt_tokens = sum(r.prompt_tokens for r in records)
        for window in (before, after):
            observed_s = min(60.0, window.end_s - started)
            assert window.prompt_tokens_per_s * observed_s == pytest.approx(prompt_tokens, rel=1e-6)
    finally:
        await service.close()


async def test_a_restarted_forecaster_issues_the_same_forecast(bus: NatsBus, store: RedisStore, nats_url: str,
                                                               redis_url: str, namespace: str) -> None:
    from opscale_services.forecaster import main as forecaster

    settings = ForecasterSettings(**_common(nats_url, redis_url, namespace), tick_s=0.2,
                                  core={"method": "ewma", "step_s": 1.0, "horizon_s": 5.0, "source_window_s": 60.0})
    rates = [2.0 + (i % 5) * 0.5 for i in range(20)]
    expected = make_forecaster("ewma")
    for rate in rates:
        expected.observe(rate)
    mean = expected.forecast(5).mean  # type: ignore[union-attr]

    service = Service(forecaster.run, settings)
    await service.start()
    try:
        t0 = WALL.now_s() - 100.0
        for i, rate in enumerate(rates):  # one minute-window a step, as the aggregator publishes them
            await bus.publish(subjects.windows("eu", "m"), WindowStats(
                "m", "eu", "interactive", 60.0, t0 + i, 60, 60, rate, 100.0, 10.0, None, None, None, None, None,
                None, 1.0))
        key = "forecast:m:eu:interactive"

        async def forecast_of_the_whole_series() -> dict[str, Any] | None:
            value = await store.get_json(key)
            return value if value is not None and value["mean_rps"] == pytest.approx(mean) else None

        before = await eventually(forecast_of_the_whole_series)
        await service.close()
        await store.delete_namespace()
        await service.start()

        async def reissued() -> dict[str, Any] | None:
            return await store.get_json(key)

        after = await eventually(reissued)
        assert after["at_s"] > before["at_s"]
        assert {k: after[k] for k in ("mean_rps", "lo_rps", "hi_rps", "method")} == {
            k: before[k] for k in ("mean_rps", "lo_rps", "hi_rps", "method")}
    finally:
        await service.close()


async def test_a_restarted_node_agent_takes_its_engines_back(nats_url: str, redis_url: str, namespace: str,
                                                             store: RedisStore) -> None:

    from opscale.model import InstanceState
    from opscale.runtime.live.grpc_glue import NodeAgentClient
    from opscale.services.events import ApplyCommand

    stack = LiveStack(nats_url, redis_url, namespace)
    await stack.start()
    try:
        async with NodeAgentClient(stack.agent_address, 2.0, tls=stack.planner_tls) as agent:
            async def serving():  # noqa: ANN202
                hb = await agent.status()
                ready = hb.instances and all(i.state == InstanceState.READY for i in hb.instances)
                return hb if hb.epoch >= 1 and hb.fencing_token >= 1 and ready else None

            before = await eventually(serving)
        await stack.restart("node_agent")  # its simulated engines stopped with it
        async with NodeAgentClient(stack.agent_address, 2.0, tls=stack.planner_tls) as agent:
            # at once, before any planner command: the same instances, epoch and fencing token
            restored = await agent.status()
            assert (restored.epoch, restored.fencing_token) == (before.epoch, before.fencing_token)
            assert {i.instance_id for i in restored.instances} == {i.instance_id for i in before.instances}
            # a command older than the fence seen before the restart is still refused
            stale = await agent.apply(ApplyCommand("agent-1", before.epoch + 1, "stale", (),
                                                   fencing_token=before.fencing_token - 1))
            assert not stale.accepted and "fencing token" in stale.reason
            after = await eventually(serving)  # the engines started again and serve
            assert {i.instance_id for i in after.instances} == {i.instance_id for i in before.instances}
            assert after.epoch == before.epoch  # the planner had nothing to re-send
    finally:
        await stack.close()
        await clean_namespace(nats_url, redis_url, namespace)
