"""The live stack behind API keys, on real NATS and Redis: a request without a key is refused with 401
before it reaches the router core, a keyed one is served under its key's default tier, its record on
NATS names the tenant (the key id) as the aggregator receives it, and the router's /metrics count the
tenant's usage without ever showing its secret."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from _stack import LiveStack, eventually, running_stack

from opscale.model import RequestOutcome
from opscale.services import subjects

pytestmark = [pytest.mark.integration, pytest.mark.security]

SECRET = "sk-live-stack-5e0c1d2b3a49"
KEY = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture
async def stack(nats_url: str, redis_url: str, namespace: str) -> AsyncIterator[LiveStack]:
    s = LiveStack(nats_url, redis_url, namespace, overrides={"router": {"auth": {
        "keys": [{"id": "team-a", "secret": SECRET, "default_tier": "batch", "requests_per_min": 600}]}}})
    async with running_stack(s):
        yield s



async def test_keys_at_the_live_router(stack: LiveStack) -> None:
    body = {"model": stack.model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.router_url}/v1/chat/completions", json=body) as resp:
            assert resp.status == 401 and (await resp.json())["error"]["code"] == "invalid_api_key"

        async def model_listed() -> bool:
            async with session.get(f"{stack.router_url}/v1/models", headers=KEY) as resp:
                return resp.status == 200 and stack.model in [m["id"] for m in (await resp.json())["data"]]

        await eventually(model_listed)

        async def served() -> str | None:  # the first instance may still be loading: held, then served
            async with session.post(f"{stack.router_url}/v1/chat/completions", json=body, headers=KEY) as resp:
                return resp.headers["x-request-id"] if resp.status == 200 else None

        request_id = await eventually(served, timeout_s=60.0)

        router = stack.processes["router"]

        async def published() -> RequestOutcome | None:
            batch = await router.bus.last(subjects.records(stack.region))
            return next((r for r in batch or () if r.request_id == request_id), None)

        outcome = await eventually(published)
        assert (outcome.tenant, outcome.tier, outcome.status) == ("team-a", "batch", "ok")

        async with session.get(f"http://127.0.0.1:{router.ops_port}/metrics") as resp:
            metrics = await resp.text()
    assert 'opscale_router_tenant_requests_total{status="ok",tenant="team-a"}' in metrics
    assert 'opscale_router_auth_failures_total{reason="missing"} 1.0' in metrics
    assert SECRET not in metrics
