"""An in-process live stack for integration tests: the five real service processes (their `run()`), as
asyncio tasks in one event loop, against real NATS and Redis, in the test's own namespace, on free ports."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from opscale.runtime.live.settings import (
    AggregatorSettings,
    ForecasterSettings,
    NodeAgentSettings,
    PlannerSettings,
    RouterSettings,
    load_settings,
)

from opscale_services.common import LiveProcess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveStack:
    nats_url: str
    redis_url: str
    namespace: str
    region: str = "eu-west"
    model: str = "Llama-3-8B"
    # The shared tier table every service is given (None: the built-in tiers)
    tiers: list[dict[str, Any]] | None = None
    router_port: int = field(default_factory=free_port)
    agent_grpc_port: int = field(default_factory=free_port)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    processes: dict[str, LiveProcess] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def _common(self) -> dict[str, Any]:
        common = {"nats_url": self.nats_url, "redis_url": self.redis_url, "namespace": self.namespace,
                  "ops_host": "127.0.0.1", "ops_port": 0, "tracing_exporter": "memory", "stop_timeout_s": 5.0}
        return common if self.tiers is None else {**common, "tiers": self.tiers}

    @property
    def agent_address(self) -> str:
        return f"127.0.0.1:{self.agent_grpc_port}"

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.router_port}"

    async def start(self) -> None:
        from opscale_services.aggregator import main as aggregator
        from opscale_services.forecaster import main as forecaster
        from opscale_services.node_agent import main as node_agent
        from opscale_services.planner import main as planner
        from opscale_services.router import main as router

        c = self._common()
        services: list[tuple[str, Callable[..., Awaitable[None]], Any]] = [
            ("aggregator", aggregator.run, load_settings(
                AggregatorSettings, **c, tick_s=0.2, core={"publish_interval_s": 1.0, "windows_s": [10.0, 60.0]})),
            ("forecaster", forecaster.run, load_settings(ForecasterSettings, **c, tick_s=1.0)),
            ("planner", planner.run, load_settings(
                PlannerSettings, **c, tick_s=0.2, lease_ttl_s=3.0, lease_renew_s=0.5, holder_id="test-planner",
                deployments=[{"model": self.model, "sku": "H100-80GB", "tp": 1, "min_replicas": 1,
                              "max_replicas": 2}],
                core={"interval_s": 1.0, "resend_after_s": 1.0})),
            ("node_agent", node_agent.run, load_settings(
                NodeAgentSettings, **c, agent_id="agent-1", region=self.region, sku="H100-80GB", gpus=8,
                grpc_host="127.0.0.1", grpc_port=self.agent_grpc_port, http_port=0,
                advertise_host="127.0.0.1", heartbeat_interval_s=0.5, tick_s=0.2, load_time_scale=0.02)),
            ("router", router.run, load_settings(
                RouterSettings, **c, http_host="127.0.0.1", http_port=self.router_port, grpc_port=free_port(),
                tick_s=0.2, records_flush_s=0.2, core={"region": self.region, "router_id": "router-test"})),
        ]
        for name, run, settings in services:
            started = asyncio.Event()

            def on_start(p: LiveProcess, name: str = name, started: asyncio.Event = started) -> None:
                self.processes[name] = p
                started.set()

            task = asyncio.create_task(run(settings, self.stop, on_start), name=f"stack-{name}")
            self.tasks.append(task)
            waiter = asyncio.create_task(started.wait())
            done, _ = await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                waiter.cancel()
                task.result()  # raises the service's start-up error
            if waiter not in done:
                raise TimeoutError(f"{name} did not start within 30 s")

    async def close(self) -> None:
        self.stop.set()
        results = await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), timeout=30)
        errors = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
        if errors:
            raise errors[0]


def stop_up(proc: subprocess.Popen[bytes]) -> str:
    """Stop an `opscale up` process as a user does (SIGTERM) and return its output; a stack that does not
    stop within 45 s is killed and fails the test."""
    proc.send_signal(signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"opscale up did not stop within 45 s:\n{output.decode()[-3000:]}")
    return output.decode()
