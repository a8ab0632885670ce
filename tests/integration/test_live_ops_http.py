"""The ops server over real HTTP: /healthz follows the supervisor's heartbeats, /readyz the service's
judgement, /metrics the service's own registry only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter

from opscale.runtime.clock import VirtualClock
from opscale.runtime.live.ops_http import OpsServer, start_ops_server
from opscale.runtime.live.supervisor import Supervisor

pytestmark = pytest.mark.integration


class Service:
    def __init__(self) -> None:
        self.clock = VirtualClock(0.0)
        self.registry = CollectorRegistry()
        self.requests = Counter("opscale_router_requests", "Requests routed", registry=self.registry)
        self.supervisor = Supervisor("router", clock=self.clock, registry=self.registry)
        self.ready = False
        self.stepped = asyncio.Event()

        async def step() -> None:
            self.stepped.set()

        self.supervisor.every("tick", period_s=10.0, step=step, timeout_s=1.0)  # deadline 31 s


@pytest.fixture
async def served() -> AsyncIterator[tuple[Service, OpsServer]]:
    svc = Service()
    svc.supervisor.start()
    await asyncio.wait_for(svc.stepped.wait(), 5.0)
    server = await start_ops_server("127.0.0.1", 0, svc.supervisor.health, lambda: svc.ready, svc.registry)
    try:
        yield svc, server
    finally:
        await server.stop()
        await svc.supervisor.stop()


async def get(server: OpsServer, path: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(server.url + path,
                                                                timeout=aiohttp.ClientTimeout(total=5)) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def test_healthz_turns_503_naming_the_stuck_loop(served: tuple[Service, OpsServer]) -> None:
    svc, server = served
    assert server.port > 0
    status, ctype, body = await get(server, "/healthz")
    assert status == 200 and ctype.startswith("application/json") and '"ok": true' in body
    svc.clock.advance(32.0)  # past the tick loop's 31 s deadline without a beat
    status, _, body = await get(server, "/healthz")
    assert status == 503 and '"stuck": ["tick"]' in body and "no heartbeat for 32.0s" in body


async def test_readyz_follows_the_service(served: tuple[Service, OpsServer]) -> None:
    svc, server = served
    assert (await get(server, "/readyz"))[0] == 503
    svc.ready = True
    status, _, body = await get(server, "/readyz")
    assert status == 200 and body == '{"ready": true}'


async def test_metrics_come_from_the_service_registry_only(served: tuple[Service, OpsServer]) -> None:
    svc, server = served
    svc.requests.inc(3)
    status, ctype, body = await get(server, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert "opscale_router_requests_total 3.0" in body
    assert "opscale_loop_step_seconds_count" in body  # the supervisor's series share the registry
    assert "python_gc_objects_collected_total" not in body  # nothing from the process-wide default registry


async def test_a_raising_check_is_reported_not_raised() -> None:
    def broken_health() -> dict[str, object]:
        raise RuntimeError("lost the supervisor")

    def broken_ready() -> bool:
        raise RuntimeError("redis gone")

    server = await start_ops_server("127.0.0.1", 0, broken_health, broken_ready, CollectorRegistry())
    try:
        status, _, body = await get(server, "/healthz")
        assert status == 503 and "lost the supervisor" in body
        status, _, body = await get(server, "/readyz")
        assert status == 503 and "redis gone" in body
        assert (await get(server, "/nope"))[0] == 404
    finally:
        await server.stop()


async def test_ops_actions_answer_by_name_and_refuse_bad_input_clearly() -> None:
    seen: list[dict] = []

    async def notice(body: dict) -> tuple[int, dict]:
        if not isinstance(body.get("notice_s"), int | float):
            raise ValueError(f"notice_s must be a number, got {body.get('notice_s')!r}")
        seen.append(body)
        return 202, {"accepted": True}

    actions: dict = {}
    registry = CollectorRegistry()
    server = await start_ops_server("127.0.0.1", 0, lambda: {"ok": True}, lambda: True, registry, actions=actions)
    try:
        actions["spot-notice"] = notice  # registered after the server started, as a service does
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async def post(path: str, **kwargs: object) -> tuple[int, dict]:
                async with session.post(server.url + path, **kwargs) as resp:  # type: ignore[arg-type]
                    return resp.status, await resp.json()

            assert await post("/ops/spot-notice", json={"notice_s": 30}) == (202, {"accepted": True})
            status, body = await post("/ops/spot-notice", json={"notice_s": "soon"})
            assert status == 400 and "notice_s must be a number, got 'soon'" in body["error"]
            status, body = await post("/ops/spot-notice", data=b"{not json")
            assert status == 400 and "not JSON" in body["error"]
            status, body = await post("/ops/spot-notice", json=[1])
            assert status == 400 and "JSON object" in body["error"]
            status, body = await post("/ops/reboot", json={})
            assert status == 404 and "'reboot'" in body["error"] and "spot-notice" in body["error"]
    finally:
        await server.stop()
    assert seen == [{"notice_s": 30}]
