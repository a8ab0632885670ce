"""The live stack behind API keys, on real NATS and Redis: a request without a key is refused with 401
before it reaches the router core, a keyed one is served under its key's default tier, its record on
NATS names the tenant (the key id) as the aggregator receives it, and the router's /metrics count the
tenant's usage without ever showing its secret."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from _stack import LiveStack

from opscale.model import RequestOutcome
from opscale.runtime.live.bus import NatsBus
from opscale.runtime.live.store import RedisStore
from opscale.services import subjects

pytestmark = [pytest.mark.integration, pytest.mark.security]

SECRET = "sk-live-stack-5e0c1d2b3a49"
KEY = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture
async def stack(nats_url: str, redis_url: str, namespace: str) -> AsyncIterator[LiveStack]:
    s = LiveStack(nats_url, redis_url, namespace, overrides={"router": {"auth": {
        "keys": [{"id": "team-a", "secret": SECRET, "default_tier": "batch", "requests_per_min": 600}]}}})
    try:
        await s.start()
        yield s
    finally:
        await s.close()
        store = RedisStore(redis_url, namespace)
        await store.delete_namespace()
        await store.close()
        cleaner = NatsBus(namespace)
        await cleaner.connect(nats_url, f"cleanup-{namespace}", ensure_streams=False)
        await cleaner.delete_streams()
        await cleaner.close()


async def _eventually(check, timeout_s: float = 30.0):  # noqa: ANN001, ANN202
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not (value := await check()):
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.1)  # noqa: TID251 - polling a real server
    return value


async def test_keys_at_the_live_router(stack: LiveStack) -> None:
    body = {"model": stack.model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.router_url}/v1/chat/completions", json=body) as resp:
            assert resp.status == 401 and (await resp.json())["error"]["code"] == "invalid_api_key"

        async def model_listed() -> bool:
            async with session.get(f"{stack.router_url}/v1/models", headers=KEY) as resp:
                return resp.status == 200 and stack.model in [m["id"] for m in (await resp.json())["data"]]

        await _eventually(model_listed)

        async def served() -> str | None:  # the first instance may still be loading: held, then served
            async with session.post(f"{stack.router_url}/v1/chat/completions", json=body, headers=KEY) as resp:
                return resp.headers["x-request-id"] if resp.status == 200 else None

        request_id = await _eventually(served, timeout_s=60.0)

        router = stack.processes["router"]

        async def published() -> RequestOutcome | None:
            batch = await router.bus.last(subjects.records(stack.region))
            return next((r for r in batch or () if r.request_id == request_id), None)

        outcome = await _eventually(published)
        assert (outcome.tenant, outcome.tier, outcome.status) == ("team-a", "batch", "ok")

        async with session.get(f"http://127.0.0.1:{router.ops_port}/metrics") as resp:
            metrics = await resp.text()
    assert 'opscale_router_tenant_requests_total{status="ok",tenant="team-a"}' in metrics
    assert 'opscale_router_auth_failures_total{reason="missing"} 1.0' in metrics
    assert SECRET not in metrics
