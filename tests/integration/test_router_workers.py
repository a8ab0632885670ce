"""One router host, all its cores, on real NATS and Redis: `opscale serve router` with `workers: 2` runs two
processes on one API port (SO_REUSEPORT), each pinned to its own core, each a replica with its own id fed
by every event (the planner hears both), and connections spread over both."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from _stack import ROOT, LiveStack, eventually, running_stack
from _tls import tls_dict

from opscale.runtime.live.local_servers import free_port, free_port_block, terminate
from opscale.services.planner import PlannerCore

pytestmark = pytest.mark.integration



@pytest.fixture
async def stack(nats_url: str, redis_url: str, namespace: str) -> AsyncIterator[LiveStack]:
    s = LiveStack(nats_url, redis_url, namespace)
    async with running_stack(s):
        yield s


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="SO_REUSEPORT workers pinned to cores: Linux")
async def test_two_router_workers_share_one_port_and_each_follows_the_fleet(
        stack: LiveStack, tmp_path: Path, nats_url: str, redis_url: str, namespace: str) -> None:
    http_port, ops_base = free_port(), free_port_block(2)
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({
        "nats_url": nats_url, "redis_url": redis_url, "namespace": namespace, "ops_host": "127.0.0.1",
        "grpc_tls": {k: str(v) for k, v in tls_dict("router").items()},
        "router": {"workers": 2, "http_host": "127.0.0.1", "http_port": http_port, "grpc_port": free_port(),
                   "ops_port": ops_base, "tick_s": 0.2, "records_flush_s": 0.2,
                   "core": {"region": stack.region, "router_id": "edge"}}}))
    proc = subprocess.Popen([sys.executable, "-m", "opscale.cli", "serve", "router", "--config", str(config)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        planner = stack.processes["planner"].core
        assert isinstance(planner, PlannerCore)

        async def both_workers_report() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"router exited:\n{proc.stdout.read().decode()[-3000:]}")  # type: ignore[union-attr]
            return {"edge-w0", "edge-w1"} <= set(planner.router_pending())

        await eventually(both_workers_report)  # two replicas, each with its own consumers and load
        body = {"model": stack.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        url = f"http://127.0.0.1:{http_port}/v1/chat/completions"
        # a new connection per request: SO_REUSEPORT spreads connections, not requests on one
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            async def served() -> bool:
                async with session.post(url, json=body) as resp:
                    return resp.status == 200

            await eventually(served)  # the model is ready at a worker
            for _ in range(30):
                await eventually(served)  # a worker that has not yet seen the instance holds, not refuses
            counts = []
            for i in range(2):
                async with session.get(f"http://127.0.0.1:{ops_base + i}/metrics") as resp:
                    text = await resp.text()
                counts.append(sum(float(v) for v in re.findall(r'^opscale_router_requests_total\{[^}]*\} (\S+)$',
                                                                text, re.M)))
        assert all(c > 0 for c in counts) and sum(counts) >= 31, counts  # both workers served
        # each worker runs on a core of its own
        children = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                       text=True).stdout.split()]
        cores = [os.sched_getaffinity(pid) for pid in children]
        assert len(cores) == 2 and all(len(c) == 1 for c in cores) and (
            cores[0] != cores[1] or len(os.sched_getaffinity(0)) == 1), cores
    finally:
        terminate(proc, 30.0)
