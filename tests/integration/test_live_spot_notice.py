"""The node-agent's spot notice (POST /ops/spot-notice on its ops port): what a watcher of the cloud's
preemption notices calls. The agent drains every instance within the notice and says so in its
heartbeats; bad input is refused naming the field. (The fault suite, tests/faults, times the re-placement.)"""

from __future__ import annotations

import aiohttp
import pytest
from _stack import LiveStack, eventually
from test_live_stack import stack  # noqa: F401 - the live stack fixture, shared

from opscale.model import InstanceState
from opscale.runtime.live.grpc_glue import NodeAgentClient

pytestmark = pytest.mark.integration


async def _instances(stack: LiveStack) -> list:  # noqa: F811
    async with NodeAgentClient(stack.agent_address, 2.0, tls=stack.planner_tls) as agent:
        return list((await agent.status()).instances)


async def test_spot_notice_drains_the_host_and_refuses_bad_input(stack: LiveStack) -> None:  # noqa: F811
    async def ready() -> bool:
        return any(i.state == InstanceState.READY for i in await _instances(stack))
    await eventually(ready)
    url = f"http://127.0.0.1:{stack.processes['node_agent'].ops_port}/ops/spot-notice"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for bad in ({}, {"notice_s": "2m"}, {"notice_s": -1}, {"notice_s": True}):
            async with session.post(url, json=bad) as resp:
                assert resp.status == 400 and "notice_s" in (await resp.json())["error"], bad
        assert any(i.state == InstanceState.READY for i in await _instances(stack))  # refused: nothing drained
        async with session.post(url, json={"notice_s": 30}) as resp:
            assert resp.status == 202
            answer = await resp.json()
    assert answer["agent_id"] == "agent-1" and answer["terminating_in_s"] == 30.0 and answer["draining"]
    # every instance drains (an idle one stops at once), and the agent tells the planner it is going
    assert all(i.state in (InstanceState.DRAINING, InstanceState.STOPPED) for i in await _instances(stack))
    async with NodeAgentClient(stack.agent_address, 2.0, tls=stack.planner_tls) as agent:
        assert (await agent.status()).terminating_at_s is not None
