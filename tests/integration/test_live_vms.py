"""The live planner acts on its plans' VM counts, on real NATS and Redis, through the local actuator: a
plan that asks for a VM makes a node-agent process appear, whose heartbeat reaches the planner (which
then places on it); a later plan with fewer VMs gives it back: the agent gets SIGTERM, drains, and
exits by itself (not killed), and the planner logs each step."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _stack import LiveStack, eventually, running_stack
from _tls import tls_dict

from opscale.planning.static import StaticPolicy
from opscale.services.planner import PlannerCore

pytestmark = pytest.mark.integration

CELL = ("eu-west", "H100-80GB", "on_demand")
DEPLOYMENT = {"model": "Llama-3-8B", "sku": "H100-80GB", "tp": 1, "min_replicas": 1, "max_replicas": 2}


@pytest.fixture
async def stack(nats_url: str, redis_url: str, namespace: str, tmp_path: Path) -> AsyncIterator[LiveStack]:
    tls = tls_dict("node-agent")
    agent_env = {f"OPSCALE_NODE_AGENT_GRPC_TLS__{k.upper()}": str(v) for k, v in tls.items()} | {
        "OPSCALE_NODE_AGENT_GRPC_HOST": "127.0.0.1", "OPSCALE_NODE_AGENT_HEARTBEAT_INTERVAL_S": "0.5",
        "OPSCALE_NODE_AGENT_TICK_S": "0.2", "OPSCALE_NODE_AGENT_LOAD_TIME_SCALE": "0.02",
        "OPSCALE_OPS_HOST": "127.0.0.1"}
    # the stack's own agent holds one instance; the second goes to the VM once it has joined
    s = LiveStack(nats_url, redis_url, namespace, overrides={"node_agent": {"gpus": 1}, "planner": {
        "policy": "static", "policy_params": {"vms": [{"region": "eu-west", "sku": "H100-80GB", "count": 1}]},
        "deployments": [DEPLOYMENT],
        "core": {"interval_s": 1.0, "resend_after_s": 1.0, "agent_timeout_s": 4.0},
        "cloud": {"actuator": "local", "poll_s": 0.5, "local": {"env": agent_env, "drain_s": 5.0,
                                                                 "log_dir": str(tmp_path / "vms")}}}})
    async with running_stack(s):
        yield s


def _planner(stack: LiveStack) -> PlannerCore:
    core = stack.processes["planner"].core
    assert isinstance(core, PlannerCore)
    return core


async def test_a_plan_asking_for_a_vm_starts_a_node_agent_and_a_smaller_one_drains_it_away(
        stack: LiveStack, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.INFO, logger="opscale.runtime.live.vm_actuation")
    planner = _planner(stack)

    vm_agent = "local-vm-1-eu-west-h100-80gb"  # the actuator's first VM, and its agent's id

    async def vm_joined() -> bool:
        # its heartbeat, with its control address, reached the planner
        return planner.plan.vm_counts == {CELL: 1} and planner.agent_address(vm_agent) is not None

    await eventually(vm_joined, timeout_s=90.0)
    started_at = [r.created for r in caplog.records if "started local-vm-" in r.getMessage()]
    joined_s = time.time() - started_at[0]  # noqa: TID251 - against the log record's wall-clock stamp
    started = [r.getMessage() for r in caplog.records if "started local-vm-" in r.getMessage()]
    assert len(started) == 1 and started[0].startswith("vms: eu-west/H100-80GB/on_demand: 0 -> 1 for plan epoch")
    assert started[0].endswith(f"started {vm_agent}")

    # the planner places on it: static max_replicas 2 over both hosts, from its first heartbeat on
    async def placed_on_it() -> bool:
        return bool(planner.plan.assignments.get(vm_agent))
    await eventually(placed_on_it, timeout_s=30.0)

    # the policy changes its mind: no VMs in that pool. The next plan gives it back.
    dep = next(iter(planner.deployments.values()))
    planner.policy = StaticPolicy([dep], vm_counts={CELL: 0})
    t1 = time.monotonic()

    async def gone() -> bool:
        return any(f"{vm_agent} terminated" in r.getMessage() for r in caplog.records)
    await eventually(gone, timeout_s=60.0)
    gone_s = time.monotonic() - t1
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"released {vm_agent} (draining)" in m and "1 -> 0" in m for m in messages)
    [terminated] = [m for m in messages if f"{vm_agent} terminated" in m]
    assert "stopped (exit code 0)" in terminated, terminated  # exited on SIGTERM by itself, not killed
    agent_log = (tmp_path / "vms" / f"{vm_agent}.log").read_text()
    assert "drained in" in agent_log

    # its instances go back to the host that stays, and the planner forgets the agent
    async def re_placed() -> bool:
        return vm_agent not in planner.plan.assignments and planner.agent_address(vm_agent) is None
    await eventually(re_placed, timeout_s=30.0)
    drained = next(line for line in agent_log.splitlines() if "drained in" in line)
    print(f"\nlocal VM: its heartbeat at the planner {joined_s:.1f} s after the process started; gone "
          f"{gone_s:.1f} s after the smaller plan ({drained.split(': ', 1)[1]})")
