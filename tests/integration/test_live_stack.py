"""The whole live stack on real NATS and Redis: a streaming chat completion goes through the router's
HTTP API to a node-agent's simulated engine and back; the router learned the instance from heartbeats;
the request's record reaches the aggregator's window in Redis, judged by the stack's shared tier table;
the trace continues from router to agent; a batch request from another region keeps its id, tier, origin
region and prompt count from the router through the engine to the record and the aggregator's window; the
agent ignores an older epoch and a repeated one changes nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from _stack import LiveStack, eventually, running_stack

from opscale.model import InstanceState, RequestOutcome
from opscale.runtime.live.grpc_glue import NodeAgentClient
from opscale.runtime.live.store import RedisStore
from opscale.services import subjects
from opscale.services.events import ApplyCommand

pytestmark = pytest.mark.integration



@pytest.fixture
async def stack(nats_url: str, redis_url: str, namespace: str) -> AsyncIterator[LiveStack]:
    # A TTFT objective that no request meets: SLO attainment shows which tier table the aggregator judged by.
    # batch is in the table too: a tier it does not name is refused (400) before anything is recorded.
    s = LiveStack(nats_url, redis_url, namespace, tiers=[{"name": "interactive", "ttft_slo_s": 1e-6, "tbt_slo_s": 0.1},
                                                         {"name": "batch", "ttft_slo_s": 600.0, "tbt_slo_s": 1.0}])
    async with running_stack(s):
        yield s


async def _stream_chat(session: aiohttp.ClientSession, url: str, model: str) -> tuple[list[dict], bool]:
    body = {"model": model, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 12,
            "stream": True, "stream_options": {"include_usage": True}}
    events, done = [], False
    async with session.post(f"{url}/v1/chat/completions", json=body,
                            headers={"x-opscale-region": "eu-west"}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            events.append(json.loads(line[len("data: "):]))
    return events, done


async def _serving(session: aiohttp.ClientSession, stack: LiveStack) -> None:
    """Wait until the router learned the model from the agent's heartbeats and an instance is ready."""
    async def model_ready() -> bool:
        async with session.get(f"{stack.router_url}/v1/models") as resp:
            models = [m["id"] for m in (await resp.json())["data"]]
        async with NodeAgentClient(stack.agent_address, 2.0, tls=stack.planner_tls) as agent:
            hb = await agent.status()
        return stack.model in models and any(i.state == InstanceState.READY for i in hb.instances)

    await eventually(model_ready)


async def test_streaming_request_through_the_live_stack(stack: LiveStack, redis_url: str, namespace: str) -> None:
    async with aiohttp.ClientSession() as session:
        await _serving(session, stack)
        events, done = await _stream_chat(session, stack.router_url, stack.model)

    assert done, "the stream must end with [DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e.get("choices"))
    assert text.count("tok") == 12, text  # twelve tokens, produced by the simulated engine
    usage = [e["usage"] for e in events if e.get("usage")]
    assert usage and usage[-1]["completion_tokens"] == 12 and usage[-1]["prompt_tokens"] > 0

    store = RedisStore(redis_url, namespace)
    try:
        async def window_counts_it() -> bool:
            windows = await store.windows(f"window:10:{stack.model}:eu-west:interactive")
            return any(w.requests >= 1 and w.completed >= 1 for w in windows.values())

        await eventually(window_counts_it)  # the request's record reached the aggregator's window in Redis
        windows = await store.windows(f"window:10:{stack.model}:eu-west:interactive")
        assert {w.slo_attainment for w in windows.values() if w.requests} == {0.0}  # the shared tiers' objective

        async def pool_utilisation_stored() -> bool:
            return bool(await store.pool_utilisations(f"poolutil:10:{stack.model}:eu-west:unified"))

        await eventually(pool_utilisation_stored)  # the heartbeats' figures reached a pool window in Redis
        [util] = (await store.pool_utilisations(f"poolutil:10:{stack.model}:eu-west:unified")).values()
        assert util.instances >= 1 and 0.0 <= util.sm_activity <= util.gpu_util <= 1.0
    finally:
        await store.close()

    # the trace that the router started continues in the node-agent's engine server
    router_spans = stack.processes["router"].tracer_provider.memory_exporter.get_finished_spans()
    agent_spans = stack.processes["node_agent"].tracer_provider.memory_exporter.get_finished_spans()
    [request_span] = [s for s in router_spans if s.name == "router.request"]
    engine_spans = [s for s in agent_spans if s.name.startswith("POST /instances/")]
    assert engine_spans and all(s.context.trace_id == request_span.context.trace_id for s in engine_spans)
    assert engine_spans[0].parent is not None and engine_spans[0].parent.span_id == request_span.context.span_id


async def test_a_batch_request_from_another_region_keeps_its_tier_and_origin_end_to_end(
        stack: LiveStack, redis_url: str, namespace: str) -> None:
    body = {"model": stack.model, "messages": [{"role": "user", "content": "summarise the quarterly report"}],
            "max_tokens": 5, "opscale_tier": "batch"}
    async with aiohttp.ClientSession() as session:
        await _serving(session, stack)
        # the router runs in eu-west; the client says the request comes from us-east
        async with session.post(f"{stack.router_url}/v1/chat/completions", json=body,
                                headers={"x-opscale-region": "us-east"}) as resp:
            assert resp.status == 200, await resp.text()
            request_id = resp.headers["x-request-id"]
            answer = await resp.json()
    assert answer["id"] == request_id and answer["usage"]["completion_tokens"] == 5
    prompt_tokens = answer["usage"]["prompt_tokens"]  # the engine's count, as the router estimated it once

    # the node-agent's engine served it under the router's id, tier, origin region and prompt count
    agent_spans = stack.processes["node_agent"].tracer_provider.memory_exporter

    async def engine_span():  # noqa: ANN202
        return next((s for s in agent_spans.get_finished_spans()
                     if (s.attributes or {}).get("opscale.request_id") == request_id), None)

    span = await eventually(engine_span)
    attributes = dict(span.attributes or {})
    assert (attributes["opscale.tier"], attributes["opscale.region"], attributes["opscale.prompt_tokens"]) == (
        "batch", "us-east", prompt_tokens)

    # the record the router published, as the aggregator and planner consume it, says the same
    bus = stack.processes["router"].bus

    async def published() -> RequestOutcome | None:
        batch = await bus.last(subjects.records("us-east"))
        return next((r for r in batch or () if r.request_id == request_id), None)

    outcome = await eventually(published)
    assert (outcome.tier, outcome.region, outcome.served_region, outcome.status) == (
        "batch", "us-east", "eu-west", "ok")
    assert (outcome.prompt_tokens, outcome.output_tokens) == (prompt_tokens, 5)

    store = RedisStore(redis_url, namespace)
    try:
        async def batch_window_counts_it() -> bool:
            windows = await store.windows(f"window:10:{stack.model}:us-east:batch")
            return any(w.requests >= 1 and w.completed >= 1 for w in windows.values())

        await eventually(batch_window_counts_it)  # the aggregator's window of the origin region and tier
        assert not await store.windows(f"window:*:{stack.model}:eu-west:batch")
    finally:
        await store.close()


async def test_agent_ignores_an_older_epoch_and_a_repeat_changes_nothing(stack: LiveStack) -> None:
    async with NodeAgentClient(stack.agent_address, 2.0, tls=stack.planner_tls) as agent:
        async def applied():  # noqa: ANN202
            hb = await agent.status()
            return hb if hb.epoch >= 1 and hb.instances else None

        hb = await eventually(applied)
        current = tuple(s for s in _specs(hb))
        # commands carry the planner lease's generation, which the agent reports; an older one is refused
        token = hb.fencing_token
        assert token >= 1
        older = await agent.apply(ApplyCommand("agent-1", hb.epoch - 1, "old", (), fencing_token=token))
        assert not older.accepted and older.applied_epoch == hb.epoch
        repeat = await agent.apply(ApplyCommand("agent-1", hb.epoch, f"apply-{hb.epoch}-agent-1", current,
                                                fencing_token=token))
        assert repeat.accepted and repeat.applied_epoch == hb.epoch
        after = await agent.status()
        assert {i.instance_id for i in after.instances} == {i.instance_id for i in hb.instances}


def _specs(hb):  # noqa: ANN001, ANN202
    from opscale.model import InstanceSpec

    return [InstanceSpec(i.instance_id, i.model, i.sku, i.tp, i.role) for i in hb.instances
            if i.state != InstanceState.STOPPED]


@pytest.mark.security
async def test_one_stray_apply_cannot_wedge_an_agent(stack: LiveStack) -> None:
    # The attack, over the stack's mTLS: only the planner's certificate may Apply at all (see
    # test_live_grpc); even with it, an epoch far past the applied one is refused, and one within the
    # bound that stops every instance is overtaken: the planner fences its plan past it and the agent
    # runs the planner's instances again.
    async with NodeAgentClient(stack.agent_address, 2.0, tls=stack.planner_tls) as agent:
        async def applied():  # noqa: ANN202
            hb = await agent.status()
            return hb if hb.epoch >= 1 and any(i.state == InstanceState.READY for i in hb.instances) else None

        hb = await eventually(applied)
        # Without the leader's fencing token an Apply is refused outright; the attack carries it.
        unfenced = await agent.apply(ApplyCommand("agent-1", hb.epoch + 1, "unfenced", ()))
        assert not unfenced.accepted and "fencing token" in unfenced.reason
        token = hb.fencing_token
        forged = await agent.apply(ApplyCommand("agent-1", 2 ** 64 - 1, "forged", (), fencing_token=token))
        assert not forged.accepted and "max_epoch_jump" in forged.reason
        assert (await agent.status()).epoch == hb.epoch
        stray_epoch = hb.epoch + 1000
        stray = await agent.apply(ApplyCommand("agent-1", stray_epoch, "stray", (), fencing_token=token))
        assert stray.accepted  # within the bound: it drains everything

        async def planner_took_over():  # noqa: ANN202
            now = await agent.status()
            ready = [i for i in now.instances if i.state == InstanceState.READY]
            return now if now.epoch > stray_epoch and ready else None

        after = await eventually(planner_took_over, timeout_s=45.0)
        assert after.epoch == stray_epoch + 1  # the planner's fenced plan, not a later stray one
