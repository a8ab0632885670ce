"""The live router behind API keys, end to end on loopback: a request without a key or with a wrong one
gets 401 with OpenAI's body, a model the key may not use 404, a request over the key's request or token
rate 429 with Retry-After, a key's default tier applies to requests that name none, and the tenant (its
key id) reaches the request records and the per-tenant metrics. No secret, and no wrong key a client
sent, appears in the logs, the metrics or any error body."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from _router_service_loopback import LiveRouter, live_router, serve
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from opscale.model import InstanceState, InstanceStatus, Role
from opscale.openai.routed_headers import TIER_HEADER
from opscale.routing.tenants import ApiKeySpec, KeyTable
from opscale.runtime.clock import WallClock
from opscale.services.router import RouterConfig, RouterCore

from opscale_services.launcher import AUTH_OFF_WARNING, run_stack
from opscale_services.router.auth import TenantGate
from opscale_services.router.metrics import RouterMetrics

pytestmark = [pytest.mark.unit, pytest.mark.security]

SECRET_A = "sk-tenant-a-7d1f0c9b2e4a"
SECRET_B = "sk-tenant-b-51c8e2f03a9d"
WRONG = "sk-not-a-key-0000aaaa1111"
BODY = {"model": "m", "prompt": "hello there", "max_tokens": 4}


class Engine:
    """An OpenAI-compatible engine that streams `tokens` tokens (with usage when asked) and keeps the
    headers it was sent."""

    def __init__(self, tokens: int = 4) -> None:
        self.tokens = tokens
        self.seen_headers: list[dict[str, str]] = []

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen_headers.append({k.lower(): v for k, v in request.headers.items()})
        response = web.StreamResponse()
        response.content_type = "text/event-stream"
        await response.prepare(request)
        n = min(self.tokens, body["max_tokens"])
        for i in range(n):
            event = {"id": "x", "object": "text_completion", "model": "m",
                     "choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}]}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n}
            await response.write(f"data: {json.dumps({'id': 'x', 'choices': [], 'usage': usage})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response


@asynccontextmanager
async def keyed_router(*keys: dict[str, Any], engine: Engine | None = None,
                       models: tuple[str, ...] = ("m",)) -> AsyncIterator[tuple[LiveRouter, CollectorRegistry, Engine]]:
    engine = engine or Engine()
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    table = KeyTable([ApiKeySpec.model_validate(k) for k in keys], WallClock().now_s())
    gate = TenantGate(table, WallClock().now_s, registry)
    app = web.Application()
    app.router.add_post("/v1/completions", engine.completions)
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(serve(app))
        statuses = [InstanceStatus(f"i-{m}", m, "H100-80GB", 1, Role.UNIFIED, InstanceState.READY, endpoint=url)
                    for m in models]
        router = await stack.enter_async_context(
            live_router(RouterCore(RouterConfig(models=list(models))), statuses, gate=gate, metrics=metrics))
        yield router, registry, engine


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def post(http: aiohttp.ClientSession, r: LiveRouter, headers: dict[str, str],
               body: dict[str, Any] | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    async with http.post(f"{r.url}/v1/completions", json=body or BODY, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.json()


def assert_openai_error(body: dict[str, Any], type_: str, code: str) -> None:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == type_ and body["error"]["code"] == code


async def test_no_key_and_a_wrong_key_get_401_with_openais_body_and_a_bearer_challenge() -> None:
    async with keyed_router({"id": "a", "secret": SECRET_A}) as (r, _, engine), aiohttp.ClientSession() as http:
        for headers in ({}, bearer(WRONG), {"Authorization": f"Basic {SECRET_A}"}, {"Authorization": "Bearer "}):
            status, resp_headers, body = await post(http, r, headers)
            assert status == 401 and resp_headers["WWW-Authenticate"] == "Bearer"
            assert_openai_error(body, "invalid_request_error", "invalid_api_key")
        async with http.get(f"{r.url}/v1/models") as resp:
            assert resp.status == 401
        async with http.get(f"{r.url}/health") as resp:  # load balancers probe without a key
            assert resp.status == 200
        assert engine.seen_headers == []  # nothing reached the engine


@pytest.mark.parametrize("headers", [bearer(SECRET_A), {"authorization": f"bearer {SECRET_A}"},
                                     {"api-key": SECRET_A}, {"x-api-key": SECRET_A}])
async def test_a_valid_key_in_any_accepted_header_is_served(headers: dict[str, str]) -> None:
    async with keyed_router({"id": "a", "secret": SECRET_A}) as (r, _, _engine), aiohttp.ClientSession() as http:
        status, _, body = await post(http, r, headers)
        assert status == 200 and body["choices"][0]["text"] == " t0 t1 t2 t3"


async def test_the_request_series_are_labelled_by_tenant_and_retrieve_hides_other_models() -> None:
    async with keyed_router({"id": "team-a", "secret": SECRET_A, "models": ["m"]}, models=("m", "other")) as (
            r, registry, _engine), aiohttp.ClientSession() as http:
        status, _, _body = await post(http, r, bearer(SECRET_A))
        assert status == 200
        text = generate_latest(registry).decode()
        assert 'opscale_router_requests_total{model="m",status="200",tenant="team-a"} 1.0' in text
        assert SECRET_A not in text
        async with http.get(f"{r.url}/v1/models/other", headers=bearer(SECRET_A)) as resp:
            assert resp.status == 404  # a key learns nothing of the models it may not use
        async with http.get(f"{r.url}/v1/models/m", headers=bearer(SECRET_A)) as resp:
            assert resp.status == 200


async def test_a_model_the_key_may_not_use_is_404_and_not_listed() -> None:
    keys = ({"id": "a", "secret": SECRET_A, "models": ["m"]}, {"id": "b", "secret": SECRET_B})
    async with keyed_router(*keys, models=("m", "other")) as (r, _, _engine), aiohttp.ClientSession() as http:
        status, _, body = await post(http, r, bearer(SECRET_A), {**BODY, "model": "other"})
        assert status == 404 and body["error"]["param"] == "model"
        assert_openai_error(body, "invalid_request_error", "model_not_found")
        assert (await post(http, r, bearer(SECRET_B), {**BODY, "model": "other"}))[0] == 200
        async with http.get(f"{r.url}/v1/models", headers=bearer(SECRET_A)) as resp:
            assert [m["id"] for m in (await resp.json())["data"]] == ["m"]
        async with http.get(f"{r.url}/v1/models", headers=bearer(SECRET_B)) as resp:
            assert sorted(m["id"] for m in (await resp.json())["data"]) == ["m", "other"]


async def test_over_the_request_rate_is_429_with_retry_after_and_other_keys_are_unaffected() -> None:
    keys = ({"id": "a", "secret": SECRET_A, "requests_per_min": 2}, {"id": "b", "secret": SECRET_B})
    async with keyed_router(*keys) as (r, registry, _engine), aiohttp.ClientSession() as http:
        assert [(await post(http, r, bearer(SECRET_A)))[0] for _ in range(2)] == [200, 200]
        status, headers, body = await post(http, r, bearer(SECRET_A))
        assert status == 429
        assert_openai_error(body, "requests", "rate_limit_exceeded")
        assert "requests per min (RPM): Limit 2" in body["error"]["message"]
        assert 1 <= int(headers["Retry-After"]) <= 30  # a request a minute over two: ~30 s to wait
        assert (await post(http, r, bearer(SECRET_B)))[0] == 200
        refused = registry.get_sample_value("opscale_router_tenant_refused_total", {"tenant": "a", "limit": "requests"})
        assert refused == 1.0


async def test_output_tokens_settled_at_the_end_hold_back_the_next_request_with_a_token_429() -> None:
    # 0.1 tokens/s, a burst of 60: a 50-token answer leaves too little for the next prompt
    key = {"id": "a", "secret": SECRET_A, "tokens_per_min": 6, "token_burst": 60}
    async with keyed_router(key, engine=Engine(tokens=50)) as (r, _, _engine), aiohttp.ClientSession() as http:
        assert (await post(http, r, bearer(SECRET_A), {**BODY, "max_tokens": 50}))[0] == 200
        status, headers, body = await post(http, r, bearer(SECRET_A), {**BODY, "prompt": "x" * 40})
        assert status == 429
        assert_openai_error(body, "tokens", "rate_limit_exceeded")
        # 60 - 3 (prompt estimate) - 50 (output) leaves 7; 10 more at 0.1/s is about 30 s
        assert 20 <= int(headers["Retry-After"]) <= 31
        status, headers, body = await post(http, r, bearer(SECRET_A), {**BODY, "prompt": "x" * 400})
        assert status == 429 and "Retry-After" not in headers and "Request too large" in body["error"]["message"]


async def test_the_keys_default_tier_applies_when_the_request_names_none_and_records_name_the_tenant() -> None:
    key = {"id": "batch-team", "secret": SECRET_A, "default_tier": "batch"}
    async with keyed_router(key) as (r, registry, engine), aiohttp.ClientSession() as http:
        assert (await post(http, r, bearer(SECRET_A)))[0] == 200
        assert (await post(http, r, bearer(SECRET_A), {**BODY, "opscale_tier": "interactive"}))[0] == 200
        assert [h[TIER_HEADER] for h in engine.seen_headers] == ["batch", "interactive"]
        await r.records.flush()
        records = r.bus.records()
        assert [(o.tier, o.tenant, o.status) for o in records] == [("batch", "batch-team", "ok"),
                                                                   ("interactive", "batch-team", "ok")]
        assert registry.get_sample_value("opscale_router_tenant_requests_total",
                                         {"tenant": "batch-team", "status": "ok"}) == 2.0
        assert registry.get_sample_value("opscale_router_tenant_tokens_total",
                                         {"tenant": "batch-team", "kind": "output"}) == 8.0


async def test_no_secret_or_wrong_key_in_logs_metrics_or_error_bodies(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    keys = ({"id": "a", "secret": SECRET_A, "requests_per_min": 1, "models": ["m"]}, {"id": "b", "secret": SECRET_B})
    bodies: list[str] = []
    async with keyed_router(*keys) as (r, registry, _engine), aiohttp.ClientSession() as http:
        for headers, body in ((bearer(SECRET_A), BODY), (bearer(SECRET_A), BODY), (bearer(SECRET_B), BODY),
                              (bearer(WRONG), BODY), ({"x-api-key": WRONG}, BODY), ({}, BODY),
                              (bearer(SECRET_B), {**BODY, "model": "nope"}),
                              (bearer(SECRET_B), {**BODY, "max_tokens": -1})):
            async with http.post(f"{r.url}/v1/completions", json=body, headers=headers) as resp:
                bodies.append(await resp.text() + json.dumps(dict(resp.headers)))
        await r.records.flush()
        metrics = generate_latest(registry).decode()
    assert any('"code":"invalid_api_key"' in b for b in bodies) and any("rate_limit_exceeded" in b for b in bodies)
    assert 'tenant="a"' in metrics and 'tenant="b"' in metrics
    published = repr(r.bus.published)
    for secret in (SECRET_A, SECRET_B, WRONG):
        for text in (caplog.text, metrics, published, *bodies):
            assert secret not in text


@pytest.mark.parametrize(("router_section", "warned"), [("{}", True), ("{auth: {enabled: false}}", True),
                                                        (f"{{auth: {{keys: [{{id: a, secret: {SECRET_A}}}]}}}}", False)])
def test_opscale_up_warns_loudly_when_keys_are_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture, router_section: str,
                                                   warned: bool) -> None:
    for name in list(os.environ):
        if name.startswith("OPSCALE_"):
            monkeypatch.delenv(name)
    # the planner's settings are refused, so the stack stops after checking them all and starts nothing
    config = tmp_path / "opscale.yaml"
    config.write_text(f"router: {router_section}\nplanner: {{lease_ttl_s: -1}}\n")
    caplog.set_level(logging.INFO)
    assert run_stack(1, config) == 2
    assert (AUTH_OFF_WARNING in caplog.text) is warned
    assert SECRET_A not in caplog.text


async def test_requests_refused_for_their_names_cost_the_key_nothing() -> None:
    """An unknown model (404) or tier (400) is refused before the key's buckets are charged: two such
    requests used to spend a 2-a-minute key, and the valid ones after them got 429."""
    async with keyed_router({"id": "a", "secret": SECRET_A, "requests_per_min": 2}) as (
            r, _, _engine), aiohttp.ClientSession() as http:
        status, _, _body = await post(http, r, bearer(SECRET_A), {**BODY, "model": "nope"})
        assert status == 404
        status, _, _body = await post(http, r, bearer(SECRET_A), {**BODY, "opscale_tier": "platinum"})
        assert status == 400
        for _ in range(2):
            status, _, _body = await post(http, r, bearer(SECRET_A))
            assert status == 200
