"""The router's API tried as a user of the `openai` SDK would (issue 16, item 6): each test here is the
regression test of one defect found that way. The live router (HTTP API, RouterCore, pooled upstream
client) runs on loopback in front of a small aiohttp engine; the bus is an in-memory recorder, so these
need no NATS and are `unit` tests even though they open sockets. Sections are numbered by defect; the
others have their tests beside their code: 4 (credentials in logs) in tests/unit/runtime/live/test_redact.py
and tests/integration/test_live_redaction.py, 6 (the drain) also in
tests/integration/test_live_router_drain.py, 9 (`opscale up` restarts) in test_launcher_restart.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
from _builders import outcome
from _router_service_loopback import LiveRouter, live_router, serve, sse
from aiohttp import web
from prometheus_client import CollectorRegistry

from opscale.model import InstanceState, InstanceStatus, Request, Role
from opscale.openai.schema import ParsedRequest, TokenChunk
from opscale.runtime.live.server_limits import ServerLimits
from opscale.services.aggregator import AggregatorConfig, AggregatorCore
from opscale.services.events import RequestFinished
from opscale.services.router import RouterConfig, RouterCore
from opscale.traces.reading import RequestLabels

from opscale_loadgen.client import SendOptions, send_request
from opscale_loadgen.clock import MonotonicClock
from opscale_loadgen.prompts import ApiKind
from opscale_services.aggregator.main import DroppedRecordsCollector
from opscale_services.router.api import RouterApi, build_router_app, serve_router
from opscale_services.router.metrics import RouterMetrics

pytestmark = pytest.mark.unit

GUARD_S = 10.0  # hang guard only, never a performance threshold
CONTEXT_TOKENS = 64  # the fake engine's context window, in prompt characters plus max_tokens


@dataclass
class ContextEngine:
    """An OpenAI-compatible engine with a small context window: like vLLM, it answers 400 with an OpenAI
    error body when the prompt plus `max_tokens` do not fit, and otherwise streams `max_tokens` tokens.
    It records the path of every request (which endpoint the router chose)."""

    paths: list[str] = field(default_factory=list)

    async def serve(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path)
        body = await request.json()
        prompt = body.get("prompt") if request.path.endswith("/v1/completions") else body.get("messages")
        if prompt is None:  # the wrong endpoint for this body: vLLM's validation error
            return web.json_response({"error": {"message": "Field required", "type": "BadRequestError",
                                                "param": None, "code": 400}}, status=400)
        length = len(json.dumps(prompt))
        if length + body["max_tokens"] > CONTEXT_TOKENS:
            message = (f"This model's maximum context length is {CONTEXT_TOKENS} tokens. However, you requested "
                       f"{length + body['max_tokens']} tokens. Please reduce the length of the messages or completion.")
            return web.json_response({"error": {"message": message, "type": "BadRequestError",
                                                "param": "max_tokens", "code": 400}}, status=400)
        chat = request.path.endswith("/chat/completions")
        response = web.StreamResponse()
        response.content_type = "text/event-stream"
        await response.prepare(request)
        for i in range(body["max_tokens"]):
            choice = ({"index": 0, "delta": {"content": f" t{i}"}, "finish_reason": None} if chat
                      else {"index": 0, "text": f" t{i}", "finish_reason": None})
            event = {"id": "x", "object": "chat.completion.chunk" if chat else "text_completion", "model": "m",
                     "choices": [choice]}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response


def engine_app(engine: ContextEngine) -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/completions", engine.serve)
    app.router.add_post("/v1/chat/completions", engine.serve)
    return app


@asynccontextmanager
async def router(engine: ContextEngine, config: RouterConfig | None = None,
                 metrics: RouterMetrics | None = None) -> AsyncIterator[LiveRouter]:
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(serve(engine_app(engine)))
        status = InstanceStatus("i1", "m", "H100-80GB", 1, Role.UNIFIED, InstanceState.READY, endpoint=url)
        core = RouterCore(config or RouterConfig(models=["m"]))
        yield await stack.enter_async_context(live_router(core, [status], metrics=metrics))


# -- 1. the engine's 4xx is the client's answer, not a 502 ------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_a_prompt_beyond_the_context_window_gets_the_engines_400_not_a_retryable_502(stream: bool) -> None:
    engine = ContextEngine()
    async with router(engine) as r, aiohttp.ClientSession() as http:
        body = {"model": "m", "prompt": "x" * 40, "max_tokens": 40, "stream": stream}
        async with http.post(f"{r.url}/v1/completions", json=body) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
        await r.records.flush()
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == "max_tokens"
    assert "maximum context length is 64 tokens" in error["message"]
    assert engine.paths == ["/v1/completions"]  # the request's own fault: not tried on another instance
    [record] = r.bus.records()
    assert record.status == "failed"
# -- 2. the upstream endpoint follows the route, not the body ----------------------------------------


async def test_a_completion_carrying_a_messages_key_goes_to_the_engines_completions_endpoint() -> None:
    engine = ContextEngine()
    async with router(engine) as r, aiohttp.ClientSession() as http:
        body = {"model": "m", "prompt": "hi", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}
        async with http.post(f"{r.url}/v1/completions", json=body) as resp:
            assert resp.status == 200
            answer = await resp.json()
        chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True}
        async with http.post(f"{r.url}/v1/chat/completions", json=chat) as resp:
            assert resp.status == 200
            events = sse(await resp.read())
    assert answer["object"] == "text_completion" and answer["choices"][0]["text"] == " t0 t1"
    assert events[-1] == "[DONE]" and events[0]["object"] == "chat.completion.chunk"
    assert engine.paths == ["/v1/completions", "/v1/chat/completions"]


# -- 3. models.retrieve ------------------------------------------------------------------------------


async def test_models_retrieve_answers_a_served_id_exactly_and_404s_an_unknown_one() -> None:
    config = RouterConfig(models=["m", "meta-llama/Llama-3-8B"])
    async with router(ContextEngine(), config) as r, aiohttp.ClientSession() as http:
        async with http.get(f"{r.url}/v1/models") as resp:
            listed = {m["id"]: m for m in (await resp.json())["data"]}
        async with http.get(f"{r.url}/v1/models/meta-llama/Llama-3-8B") as resp:
            assert resp.status == 200
            model = await resp.json()
        # ids match exactly, as OpenAI's do: another spelling is an unknown model
        async with http.get(f"{r.url}/v1/models/meta-llama/llama-3-8b") as resp:
            assert resp.status == 404
            error = (await resp.json())["error"]
    assert model == listed["meta-llama/Llama-3-8B"]
    assert model["object"] == "model" and model["owned_by"] == "opscale"
    assert error == {"message": "The model 'meta-llama/llama-3-8b' does not exist", "type": "invalid_request_error",
                     "param": "model", "code": "model_not_found"}


# -- 5. unknown model names and tiers never become state ---------------------------------------------


async def test_unknown_models_and_tiers_are_refused_before_anything_is_recorded() -> None:
    engine = ContextEngine()
    async with router(engine) as r, aiohttp.ClientSession() as http:
        for i in range(20):
            body = {"model": f"random-{i}", "prompt": "x", "max_tokens": 1, "stream": i % 2 == 0}
            async with http.post(f"{r.url}/v1/completions", json=body) as resp:
                assert resp.status == 404
                error = (await resp.json())["error"]
                assert error["code"] == "model_not_found" and error["param"] == "model"
                assert f"The model 'random-{i}' does not exist" in error["message"]
        body = {"model": "m", "prompt": "x", "max_tokens": 1, "opscale_tier": "platinum"}
        async with http.post(f"{r.url}/v1/completions", json=body) as resp:
            assert resp.status == 400
            tier_error = (await resp.json())["error"]
        async with http.post(f"{r.url}/v1/completions", json={**body, "opscale_tier": "batch"}) as resp:
            assert resp.status == 200  # a known tier is served
        await r.records.flush()
    assert tier_error["param"] == "opscale_tier" and tier_error["type"] == "invalid_request_error"
    assert "'platinum'" in tier_error["message"] and "interactive" in tier_error["message"]
    # only the request with a known model and tier reached an engine or a record
    assert engine.paths == ["/v1/completions"]
    assert [(rec.model, rec.tier) for rec in r.bus.records()] == [("m", "batch")]
    assert r.core.pending() == {}

def test_the_aggregator_shows_the_records_it_dropped_on_its_metrics() -> None:
    # the aggregator's side of defect 5: what it drops is counted where an operator looks
    core = AggregatorCore(AggregatorConfig(models=["m"]))
    registry = CollectorRegistry()
    registry.register(DroppedRecordsCollector(core))
    for i, (model, tier) in enumerate([("m", "interactive"), ("random", "interactive"), ("m", "platinum"),
                                       ("other", "batch")]):
        core.handle(RequestFinished(outcome(i, arrival=0.0, ttft=0.1, e2e=1.0, model=model, tier=tier)), 1.0)
    assert registry.get_sample_value("opscale_aggregator_records_dropped_total", {"reason": "unknown_model"}) == 2
    assert registry.get_sample_value("opscale_aggregator_records_dropped_total", {"reason": "unknown_tier"}) == 1


# -- 6. a draining router frees its ports at once and drains within its bound --------------------------


class SlowStream:
    """A back end whose streams run until they are closed, one token per `gap_s`."""

    def __init__(self) -> None:
        self.closed = 0

    def models(self) -> list[str]:
        return ["m"]

    def check(self, req: object) -> None:  # every name is known here
        return None

    async def generate(self, req: ParsedRequest, trace_headers: dict[str, str]) -> AsyncIterator[TokenChunk]:
        try:
            i = 0
            while True:
                yield TokenChunk(f" t{i}", i, None)
                i += 1
                await asyncio.sleep(0.01)  # noqa: TID251 - pacing of a fake engine
        finally:
            self.closed += 1


async def test_a_draining_router_frees_its_port_at_once_and_its_streams_end_at_the_drain_bound() -> None:
    backend = SlowStream()
    server = await serve_router(build_router_app(backend), shutdown_timeout_s=0.5)  # the router's stop_timeout_s
    port = server.addresses[0][1]
    body = {"model": "m", "prompt": "x", "stream": True}
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"http://127.0.0.1:{port}/v1/completions", json=body)
        assert (await resp.content.readuntil(b"\n\n")).startswith(b"data: ")
        await server.stop_accepting()  # the drain's first step
        # a replacement binds the same port and serves while the old stream still flows
        async with serve_on(build_router_app(FakeOneToken()), port) as replacement:
            async with http.post(f"{replacement}/v1/completions", json={"model": "m", "prompt": "x"}) as answer:
                assert answer.status == 200
            assert (await resp.content.readuntil(b"\n\n")).startswith(b"data: ")
            # the drain ends the stream at its bound rather than waiting for it
            await asyncio.wait_for(server.close(), GUARD_S)
            with pytest.raises(aiohttp.ClientPayloadError):  # cut at the deadline, never finished
                await asyncio.wait_for(resp.content.read(), GUARD_S)
        resp.close()
    assert backend.closed == 1  # the back end's stream was closed (upstream work released)


class FakeOneToken(SlowStream):
    async def generate(self, req: ParsedRequest, trace_headers: dict[str, str]) -> AsyncIterator[TokenChunk]:
        yield TokenChunk(" only", 0, "stop")


@asynccontextmanager
async def serve_on(app: RouterApi, port: int) -> AsyncIterator[str]:
    server = await serve_router(app, port=port, shutdown_timeout_s=1.0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.close()


# -- 7. idle and slow clients, and oversized heads, each get a clear end -----------------------------------

LIMITS = ServerLimits(header_timeout_s=0.2, body_timeout_s=0.2, keepalive_timeout_s=0.3, max_header_bytes=2048,
                      max_headers=32, max_body_bytes=4096)


@asynccontextmanager
async def limited_router() -> AsyncIterator[tuple[str, int]]:
    server = await serve_router(build_router_app(FakeOneToken()), LIMITS, shutdown_timeout_s=1.0)
    try:
        port = server.addresses[0][1]
        yield f"http://127.0.0.1:{port}", port
    finally:
        await server.close()


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), GUARD_S)  # b"..." then EOF: the server closed


def head(extra: str = "", length: int = 0) -> bytes:
    return (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


async def test_connections_that_never_send_a_request_or_stall_in_the_head_are_closed() -> None:
    async with limited_router() as (_, port):
        silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        partial_reader, partial_writer = await asyncio.open_connection("127.0.0.1", port)
        partial_writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        for reader, writer in [*silent, (partial_reader, partial_writer)]:
            assert await read_until_closed(reader) == b""  # closed by the server, nothing sent
            writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_its_timeout() -> None:
    async with limited_router() as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps({"model": "m", "prompt": "x"}).encode()
        writer.write(head(length=len(body)) + body)
        answer = await read_until_closed(reader)  # the answer, then the close once idle
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and b"text_completion" in answer


async def test_a_body_that_does_not_arrive_in_time_is_408_with_an_openai_body() -> None:
    async with limited_router() as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head(length=100) + b'{"model": "m"')  # 13 of the 100 bytes, then nothing
        answer = await read_until_closed(reader)
        writer.close()
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 408")
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout" and "0.2 s" in error["message"]


@pytest.mark.parametrize("extra", [f"X-Big: {'a' * 3000}\r\n", "".join(f"X-H{i}: v\r\n" for i in range(40))],
                         ids=["header too long", "too many headers"])
async def test_a_head_too_large_is_431_with_an_openai_body(extra: str) -> None:
    async with limited_router() as (url, port), aiohttp.ClientSession() as http:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head(extra))
        answer = await read_until_closed(reader)
        writer.close()
        async with http.post(f"{url}/v1/completions", json={"model": "m", "prompt": "x" * 5000}) as resp:
            assert resp.status == 413  # and a body beyond its bound is 413, as before
        async with http.post(f"{url}/v1/completions", json={"model": "m", "prompt": "x"}) as resp:
            assert resp.status == 200  # the server goes on serving
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.split(b" ")[1] == b"431"
    error = json.loads(body)["error"]
    assert error["code"] == "request_header_fields_too_large" and error["type"] == "invalid_request_error"


# -- 8. requests and latencies on /metrics ------------------------------------------------------------


async def test_requests_are_counted_by_model_status_and_tenant_and_latencies_are_histograms() -> None:
    registry = CollectorRegistry()
    async with router(ContextEngine(), metrics=RouterMetrics(registry)) as r, aiohttp.ClientSession() as http:
        for body in ({"model": "m", "prompt": "x", "max_tokens": 3},
                     {"model": "m", "prompt": "x", "max_tokens": 3, "stream": True, "opscale_tier": "batch"},
                     {"model": "m", "prompt": "x" * 60, "max_tokens": 30},  # beyond the context: 400
                     {"model": "no-such-model", "prompt": "x"}):
            async with http.post(f"{r.url}/v1/completions", json=body) as resp:
                await resp.read()
        async with http.post(f"{r.url}/v1/completions", data=b"{oops") as resp:
            assert resp.status == 400

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("opscale_router_requests_total", model="m", status="200", tenant="") == 2
    assert value("opscale_router_requests_total", model="m", status="400", tenant="") == 1
    # an unknown model and a body that did not parse are counted without a model: no series per name
    assert value("opscale_router_requests_total", model="", status="404", tenant="") == 1
    assert value("opscale_router_requests_total", model="", status="400", tenant="") == 1
    assert value("opscale_router_requests_total", model="no-such-model", status="404", tenant="") is None
    for tier in ("interactive", "batch"):
        assert value("opscale_router_ttft_seconds_count", model="m", tier=tier) == 1
        assert value("opscale_router_tbt_seconds_count", model="m", tier=tier) == 1
        assert value("opscale_router_e2e_seconds_count", model="m", tier=tier) == 1


# -- 10. a request that names no region is the router's region's ---------------------------------------


async def test_a_replayed_request_whose_trace_names_no_region_is_recorded_under_the_routers_region() -> None:
    unlabelled = RequestLabels().region  # what a trace reader gives a request without a region
    requests = [Request("r-none", "m", "interactive", unlabelled, 0.0, prompt_tokens=4, output_tokens=2),
                Request("r-eu", "m", "interactive", "eu", 0.0, prompt_tokens=4, output_tokens=2)]
    async with router(ContextEngine()) as r, aiohttp.ClientSession() as session:
        for request in requests:
            measured = await send_request(session, request, 0.0, MonotonicClock(),
                                          SendOptions(r.url, ApiKind.COMPLETIONS, timeout_s=10.0))
            assert measured.http_status == 200
        # a client that sends no header at all
        async with session.post(f"{r.url}/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 1}) as resp:
            assert resp.status == 200
        await r.records.flush()
    assert sorted(rec.region for rec in r.bus.records()) == ["eu", "local", "local"]  # live_router: local
