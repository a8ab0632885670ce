"""A disaggregated deployment served live: `opscale up --scenario` with one prefill and two decode instances
of simulated engines on three hosts under two leaf switches of one mini-pod, on real NATS and Redis.

A streamed request is prefilled on the prefill instance, its KV handed to a decode instance on another
leaf, and streamed from there: its TTFT holds the modelled prefill and the modelled KV transfer for the
switch tier the two hosts share (lower bounds from the model only: no wall-clock threshold), and the
router's record names both instances. A decode instance asked directly, without the prefill's hand-off,
refuses: serving the request whole on one instance is not how it went.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from _stack import eventually_while_up, start_up_scenario, stop_up
from conftest import BusFactory

from opscale.engine import EngineConfig, PrefillDone, SimEngine
from opscale.model import InstanceState, Request, RequestOutcome, Role
from opscale.perf import default_catalog, latency_model_for
from opscale.perf.transfer import Placement, Topology, TransferParams, kv_transfer_s, topology_between
from opscale.runtime.live.bus import Delivery
from opscale.services import subjects
from opscale.services.events import AgentHeartbeat

pytestmark = pytest.mark.integration

MODEL = "Llama-3-8B"
PROMPT_TOKENS = 3000
OUTPUT_TOKENS = 6
# A slow path between leaves, so that the transfer is a large share of the TTFT the test checks.
CROSS_SWITCH_GBPS = 2.0

SCENARIO = f"""
name: pd live
duration_s: 60
policy: static
hosts:
  - {{region: eu-west, sku: H100-80GB, gpus: 1, count: 1, s0: leaf-a, s1: pod-1}}
  - {{region: eu-west, sku: H20, gpus: 1, count: 2, s0: leaf-b, s1: pod-1}}
deployments:
  - model: {MODEL}
    prefill: {{sku: H100-80GB, tp: 1, min_replicas: 1, max_replicas: 1}}
    decode: {{sku: H20, tp: 1, min_replicas: 2, max_replicas: 2}}
engine: {{max_num_seqs: 32}}
transfer: {{cross_switch_gbps: {CROSS_SWITCH_GBPS}}}
load_time_scale: 0.02
"""


def modelled_prefill_s(engine: EngineConfig) -> float:
    """The prefill engine's own time for the request's prompt, alone on an idle H100 (as the live one is)."""
    catalog = default_catalog()
    model, sku = catalog.model(MODEL), catalog.sku("H100-80GB")
    config = engine.model_copy(update={"max_run_steps": 1, "emit_tokens": True})  # as the node-agent runs it
    sim = SimEngine("p", model, sku, 1, latency_model_for(model, sku, 1), config, role=Role.PREFILL)
    sim.submit(Request("r", MODEL, "interactive", "eu-west", 0.0, PROMPT_TOKENS, OUTPUT_TOKENS), 0.0)
    while (next_s := sim.next_event_s()) is not None:
        for out in sim.advance(next_s):
            if isinstance(out, PrefillDone):
                return out.at_s
    raise AssertionError("the prefill engine never handed the request off")


async def test_a_disaggregated_deployment_streams_from_decode_with_the_kv_transfer_in_its_ttft(
        nats_url: str, redis_url: str, namespace: str, bus_factory: BusFactory, tmp_path: Path) -> None:
    bus = await bus_factory()
    heartbeats: dict[str, AgentHeartbeat] = {}
    records: dict[str, RequestOutcome] = {}

    async def on_heartbeat(delivery: Delivery) -> None:
        heartbeats[delivery.event.agent_id] = delivery.event

    async def on_records(delivery: Delivery) -> None:
        for outcome in delivery.event:
            records[outcome.request_id] = outcome

    await bus.subscribe(subjects.HEARTBEATS_ALL, "test-pd-heartbeats", on_heartbeat, deliver="new")
    await bus.subscribe(subjects.RECORDS_ALL, "test-pd-records", on_records, deliver="new")

    proc, base = start_up_scenario(SCENARIO, tmp_path, nats_url, redis_url, namespace)
    try:
        ready = await _ready_instances(heartbeats, proc, timeout_s=120)
        [prefill] = [i for i in ready if i[1].role is Role.PREFILL]
        decodes = [i for i in ready if i[1].role is Role.DECODE]
        assert len(decodes) == 2

        async with aiohttp.ClientSession() as session:
            body = {"model": MODEL, "prompt": [7] * PROMPT_TOKENS, "max_tokens": OUTPUT_TOKENS, "stream": True}
            sent = time.monotonic()
            first_token_at = None
            texts: list[str] = []
            async with session.post(f"http://127.0.0.1:{base}/v1/completions", json=body,
                                    timeout=aiohttp.ClientTimeout(total=60)) as resp:
                assert resp.status == 200, await resp.text()
                request_id = resp.headers["x-request-id"]
                async for line in resp.content:
                    data = line.decode().strip().removeprefix("data: ")
                    if not data or data == "[DONE]":
                        continue
                    text = json.loads(data)["choices"][0]["text"]
                    if text and first_token_at is None:
                        first_token_at = time.monotonic()
                    texts.append(text)
            assert first_token_at is not None
            client_ttft = first_token_at - sent
            assert "".join(texts).count("tok") == OUTPUT_TOKENS  # tokens streamed, one event each

            # The decode instance alone cannot serve the request: it takes only a prefill's hand-off.
            decode_endpoint = decodes[0][1].endpoint
            async with session.post(f"{decode_endpoint}/v1/completions", json={**body, "stream": False}) as direct:
                refused = await direct.json()
                assert direct.status == 400 and refused["error"]["code"] == "wrong_role", refused

        record = await eventually_while_up(lambda: records.get(request_id), proc, timeout_s=30)
        assert record.status == "ok" and record.output_tokens == OUTPUT_TOKENS
        # the router's record: prefilled on the prefill instance, streamed from a decode instance
        assert record.prefill_instance_id == prefill[1].instance_id
        assert record.instance_id in {d[1].instance_id for d in decodes}

        # The model's lower bound: the prefill on the H100, then the KV over the path between the leaves.
        [decode_hb] = [hb for hb, st in decodes if st.instance_id == record.instance_id]
        prefill_hb = prefill[0]
        topology = topology_between(Placement(prefill_hb.region, prefill_hb.s0, prefill_hb.agent_id, prefill_hb.s1,
                                              prefill_hb.s2),
                                    Placement(decode_hb.region, decode_hb.s0, decode_hb.agent_id, decode_hb.s1,
                                              decode_hb.s2))
        assert topology is Topology.CROSS_SWITCH  # leaf-a to leaf-b, in pod-1
        transfer_s = kv_transfer_s(default_catalog().model(MODEL), PROMPT_TOKENS, topology,
                                   TransferParams(cross_switch_gbps=CROSS_SWITCH_GBPS))
        prefill_s = modelled_prefill_s(EngineConfig(max_num_seqs=32))
        ttft = record.ttft_s
        assert ttft is not None
        print(f"\nP/D live: TTFT {ttft * 1e3:.1f} ms (client {client_ttft * 1e3:.1f} ms) >= prefill "
              f"{prefill_s * 1e3:.1f} ms + {topology.value} transfer {transfer_s * 1e3:.1f} ms "
              f"= {(prefill_s + transfer_s) * 1e3:.1f} ms")
        assert ttft >= prefill_s + transfer_s
        assert client_ttft >= prefill_s + transfer_s
    finally:
        output = stop_up(proc)
    assert proc.returncode == 0, output[-3000:]


async def _ready_instances(heartbeats: dict[str, AgentHeartbeat], proc: subprocess.Popen[bytes], timeout_s: float):  # noqa: ANN202
    """(heartbeat, instance status) of every ready instance, once the three of the deployment are ready."""
    def ready() -> list | None:  # noqa: ANN202
        found = [(hb, st) for hb in heartbeats.values() for st in hb.instances
                 if st.model == MODEL and st.state == InstanceState.READY]
        return found if len(found) == 3 else None

    return await eventually_while_up(ready, proc, timeout_s)
