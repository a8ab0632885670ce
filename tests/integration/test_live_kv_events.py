"""KV-cache-aware routing live: `opscale up --scenario` with two simulated engines (prefix caching and KV
events on) on two hosts, a kv_aware router, real NATS and Redis.

Two conversations start at once, so the router's load term puts them on different instances. Each
engine publishes the blocks it stored; the node-agents forward them over NATS and the router's prefix
index applies them. Each conversation's follow-up turn (its first turn repeated, plus more) then goes
to the instance that holds its prefix. The router's own dispatch tracking is off here
(`track_routed: false`), so what it knows of the caches came over the bus, and one of the two
follow-ups goes against the router's tie-break (the lowest position), so neither can land right by
luck. No timing thresholds: every wait is a bounded poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest
import zmq
import zmq.asyncio
from _router_service_loopback import serve
from _stack import LiveStack, eventually_while_up, start_up_scenario, stop_up
from _tiny_tokenizer import write_model_folder
from _vllm_kv_wire import BlockStored, frames
from aiohttp import web
from conftest import BusFactory

from opscale.model import InstanceState, RequestOutcome
from opscale.model.kv_events import KvEventBatch
from opscale.openai.prefix_blocks import token_block_hashes
from opscale.openai.prompt_tokens import PromptTokenizer
from opscale.runtime.live.bus import Delivery
from opscale.services import subjects
from opscale.services.events import AgentHeartbeat

pytestmark = pytest.mark.integration
T = TypeVar("T")

MODEL = "Llama-3-8B"
BLOCK_TOKENS = 64  # 256 characters a block: prompts of a few thousand characters hold some blocks

SCENARIO = f"""
name: kv events live
duration_s: 60
policy: static
hosts:
  - {{region: eu-west, sku: H100-80GB, gpus: 1, count: 2}}
deployments:
  - {{model: {MODEL}, sku: H100-80GB, tp: 1, min_replicas: 2, max_replicas: 2}}
routing_policy: kv_aware
router: {{policy_params: {{track_routed: false}}}}
engine: {{max_num_seqs: 32, enable_prefix_caching: true, kv_events: true, prefix_block_tokens: {BLOCK_TOKENS}}}
load_time_scale: 0.02
"""


def turn(conversation: str, turns: int) -> list[dict[str, str]]:
    """The messages of `conversation` after `turns` user turns: each turn a few thousand characters."""
    messages: list[dict[str, str]] = [{"role": "system", "content": f"You help with {conversation}. " * 40}]
    for t in range(turns):
        messages.append({"role": "user", "content": f"{conversation} question {t}: " + "details " * 300})
        if t < turns - 1:
            messages.append({"role": "assistant", "content": f"{conversation} answer {t} " * 30})
    return messages


async def test_a_follow_up_turn_goes_to_the_instance_whose_kv_events_say_it_holds_the_prefix(
        nats_url: str, redis_url: str, namespace: str, bus_factory: BusFactory, tmp_path: Path) -> None:
    bus = await bus_factory()
    heartbeats: dict[str, AgentHeartbeat] = {}
    records: dict[str, RequestOutcome] = {}
    kv_batches: list[object] = []

    async def on_heartbeat(delivery: Delivery) -> None:
        heartbeats[delivery.event.agent_id] = delivery.event

    async def on_records(delivery: Delivery) -> None:
        for outcome in delivery.event:
            records[outcome.request_id] = outcome

    async def on_kv(delivery: Delivery) -> None:
        kv_batches.append(delivery.event)

    await bus.subscribe(subjects.HEARTBEATS_ALL, "test-kv-heartbeats", on_heartbeat, deliver="new")
    await bus.subscribe(subjects.RECORDS_ALL, "test-kv-records", on_records, deliver="new")
    await bus.subscribe(subjects.KV_EVENTS_ALL, "test-kv-events", on_kv, deliver="new")

    proc, base = start_up_scenario(SCENARIO, tmp_path, nats_url, redis_url, namespace)
    try:
        def ready() -> list[str] | None:
            found = [st.instance_id for hb in heartbeats.values() for st in hb.instances
                     if st.model == MODEL and st.state == InstanceState.READY]
            return found if len(found) == 2 else None

        instances = await eventually_while_up(ready, proc, timeout_s=120)

        async with aiohttp.ClientSession() as session:
            async def ask(messages: list[dict[str, str]], max_tokens: int,
                          started: asyncio.Event | None = None) -> str:
                body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "stream": True}
                async with session.post(f"http://127.0.0.1:{base}/v1/chat/completions", json=body,
                                        timeout=aiohttp.ClientTimeout(total=120)) as resp:
                    assert resp.status == 200, await resp.text()
                    async for _ in resp.content:
                        if started is not None:
                            started.set()  # the first chunk: it is running on its instance
                    return resp.headers["x-request-id"]

            # Two first turns at once: the second arrives while the first runs, so it goes elsewhere.
            first_running = asyncio.Event()
            x1 = asyncio.create_task(ask(turn("travel", 1), 200, first_running))
            await asyncio.wait_for(first_running.wait(), 60)
            y1 = await ask(turn("cooking", 1), 20)
            x1_id = await x1
            rx = await eventually_while_up(lambda: records.get(x1_id), proc, timeout_s=30)
            ry = await eventually_while_up(lambda: records.get(y1), proc, timeout_s=30)
            assert rx.status == "ok" and ry.status == "ok"
            assert {rx.instance_id, ry.instance_id} == set(instances)  # one conversation each

            # The engines' KV events reach the router's index: it stored blocks of both instances.
            def stored() -> bool:
                stored_by = {b.instance_id for b in kv_batches if any(e.kind == "stored" for e in b.events)}
                return stored_by == set(instances) and router_stat(base, "stored") > 0

            await eventually_while_up(stored, proc, timeout_s=60)
            assert router_stat(base, "batches") > 0

            # Each follow-up turn goes where its conversation's prefix is cached.
            x2 = await ask(turn("travel", 2), 5)
            y2 = await ask(turn("cooking", 2), 5)
            rx2 = await eventually_while_up(lambda: records.get(x2), proc, timeout_s=30)
            ry2 = await eventually_while_up(lambda: records.get(y2), proc, timeout_s=30)
            assert rx2.instance_id == rx.instance_id
            assert ry2.instance_id == ry.instance_id
            assert router_stat(base, "malformed") == 0 and router_stat(base, "unknown_instance") == 0
    finally:
        output = stop_up(proc)
    assert proc.returncode == 0, output[-3000:]


def router_stat(base: int, outcome: str) -> float:
    """The router's prefix-index count `outcome`, from its /metrics (its ops port is base + 2)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{base + 2}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(rf'^opscale_router_kv_index_total{{outcome="{outcome}"}} ([0-9.e+]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0



# -- vLLM (engine_backend openai): events renamed by token ids, prompts tokenized by the router -------

VLLM_BLOCK = 16


class FakeVllmServer:
    """Stands in for one vLLM server: /health, a streaming /v1/completions that records the prompts it
    serves, and a ZMQ publisher that sends KV events in vLLM's wire format (its own block hashes)."""

    def __init__(self, ctx: zmq.asyncio.Context) -> None:
        self.prompts: list[str] = []
        self.pub = ctx.socket(zmq.XPUB)  # an XPUB sees the agent's subscription arrive
        self.pub.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"tcp://127.0.0.1:{self.pub.bind_to_random_port('tcp://127.0.0.1')}"
        self.seq = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_post("/v1/completions", self.completions)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.prompts.append(body["prompt"])
        response = web.StreamResponse()
        response.content_type = "text/event-stream"
        await response.prepare(request)
        for i in range(3):
            chunk = {"id": "cmpl-1", "object": "text_completion", "model": body["model"],
                     "choices": [{"index": 0, "text": f" w{i}", "finish_reason": "length" if i == 2 else None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    async def store(self, token_ids: list[int]) -> int:
        """Publish that this server cached the whole blocks of `token_ids`, as vLLM does (sha256 hashes
        the router cannot compute); returns how many blocks."""
        n = len(token_ids) // VLLM_BLOCK
        hashes = [hashlib.sha256(repr(token_ids[:(i + 1) * VLLM_BLOCK]).encode()).digest() for i in range(n)]
        await self.pub.send_multipart(frames(self.seq, BlockStored(hashes, None, token_ids[:n * VLLM_BLOCK],
                                                                   VLLM_BLOCK, None, "GPU")))
        self.seq += 1
        return n


async def test_with_vllm_a_tokenized_prompt_goes_to_the_server_whose_renamed_kv_events_hold_its_prefix(
        nats_url: str, redis_url: str, namespace: str, bus_factory: BusFactory, tmp_path: Path) -> None:
    """Two vLLM stand-ins behind one node-agent (engine_backend openai); each publishes, in vLLM's format,
    that it cached one conversation's prompt. The agent renames the blocks from their token ids and
    forwards them over NATS; the router, tokenizing prompts with the model's tokenizer, hashes each
    follow-up to the same names and sends it to the server holding its prefix. Dispatch tracking is off,
    so only the renamed events can say where a prefix is; one of the two follow-ups goes against the
    tie-break."""
    model_dir = write_model_folder(tmp_path / "model")
    tokenizer = PromptTokenizer.from_files(model_dir)
    words = "the trip to rome and paris by train or plane details about day one two three"
    # the second prompt is long enough (over 2,048 tokens by the router's estimate) to be tokenized off
    # the router's event loop
    prompts = {"travel": f"tell me more about {words} " * 3, "cooking": f"how long do i boil an egg {words} " * 100}
    bus = await bus_factory()
    heartbeats: dict[str, AgentHeartbeat] = {}
    kv_batches: list[KvEventBatch] = []

    async def on_heartbeat(delivery: Delivery) -> None:
        heartbeats[delivery.event.agent_id] = delivery.event

    async def on_kv(delivery: Delivery) -> None:
        kv_batches.append(delivery.event)

    await bus.subscribe(subjects.HEARTBEATS_ALL, "test-vllm-heartbeats", on_heartbeat, deliver="new")
    await bus.subscribe(subjects.KV_EVENTS_ALL, "test-vllm-kv-events", on_kv, deliver="new")

    ctx = zmq.asyncio.Context()
    fakes = [FakeVllmServer(ctx), FakeVllmServer(ctx)]
    engine = {"enable_prefix_caching": True, "kv_events": True, "prefix_block_tokens": VLLM_BLOCK}
    async with contextlib.AsyncExitStack() as exits:
        urls = [await exits.enter_async_context(serve(f.app())) for f in fakes]
        stack = LiveStack(nats_url, redis_url, namespace, model=MODEL, overrides={
            "planner": {"deployments": [{"model": MODEL, "sku": "H100-80GB", "tp": 1, "min_replicas": 2,
                                         "max_replicas": 2}]},
            "node_agent": {"engine": engine, "engine_backend": "openai", "engine_health_interval_s": 0.2,
                           "openai_engines": [{"base_url": f"{url}/v1", "served_model_name": MODEL, "metrics_path": "",
                                               "kv_events_endpoint": f.endpoint} for url, f in zip(urls, fakes, strict=True)]},
            "router": {"engine": engine, "tokenizers": {MODEL: {"path": str(model_dir)}},
                       # No slow start: both instances became ready a moment ago, and a newcomer's
                       # phantom load (renewed on the core's ticks, from the other's load, so for a while
                       # after the cooking follow-up finished) would outweigh a short prompt's prefix
                       "core": {"region": "eu-west", "router_id": "router-test", "policy": "kv_aware",
                                "policy_params": {"track_routed": False}, "slow_start_s": 0}},
        })
        try:
            await stack.start()

            def ready() -> list[str] | None:
                found = [st.instance_id for hb in heartbeats.values() for st in hb.instances
                         if st.model == MODEL and st.state == InstanceState.READY]
                return found if len(found) == 2 else None

            instances = await poll(ready, 120)
            for f in fakes:  # each server's publisher has its agent's subscriber
                assert (await asyncio.wait_for(f.pub.recv(), 60))[0] == 1

            # Each server caches one conversation's prompt, tokenized as vLLM tokenizes it.
            ids = {name: tokenizer.token_ids({"prompt": p}) for name, p in prompts.items()}
            blocks = {name: await f.store(ids[name]) for name, f in zip(prompts, fakes, strict=True)}
            assert min(blocks.values()) >= 2

            # On the bus, the blocks carry opscale's names of their tokens: renamed by the agent.
            def forwarded() -> bool:
                names = {h for b in kv_batches for e in b.events for h in e.block_hashes}
                return all(set(token_block_hashes(ids[n], VLLM_BLOCK)) <= names for n in prompts)

            await poll(forwarded, 60)
            registry = stack.processes["router"].registry

            def router_stored() -> bool:
                stored = registry.get_sample_value("opscale_router_kv_index_total", {"outcome": "stored"}) or 0
                return stored >= sum(blocks.values())

            await poll(router_stored, 60)

            # Each conversation's follow-up goes to the server that holds its prompt.
            async with aiohttp.ClientSession() as session:
                for name in reversed(list(prompts)):
                    body = {"model": MODEL, "prompt": prompts[name] + "thanks ok sure", "max_tokens": 3,
                            "stream": True}
                    async with session.post(f"{stack.router_url}/v1/completions", json=body,
                                            timeout=aiohttp.ClientTimeout(total=60)) as resp:
                        assert resp.status == 200, await resp.text()
                        await resp.read()
            assert [len(f.prompts) for f in fakes] == [1, 1]
            assert fakes[0].prompts[0].startswith(prompts["travel"])
            assert fakes[1].prompts[0].startswith(prompts["cooking"])
            for outcome in ("malformed", "unknown_instance"):
                assert not registry.get_sample_value("opscale_router_kv_index_total", {"outcome": outcome})
            # the agent shows what it renamed on its /metrics, per instance
            agent = stack.processes["node_agent"].registry

            def renamed(outcome: str) -> float:
                return sum(agent.get_sample_value("opscale_node_agent_vllm_kv_renamed_total",
                                                  {"instance_id": i, "outcome": outcome}) or 0 for i in instances)

            assert renamed("stored") == sum(blocks.values()) and renamed("unknown_parent") == 0
        finally:
            await stack.close()
            for f in fakes:
                f.pub.close()
            ctx.term()


async def poll(predicate: Callable[[], T | None | bool], timeout_s: float) -> T:
    """The predicate's first truthy value, polled until `timeout_s` (a hang guard, not a threshold)."""
    async def wait() -> T:
        while not (value := predicate()):
            await asyncio.sleep(0.05)  # noqa: TID251 - waiting on real services
        return value  # type: ignore[return-value]
    return await asyncio.wait_for(wait(), timeout_s)
