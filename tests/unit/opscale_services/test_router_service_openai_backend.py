"""The node-agent's `openai` engine backend against a fake OpenAI-compatible server (it stands in for
vLLM): binding instances to servers, health checks, metrics, the byte-forwarding proxy, in-flight
counting, and a router disconnect reaching the server. Loopback sockets only, so `unit`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
from _router_service_loopback import serve
from aiohttp import web

from opscale.model import InstanceSpec, Request, Role
from opscale.openai.routed_headers import PROMPT_TOKENS_HEADER, REQUEST_ID_HEADER, routed_headers
from opscale.runtime.clock import VirtualClock
from opscale.runtime.live.settings import OpenAIEngineSettings

from opscale_services.node_agent.openai_engines import (
    OpenAIEngines,
    ServerRates,
    build_openai_proxy_app,
    parse_server_metrics,
    server_rates,
)
from opscale_services.router.upstream import UpstreamClient, UpstreamError

pytestmark = pytest.mark.unit

GUARD_S = 10.0  # hang guard only

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 2.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{engine="0",model_name="tiny"} {tokens}
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{engine="0",model_name="tiny"} {prompt}
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="tiny"} {hits}
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="1.0",model_name="tiny"} {first}
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} {first}
vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny"} {first}
vllm:time_to_first_token_seconds_sum{engine="0",model_name="tiny"} 1.5
"""


def vllm_metrics(tokens: float, prompt: float = 0.0, hits: float = 0.0, first: float = 0.0) -> str:
    return (VLLM_METRICS.replace("{tokens}", str(tokens)).replace("{prompt}", str(prompt))
            .replace("{hits}", str(hits)).replace("{first}", str(first)))


@dataclass
class FakeVllm:
    """A tiny OpenAI-compatible server: streams `tokens` chunks `gap_s` apart, records what it saw."""

    tokens: int = 5
    gap_s: float = 0.0
    healthy: bool = True
    generated: float = 100.0
    prompt: float = 0.0
    prefix_hits: float = 0.0
    first_tokens: float = 0.0
    seen_auth: list[str | None] = field(default_factory=list)
    seen_request_ids: list[str | None] = field(default_factory=list)
    seen_bodies: list[dict[str, object]] = field(default_factory=list)
    aborted: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/completions", self.completions)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=vllm_metrics(self.generated, self.prompt, self.prefix_hits, self.first_tokens))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        self.seen_auth.append(request.headers.get("Authorization"))
        self.seen_request_ids.append(request.headers.get(REQUEST_ID_HEADER))
        body = await request.json()
        self.seen_bodies.append(body)
        if body.get("max_tokens") == 0:
            return web.json_response({"error": {"message": "max_tokens must be >= 1", "type": "BadRequestError",
                                                "param": "max_tokens", "code": 400}}, status=400)
        response = web.StreamResponse()
        response.content_type = "text/event-stream"
        await response.prepare(request)
        self.started.set()
        try:
            for i in range(self.tokens):
                finish = "length" if i == self.tokens - 1 else None
                event = {"id": "cmpl-1", "object": "text_completion", "model": body["model"],
                         "choices": [{"index": 0, "text": f" w{i}", "finish_reason": finish}]}
                await response.write(f"data: {json.dumps(event)}\n\n".encode())
                await asyncio.sleep(self.gap_s)  # noqa: TID251 - pacing of a fake engine
            await response.write(b"data: [DONE]\n\n")
        except (asyncio.CancelledError, ConnectionResetError):
            self.aborted.set()  # vLLM aborts the request here
            raise
        return response


@asynccontextmanager
async def agent_with(fake: FakeVllm, *, api_key: str = "", accepting: bool = True
                     ) -> AsyncIterator[tuple[OpenAIEngines, str, VirtualClock]]:
    """A fake server, the agent's openai backend bound to it as instance i-1, and the proxy's base URL."""
    async with serve(fake.app()) as server_url:
        clock = VirtualClock()
        engines = OpenAIEngines([OpenAIEngineSettings(base_url=f"{server_url}/v1", served_model_name="tiny",
                                                      api_key=api_key)], clock, is_accepting=lambda _: accepting)
        await engines.start_session()
        try:
            engines.start(InstanceSpec("i-1", "tiny", "H100-80GB"))
            async with serve(build_openai_proxy_app(engines)) as proxy_url:
                yield engines, proxy_url, clock
        finally:
            await engines.close()


def test_vllm_metrics_give_kv_use_queue_and_token_counters() -> None:
    m = parse_server_metrics(vllm_metrics(1234, prompt=5000, hits=2048, first=7))
    assert (m.kv_used_frac, m.running, m.waiting, m.generated_tokens_total) == (0.25, 3, 2, 1234.0)
    assert (m.prompt_tokens_total, m.prefix_cache_hit_tokens_total, m.first_tokens_total) == (5000.0, 2048.0, 7.0)
    sglang = parse_server_metrics("# TYPE sglang:token_usage gauge\nsglang:token_usage 1.7\n")
    assert sglang.kv_used_frac == 1.0 and sglang.running is None  # clamped; absent stays absent


def test_token_rates_come_from_counter_changes_and_a_counter_that_falls_gives_none() -> None:
    before = parse_server_metrics(vllm_metrics(1000, prompt=8000, hits=1000, first=10))
    after = parse_server_metrics(vllm_metrics(1600, prompt=12000, hits=4000, first=16))
    rates = server_rates(before, after, 2.0)
    assert rates == ServerRates(tokens_per_s=300.0, decode_tps=297.0, prefill_tps=2000.0, prefill_missed_tps=500.0)
    assert server_rates(after, before, 2.0) is None  # the server restarted: no rate from this pair
    assert server_rates(before, after, 0.0) is None
    # A server that counts neither first tokens nor prefix-cache hits: decode = generated, missed = prompt.
    bare = [parse_server_metrics(f"vllm:generation_tokens_total {g}\nvllm:prompt_tokens_total {p}\n")
            for g, p in ((10, 100), (30, 500))]
    assert server_rates(*bare, 1.0) == ServerRates(20.0, 20.0, 400.0, 400.0)


async def test_requests_stream_through_the_agent_and_load_is_reported() -> None:
    fake = FakeVllm(tokens=4)
    async with agent_with(fake, api_key="sekret") as (engines, proxy_url, clock):
        await engines.check()
        assert engines.healthy("i-1")
        async with UpstreamClient() as client:
            texts = [c.text async for c in client.stream_completion(
                f"{proxy_url}/instances/i-1", {"model": "tiny", "prompt": "hi", "max_tokens": 4},
                {"x-request-id": "req-1"})]
        assert texts == [" w0", " w1", " w2", " w3"]
        assert fake.seen_auth == ["Bearer sekret"] and fake.seen_bodies[0]["stream"] is True
        assert engines.in_flight("i-1") == 0
        fake.generated, fake.first_tokens, fake.prompt, fake.prefix_hits = 160.0, 4.0, 600.0, 200.0
        clock.advance(2.0)
        await engines.check()
        [report] = engines.reports()
        assert report.kv_used_frac == 0.25 and report.running == 3 and report.queued == 2
        assert report.tokens_per_s == pytest.approx(30.0) and report.decode_tps == pytest.approx(28.0)
        assert report.prefill_tps == pytest.approx(300.0) and report.prefill_missed_tps == pytest.approx(200.0)
        assert report.sm_activity == 0.0  # a real server does not say what compute it used
        assert report.idle


async def test_routed_headers_are_checked_and_the_request_id_passed_on_to_the_server() -> None:
    fake = FakeVllm(tokens=2)
    async with agent_with(fake) as (engines, proxy_url, _):
        await engines.check()
        url = f"{proxy_url}/instances/i-1/v1/completions"
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 2, "stream": True}
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=body, headers={PROMPT_TOKENS_HEADER: "lots"}) as resp:
                assert resp.status == 400
                error = (await resp.json())["error"]
                assert error["param"] == PROMPT_TOKENS_HEADER and "'lots'" in error["message"]
            assert fake.seen_bodies == []  # refused before the server saw it
            sent = routed_headers(Request("cmpl-9", "tiny", "batch", "us-east", 0.0, 3, 2))
            async with http.post(url, json=body, headers=sent) as resp:
                assert resp.status == 200
                await resp.read()
        assert fake.seen_request_ids == ["cmpl-9"]


async def test_a_router_disconnect_aborts_the_request_on_the_server() -> None:
    fake = FakeVllm(tokens=1000, gap_s=0.01)
    async with agent_with(fake) as (engines, proxy_url, _):
        await engines.check()
        async with UpstreamClient() as client:
            stream = client.stream_completion(f"{proxy_url}/instances/i-1",
                                              {"model": "tiny", "prompt": "hi", "max_tokens": 1000})
            first = await asyncio.wait_for(anext(stream), GUARD_S)
            assert first.text == " w0"
            assert engines.in_flight("i-1") == 1
            await stream.aclose()  # what the router does when its client goes away
        await asyncio.wait_for(fake.aborted.wait(), GUARD_S)
        for _ in range(100):
            if engines.in_flight("i-1") == 0:
                break
            await asyncio.sleep(0.01)  # noqa: TID251 - polling a live server's state
        assert engines.in_flight("i-1") == 0


async def test_unhealthy_unknown_and_draining_instances_are_refused_with_openai_errors() -> None:
    fake = FakeVllm(healthy=False)
    async with agent_with(fake) as (engines, proxy_url, _):
        await engines.check()
        assert not engines.healthy("i-1")
        async with aiohttp.ClientSession() as http:
            body = {"model": "tiny", "prompt": "hi", "max_tokens": 2, "stream": True}
            async with http.post(f"{proxy_url}/instances/i-1/v1/completions", json=body) as resp:
                assert resp.status == 503 and resp.headers["Retry-After"] == "1"
                error = (await resp.json())["error"]
                assert error["code"] == "instance_not_accepting" and "not healthy" in error["message"]
            async with http.post(f"{proxy_url}/instances/i-9/v1/completions", json=body) as resp:
                assert resp.status == 404 and (await resp.json())["error"]["param"] == "instance_id"
    async with agent_with(FakeVllm(), accepting=False) as (engines, proxy_url, _):
        await engines.check()
        async with UpstreamClient() as client:
            with pytest.raises(UpstreamError) as failed:
                await anext(client.stream_completion(f"{proxy_url}/instances/i-1",
                                                     {"model": "tiny", "prompt": "hi", "max_tokens": 2}))
        assert failed.value.status == 503 and failed.value.retryable


async def test_a_server_error_status_is_passed_on_and_is_not_retryable() -> None:
    async with agent_with(FakeVllm()) as (engines, proxy_url, _):
        await engines.check()
        async with UpstreamClient() as client:
            with pytest.raises(UpstreamError) as failed:
                await anext(client.stream_completion(f"{proxy_url}/instances/i-1",
                                                     {"model": "tiny", "prompt": "hi", "max_tokens": 0}))
        assert failed.value.status == 400 and "max_tokens must be >= 1" in failed.value.message
        assert not failed.value.retryable


async def test_a_dead_server_is_unhealthy_and_an_instance_without_a_server_stays_unbound() -> None:
    clock = VirtualClock()
    engines = OpenAIEngines([OpenAIEngineSettings(base_url="http://127.0.0.1:9", served_model_name="tiny")],
                            clock, is_accepting=lambda _: True, health_timeout_s=1.0)
    await engines.start_session()
    try:
        engines.start(InstanceSpec("i-1", "tiny", "H100-80GB"))
        engines.start(InstanceSpec("i-2", "tiny", "H100-80GB"))  # one server, already taken
        engines.start(InstanceSpec("i-3", "other", "H100-80GB"))
        await engines.check()
        assert not engines.healthy("i-1")
        assert [r.instance_id for r in engines.reports()] == ["i-1"]
    finally:
        await engines.close()


async def test_an_instance_binds_only_to_a_server_of_its_role() -> None:
    # The operator started one prefill and one decode server (P/D mode, its own KV connector): the planner's
    # prefill and decode instances each bind to theirs, and a unified instance of the model finds none.
    servers = [OpenAIEngineSettings(base_url="http://127.0.0.1:9", served_model_name="tiny", role=role)
               for role in (Role.DECODE, Role.PREFILL)]
    engines = OpenAIEngines(servers, VirtualClock(), is_accepting=lambda _: True)
    await engines.start_session()
    try:
        engines.start(InstanceSpec("i-p", "tiny", "H100-80GB", 1, Role.PREFILL))
        engines.start(InstanceSpec("i-u", "tiny", "H100-80GB", 1, Role.UNIFIED))
        engines.start(InstanceSpec("i-d", "tiny", "H100-80GB", 1, Role.DECODE))
        # (ignoring roles, i-p would take the decode server listed first, i-u the prefill one, i-d none)
        assert {r.instance_id for r in engines.reports()} == {"i-p", "i-d"}
    finally:
        await engines.close()


def test_a_servers_role_must_be_one_opscale_knows() -> None:
    with pytest.raises(ValueError, match="role"):
        OpenAIEngineSettings(base_url="http://127.0.0.1:9", served_model_name="tiny", role="prefil")  # type: ignore[arg-type]
