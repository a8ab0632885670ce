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
import re
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from _stack import eventually, start_up_scenario, stop_up
from conftest import BusFactory

from opscale.model import InstanceState, RequestOutcome
from opscale.runtime.live.bus import Delivery
from opscale.services import subjects
from opscale.services.events import AgentHeartbeat

pytestmark = pytest.mark.integration

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

        instances = await eventually(ready, proc, timeout_s=120)

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
            rx = await eventually(lambda: records.get(x1_id), proc, timeout_s=30)
            ry = await eventually(lambda: records.get(y1), proc, timeout_s=30)
            assert rx.status == "ok" and ry.status == "ok"
            assert {rx.instance_id, ry.instance_id} == set(instances)  # one conversation each

            # The engines' KV events reach the router's index: it stored blocks of both instances.
            def stored() -> bool:
                stored_by = {b.instance_id for b in kv_batches if any(e.kind == "stored" for e in b.events)}
                return stored_by == set(instances) and router_stat(base, "stored") > 0

            await eventually(stored, proc, timeout_s=60)
            assert router_stat(base, "batches") > 0

            # Each follow-up turn goes where its conversation's prefix is cached.
            x2 = await ask(turn("travel", 2), 5)
            y2 = await ask(turn("cooking", 2), 5)
            rx2 = await eventually(lambda: records.get(x2), proc, timeout_s=30)
            ry2 = await eventually(lambda: records.get(y2), proc, timeout_s=30)
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

