"""A live node-agent (simulated backend, real NATS and Redis, gRPC) and operator replicas: an Apply that
only changes an instance's operator replicas leaves the instance serving (in place, no restart), and
one whose base instances and replicas exceed the host's GPUs is refused with the reason over gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from _stack import clean_namespace, start_service

from opscale.model import InstanceSpec, InstanceState, OperatorReplicas
from opscale.runtime.live.grpc_glue import NodeAgentClient
from opscale.runtime.live.local_servers import free_port
from opscale.runtime.live.settings import GrpcTlsSettings, NodeAgentSettings, load_settings
from opscale.services.events import ApplyCommand

pytestmark = pytest.mark.integration

BASE = InstanceSpec("Qwen2-7B-eu-00001", "Qwen2-7B", "H100-80GB", 1)


@pytest.fixture
async def agent_address(nats_url: str, redis_url: str, namespace: str) -> AsyncIterator[str]:
    from opscale_services.node_agent import main as node_agent

    port, stop = free_port(), asyncio.Event()
    settings = load_settings(
        NodeAgentSettings, nats_url=nats_url, redis_url=redis_url, namespace=namespace, ops_host="127.0.0.1",
        ops_port=0, tracing_exporter="memory", stop_timeout_s=5.0, agent_id="agent-1", region="eu", sku="H100-80GB",
        gpus=2, grpc_host="127.0.0.1", grpc_port=port, http_port=0, advertise_host="127.0.0.1",
        heartbeat_interval_s=0.5, tick_s=0.1, load_time_scale=0.02,
        grpc_tls={"insecure": True})  # the explicit plain-text opt-out (test_live_stack runs mTLS)

    task = None
    try:
        task, _ = await start_service(node_agent.run, settings, stop, name="node-agent")
        yield f"127.0.0.1:{port}"
    finally:
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, 30)
        await clean_namespace(nats_url, redis_url, namespace)


async def _state(agent: NodeAgentClient) -> InstanceState | None:
    hb = await agent.status()
    return next((i.state for i in hb.instances if i.instance_id == BASE.instance_id), None)


async def test_replicas_change_in_place_and_a_host_over_its_gpus_is_refused(agent_address: str) -> None:
    async with NodeAgentClient(agent_address, 2.0, tls=GrpcTlsSettings(insecure=True)) as agent:
        assert (await agent.apply(ApplyCommand("agent-1", 1, "c1", (BASE,)))).accepted
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while await _state(agent) != InstanceState.READY:
            assert loop.time() < deadline, "the base instance never became ready"
            await asyncio.sleep(0.1)  # noqa: TID251 - polling a real server

        mlp = OperatorReplicas(("mlp",), 2, 1, 0.25, 8)
        with_replicas = InstanceSpec(BASE.instance_id, BASE.model, BASE.sku, BASE.tp, operator_replicas=(mlp,))
        result = await agent.apply(ApplyCommand("agent-1", 2, "c2", (with_replicas,)))
        assert result.accepted and result.applied_epoch == 2
        assert await _state(agent) == InstanceState.READY, "the base instance was not restarted"

        too_many = OperatorReplicas(("mlp",), 3, 1, 0.5, 8)  # 1 GPU + 1.5 GPU-equivalents on a 2-GPU host
        over = InstanceSpec(BASE.instance_id, BASE.model, BASE.sku, BASE.tp, operator_replicas=(too_many,))
        refused = await agent.apply(ApplyCommand("agent-1", 3, "c3", (over,)))
        assert not refused.accepted and refused.applied_epoch == 2
        assert "this host has 2" in refused.reason and "GPU-equivalents" in refused.reason
        assert await _state(agent) == InstanceState.READY
