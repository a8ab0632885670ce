"""W3C trace context crosses every live boundary: a trace started at the router continues through
NATS (headers), HTTP (headers) and gRPC (metadata) into the agent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest
from _tls import grpc_tls
from aiohttp import web
from opentelemetry import trace

from opscale.runtime.live import telemetry
from opscale.runtime.live.bus import Delivery, NatsBus
from opscale.runtime.live.grpc_glue import NodeAgentClient, start_node_agent_server
from opscale.runtime.live.telemetry import OpscaleTracerProvider, setup_tracing
from opscale.services import subjects
from opscale.services.events import AgentHeartbeat, ApplyCommand, DrainCommand, ForecastIssued

pytestmark = pytest.mark.integration


def spans(provider: OpscaleTracerProvider) -> dict[str, trace.Span]:
    assert provider.memory_exporter is not None
    return {s.name: s for s in provider.memory_exporter.get_finished_spans()}  # type: ignore[misc]


class TracedAgent:
    """Records the trace each call runs in."""

    def __init__(self) -> None:
        self.seen: list[trace.SpanContext] = []

    async def apply(self, command: ApplyCommand) -> tuple[bool, int, str, tuple[()]]:
        self.seen.append(trace.get_current_span().get_span_context())
        return True, command.epoch, "", ()

    async def drain(self, command: DrainCommand) -> tuple[bool, str]:
        return True, ""

    async def status(self) -> AgentHeartbeat:
        self.seen.append(trace.get_current_span().get_span_context())
        return AgentHeartbeat("a", "eu", "H100-80GB", 8, "", 0, 0.0)


async def test_trace_continues_over_nats(bus_factory: Callable[..., object]) -> None:
    router = setup_tracing("router", "memory")
    aggregator = setup_tracing("aggregator", "memory")
    producer: NatsBus = await bus_factory(tracer_provider=router)  # type: ignore[misc]
    consumer: NatsBus = await bus_factory(tracer_provider=aggregator)  # type: ignore[misc]
    seen: list[trace.SpanContext] = []
    arrived = asyncio.Event()

    async def handler(d: Delivery) -> None:
        seen.append(trace.get_current_span().get_span_context())
        arrived.set()

    with router.get_tracer("test").start_as_current_span("route request") as root:
        await producer.publish(subjects.forecasts("eu", "llama"),
                               ForecastIssued("llama", "eu", "chat", 1.0, 60.0, 1.0, 0.5, 1.5, "ewma"))
    await consumer.subscribe(subjects.FORECASTS_ALL, "traced", handler)
    await asyncio.wait_for(arrived.wait(), 10.0)
    await consumer.close()  # the consume span ends once the handler returned and the ack went out

    trace_id = root.get_span_context().trace_id
    assert seen[0].trace_id == trace_id
    publish = spans(router)["publish forecasts"]
    consume = spans(aggregator)["consume forecasts"]
    assert publish.parent.span_id == root.get_span_context().span_id
    assert consume.parent.span_id == publish.context.span_id
    assert consume.context.trace_id == trace_id
    assert consume.kind == trace.SpanKind.CONSUMER


async def test_trace_continues_over_grpc() -> None:
    planner = setup_tracing("planner", "memory")
    agent_tracing = setup_tracing("node_agent", "memory")
    impl = TracedAgent()
    server, port = await start_node_agent_server(impl, "127.0.0.1", 0, tls=grpc_tls("node-agent"),
                                                 tracer_provider=agent_tracing)
    try:
        async with NodeAgentClient(f"127.0.0.1:{port}", 5.0, tls=grpc_tls("planner"), tracer_provider=planner) as client:
            with planner.get_tracer("test").start_as_current_span("plan epoch 3") as root:
                await client.apply(ApplyCommand("a", 3, "c3", ()))
    finally:
        await server.stop(0)
    assert impl.seen[0].trace_id == root.get_span_context().trace_id
    client_span = spans(planner)["opscale.v1.NodeAgent/Apply"]
    server_span = spans(agent_tracing)["opscale.v1.NodeAgent/Apply"]
    assert server_span.parent.span_id == client_span.context.span_id
    assert server_span.kind == trace.SpanKind.SERVER


async def test_trace_continues_over_http() -> None:
    router = setup_tracing("router", "memory")
    engine = setup_tracing("engine", "memory")

    async def completions(request: web.Request) -> web.Response:
        parent = telemetry.extract_http_headers(request.headers)
        with engine.get_tracer("engine").start_as_current_span("generate", context=parent) as span:
            return web.json_response({"trace_id": f"{span.get_span_context().trace_id:032x}"})

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with router.get_tracer("router").start_as_current_span("proxy") as root:
            async with aiohttp.ClientSession() as session, session.post(
                    f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "hi"},
                    headers=telemetry.inject_http_headers({"X-Request-Id": "r1"})) as resp:
                body = await resp.json()
    finally:
        await runner.cleanup()
    assert body["trace_id"] == f"{root.get_span_context().trace_id:032x}"
    assert spans(engine)["generate"].parent.span_id == root.get_span_context().span_id


async def test_one_trace_from_router_through_nats_and_grpc_to_the_agent(bus_factory: Callable[..., object]) -> None:
    router = setup_tracing("router", "memory")
    planner = setup_tracing("planner", "memory")
    agent_tracing = setup_tracing("node_agent", "memory")
    impl = TracedAgent()
    server, port = await start_node_agent_server(impl, "127.0.0.1", 0, tls=grpc_tls("node-agent"),
                                                 tracer_provider=agent_tracing)
    producer: NatsBus = await bus_factory(tracer_provider=router)  # type: ignore[misc]
    consumer: NatsBus = await bus_factory(tracer_provider=planner)  # type: ignore[misc]
    done = asyncio.Event()
    client = NodeAgentClient(f"127.0.0.1:{port}", 5.0, tls=grpc_tls("planner"), tracer_provider=planner)

    async def planner_handler(d: Delivery) -> None:
        await client.status()  # the planner reacts to the event by calling the agent
        done.set()

    try:
        with router.get_tracer("router").start_as_current_span("POST /v1/completions") as root:
            await producer.publish(subjects.forecasts("eu", "llama"),
                                   ForecastIssued("llama", "eu", "chat", 1.0, 60.0, 1.0, 0.5, 1.5, "ewma"))
        await consumer.subscribe(subjects.FORECASTS_ALL, "planner", planner_handler)
        await asyncio.wait_for(done.wait(), 10.0)
    finally:
        await client.close()
        await server.stop(0)
    assert impl.seen[0].trace_id == root.get_span_context().trace_id
