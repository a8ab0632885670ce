"""High availability on real NATS and Redis: two routers behind one API each hear every heartbeat and
plan (each has the whole fleet), the planner keeps their loads apart, and requests sent through both
balance over the instances as one router's decisions do; of two planners, the standby takes the lease
within 10 s of the leader's death (SIGKILL) and the dead leader's commands are fenced off."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from _stack import ROOT, LiveStack, clean_namespace, eventually
from _tls import tls_dict

from opscale.runtime.live.grpc_glue import NodeAgentClient
from opscale.runtime.live.settings import PlannerSettings
from opscale.runtime.live.store import RedisStore
from opscale.services import subjects
from opscale.services.events import ApplyCommand
from opscale.services.planner import PlannerCore
from opscale.services.router import RouterCore

pytestmark = pytest.mark.integration




@pytest.fixture
async def two_routers(nats_url: str, redis_url: str, namespace: str) -> AsyncIterator[LiveStack]:
    # Two instances of the model, so that there is something to balance
    s = LiveStack(nats_url, redis_url, namespace, routers=2, overrides={"planner": {"deployments": [
        {"model": "Llama-3-8B", "sku": "H100-80GB", "tp": 1, "min_replicas": 2, "max_replicas": 2}]}})
    try:
        await s.start()
        yield s
    finally:
        await s.close()
        await clean_namespace(nats_url, redis_url, namespace)


def _router(stack: LiveStack, name: str) -> RouterCore:
    core = stack.processes[name].core
    assert isinstance(core, RouterCore)
    return core


async def _chat(session: aiohttp.ClientSession, url: str, model: str, n: int) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": f"request {n}"}], "max_tokens": 30}
    async with session.post(f"{url}/v1/chat/completions", json=body, headers={"x-opscale-region": "eu-west"}) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["x-request-id"]


async def test_two_routers_each_see_the_whole_fleet_and_the_planner_keeps_their_loads_apart(
        two_routers: LiveStack) -> None:
    stack = two_routers
    bus = stack.processes["planner"].bus

    async def both_follow_the_newest_plan() -> bool:
        published = await bus.last(subjects.plans())
        plan = published.plan if published is not None else None
        if plan is None or sum(len(a) for a in plan.assignments.values()) < 2:
            return False
        # every heartbeat and every plan reaches each replica (own consumers), not one of them
        return all(_router(stack, name).plan_epoch() == plan.epoch and _router(stack, name).agents() == ["agent-1"]
                   and len(_router(stack, name).ready_instances(stack.model)) == 2 for name in stack.router_names)

    await eventually(both_follow_the_newest_plan)

    planner = stack.processes["planner"].core
    assert isinstance(planner, PlannerCore)

    async def planner_hears_both() -> bool:
        return set(planner.router_pending()) == {"router-test", "router-test-router-2"}

    await eventually(planner_hears_both)  # two loads, neither overwriting the other

    # Concurrent requests, alternately through each router: the instances share them as one router shares
    # its own (jsq on outstanding tokens splits each router's concurrent requests evenly).
    async with aiohttp.ClientSession() as session:
        urls = stack.router_urls
        ids = await asyncio.gather(*(_chat(session, urls[i % 2], stack.model, i) for i in range(40)))
    served: dict[str, Counter[str]] = {}
    for name in stack.router_names:
        spans = stack.processes[name].tracer_provider.memory_exporter.get_finished_spans()
        served[name] = Counter(str((s.attributes or {})["opscale.instance_id"]) for s in spans
                               if s.name == "router.request" and (s.attributes or {}).get("opscale.request_id") in ids)
    total = sum(served.values(), Counter())
    assert sum(total.values()) == 40 and len(total) == 2, served
    one_router_spread = max(max(c.values()) - min(c.values()) if len(c) == 2 else sum(c.values())
                            for c in served.values())
    spread = max(total.values()) - min(total.values())
    # each router alone balances its 20 within a request or two; together the spread is at most theirs summed
    assert one_router_spread <= 4, served
    assert spread <= 2 * one_router_spread + 1, served


# -- two planners ----------------------------------------------------------------------------------------


def _start_planner(tmp_path: Path, nats_url: str, redis_url: str, namespace: str, holder: str,
                   planner: dict[str, Any]) -> subprocess.Popen[bytes]:
    """`opscale serve planner` as its own process (so that it can die by SIGKILL, lease unreleased)."""
    config = tmp_path / f"{holder}.yaml"
    config.write_text(yaml.safe_dump({"nats_url": nats_url, "redis_url": redis_url, "namespace": namespace,
                                      "ops_host": "127.0.0.1", "grpc_tls": {k: str(v) for k, v in tls_dict("planner").items()},
                                      "planner": {**planner, "holder_id": holder, "ops_port": 0}}, sort_keys=False))
    return subprocess.Popen([sys.executable, "-m", "opscale.cli", "serve", "planner", "--config", str(config)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


async def test_the_standby_planner_takes_over_within_10_s_and_the_dead_leaders_commands_are_refused(
        tmp_path: Path, nats_url: str, redis_url: str, namespace: str) -> None:
    # Both planners run with the default lease timing; the standby re-learns for 3 s before it decides.
    planner = {"tick_s": 0.2, "deployments": [{"model": "Llama-3-8B", "sku": "H100-80GB", "tp": 1, "min_replicas": 1,
                                                "max_replicas": 2}],
               "core": {"interval_s": 1.0, "resend_after_s": 1.0, "demand_window_s": 3.0, "agent_timeout_s": 3.0}}
    store = RedisStore(redis_url, namespace)
    leader = _start_planner(tmp_path, nats_url, redis_url, namespace, "planner-a", planner)
    stack = LiveStack(nats_url, redis_url, namespace, overrides={"planner": {
        **{k: v for k, v in planner.items() if k != "tick_s"}, "holder_id": "planner-b",
        "lease_ttl_s": PlannerSettings.model_fields["lease_ttl_s"].default,
        "lease_renew_s": PlannerSettings.model_fields["lease_renew_s"].default}})
    try:
        async def a_leads() -> bool:
            if leader.poll() is not None:
                raise AssertionError(f"planner-a exited:\n{leader.stdout.read().decode()[-3000:]}")  # type: ignore[union-attr]
            return await store.lease_holder("planner") == "planner-a"

        await eventually(a_leads)
        await stack.start()  # planner-b stands by
        async with NodeAgentClient(stack.agent_address, 2.0, tls=stack.planner_tls) as agent:
            async def follows_a():  # noqa: ANN202
                hb = await agent.status()
                return hb if hb.epoch >= 1 and hb.instances and hb.fencing_token >= 1 else None

            under_a = await eventually(follows_a)
            leader.kill()  # SIGKILL: the lease is not released, it lapses
            leader.wait()
            died_at = time.monotonic()

            async def b_leads() -> bool:
                return await store.lease_holder("planner") == "planner-b"

            await eventually(b_leads, timeout_s=20.0, every_s=0.05)
            took_over_s = time.monotonic() - died_at
            assert took_over_s <= 10.0, f"the standby took the lease {took_over_s:.1f} s after the leader died"

            async def follows_b():  # noqa: ANN202
                hb = await agent.status()
                return hb if hb.fencing_token > under_a.fencing_token else None

            under_b = await eventually(follows_b)  # planner-b sent its plan under the new generation
            assert under_b.epoch >= under_a.epoch
            # The dead leader's last command, delivered late, with a newer epoch: refused, nothing changes
            stale = await agent.apply(ApplyCommand("agent-1", under_b.epoch + 1, "late", (),
                                                   fencing_token=under_a.fencing_token))
            assert not stale.accepted and "fencing token" in stale.reason
            after = await agent.status()
            assert (after.epoch, after.fencing_token) == (under_b.epoch, under_b.fencing_token)
            assert {i.instance_id for i in after.instances} == {i.instance_id for i in under_b.instances}
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait()
        await stack.close()
        await store.close()
        await clean_namespace(nats_url, redis_url, namespace)
