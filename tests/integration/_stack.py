"""An in-process live stack for integration tests: the five real service processes (their `run()`), as
asyncio tasks in one event loop, against real NATS and Redis, in the test's own namespace, on free ports."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from _tls import grpc_tls, tls_dict

from opscale.runtime.live.local_servers import free_port, free_port_block
from opscale.runtime.live.settings import (
    AggregatorSettings,
    ForecasterSettings,
    GrpcTlsSettings,
    NodeAgentSettings,
    PlannerSettings,
    RouterSettings,
    load_settings,
)

from opscale_services.common import LiveProcess

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


async def start_service(run: Callable[..., Awaitable[None]], settings: Any, stop: asyncio.Event, *,
                        name: str = "service", timeout_s: float = 30.0) -> tuple[asyncio.Task[None], LiveProcess]:
    """Run a live service (`run(settings, stop, on_start)`, as its main does) as a task and wait until it
    has started: the task and its LiveProcess. A start-up error is raised as the service raised it; a
    service not started within `timeout_s` is stopped (`stop`, then cancelled) and a TimeoutError raised."""
    processes: list[LiveProcess] = []
    started = asyncio.Event()

    def on_start(p: LiveProcess) -> None:
        processes.append(p)
        started.set()

    task = asyncio.create_task(run(settings, stop, on_start), name=f"live-{name}")
    waiter = asyncio.create_task(started.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    if waiter in done:
        return task, processes[0]
    waiter.cancel()
    if task in done:
        task.result()  # raises the service's start-up error
        raise RuntimeError(f"{name} returned before it started")
    stop.set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)  # its clean-up runs now, not at the loop's close
    raise TimeoutError(f"{name} did not start within {timeout_s:g} s")


@dataclass
class LiveStack:
    nats_url: str
    redis_url: str
    namespace: str
    region: str = "eu-west"
    model: str = "Llama-3-8B"
    # The shared tier table every service is given (None: the built-in tiers)
    tiers: list[dict[str, Any]] | None = None
    # Per service ("router", "node_agent", ...): settings that replace the stack's own (top-level keys)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Routers behind the one API (replicas: each with its own id and consumers); the first is "router"
    routers: int = 1
    router_port: int = field(default_factory=free_port)
    extra_router_ports: list[int] = field(default_factory=list)
    agent_grpc_port: int = field(default_factory=free_port)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    processes: dict[str, LiveProcess] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _services: dict[str, tuple[Callable[..., Awaitable[None]], Any]] = field(default_factory=dict)
    _stops: dict[str, asyncio.Event] = field(default_factory=dict)
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def _common(self) -> dict[str, Any]:
        common = {"nats_url": self.nats_url, "redis_url": self.redis_url, "namespace": self.namespace,
                  "ops_host": "127.0.0.1", "ops_port": 0, "tracing_exporter": "memory", "stop_timeout_s": 5.0}
        return common if self.tiers is None else {**common, "tiers": self.tiers}

    @property
    def planner_tls(self) -> GrpcTlsSettings:
        """What a test that calls the agent directly presents: the planner's certificate (the stack runs
        its gRPC control surface over mTLS, as a deployment does)."""
        return grpc_tls("planner")

    @property
    def agent_address(self) -> str:
        return f"127.0.0.1:{self.agent_grpc_port}"

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.router_port}"

    @property
    def router_names(self) -> list[str]:
        return ["router"] + [f"router-{i}" for i in range(2, self.routers + 1)]

    @property
    def router_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in [self.router_port, *self.extra_router_ports]]

    async def start(self) -> None:
        from opscale_services.aggregator import main as aggregator
        from opscale_services.forecaster import main as forecaster
        from opscale_services.node_agent import main as node_agent
        from opscale_services.planner import main as planner
        from opscale_services.router import main as router

        c = self._common()
        o = self.overrides
        services: list[tuple[str, Callable[..., Awaitable[None]], Any]] = [
            ("aggregator", aggregator.run, load_settings(AggregatorSettings, **{
                **c, "tick_s": 0.2, "core": {"publish_interval_s": 1.0, "windows_s": [10.0, 60.0]},
                **o.get("aggregator", {})})),
            ("forecaster", forecaster.run, load_settings(ForecasterSettings, **{**c, "tick_s": 1.0,
                                                                                **o.get("forecaster", {})})),
            ("planner", planner.run, load_settings(PlannerSettings, **{
                **c, "grpc_tls": tls_dict("planner"), "tick_s": 0.2, "lease_ttl_s": 3.0, "lease_renew_s": 0.5, "holder_id": "test-planner",
                "deployments": [{"model": self.model, "sku": "H100-80GB", "tp": 1, "min_replicas": 1,
                                 "max_replicas": 2}],
                "core": {"interval_s": 1.0, "resend_after_s": 1.0}, **o.get("planner", {})})),
            ("node_agent", node_agent.run, load_settings(NodeAgentSettings, **{
                **c, "grpc_tls": tls_dict("node-agent"), "agent_id": "agent-1", "region": self.region, "sku": "H100-80GB", "gpus": 8,
                "grpc_host": "127.0.0.1", "grpc_port": self.agent_grpc_port, "http_port": 0,
                "advertise_host": "127.0.0.1", "heartbeat_interval_s": 0.5, "tick_s": 0.2, "load_time_scale": 0.02,
                **o.get("node_agent", {})})),
            ("router", router.run, load_settings(RouterSettings, **{
                **c, "grpc_tls": tls_dict("router"), "http_host": "127.0.0.1", "http_port": self.router_port, "grpc_port": free_port(),
                "tick_s": 0.2, "records_flush_s": 0.2, "core": {"region": self.region, "router_id": "router-test"},
                **o.get("router", {})})),
        ]
        while len(self.extra_router_ports) < self.routers - 1:
            self.extra_router_ports.append(free_port())
        for name, port in zip(self.router_names[1:], self.extra_router_ports, strict=True):
            replica = {**c, "grpc_tls": tls_dict("router"), "http_host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "tick_s": 0.2,
                       "records_flush_s": 0.2, "core": {"region": self.region}, **o.get("router", {})}
            # in one process the default identity (host and pid) is the same: each replica is named
            replica["core"] = {**replica["core"], "router_id": f"router-test-{name}"}
            services.append((name, router.run, load_settings(RouterSettings, **replica)))
        for name, run, settings in services:
            self._services[name] = (run, settings)
            await self._start(name)

    async def _start(self, name: str) -> None:
        run, settings = self._services[name]
        stop = self._stops[name] = asyncio.Event()
        if self.stop.is_set():
            stop.set()
        task, self.processes[name] = await start_service(run, settings, stop, name=f"stack-{name}")
        self._tasks[name] = task
        self.tasks.append(task)

    async def restart(self, name: str) -> None:
        """Stop one service as SIGTERM does (its shutdown runs) and start it again with the same settings."""
        self._stops[name].set()
        await asyncio.wait_for(self._tasks[name], timeout=30)
        await self._start(name)

    async def close(self) -> None:
        self.stop.set()
        for stop in self._stops.values():
            stop.set()
        results = await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), timeout=30)
        errors = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
        if errors:
            raise errors[0]


async def eventually(check: Callable[[], Awaitable[T]], timeout_s: float = 30.0, every_s: float = 0.1) -> T:
    """Poll `check()` until it returns something truthy, and return that; the deadline only bounds a hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(every_s)  # noqa: TID251 - polling real servers


async def clean_namespace(nats_url: str, redis_url: str, namespace: str) -> None:
    """Delete what a test's namespace left on the shared servers: its Redis keys and its NATS streams."""
    from opscale.runtime.live.bus import NatsBus
    from opscale.runtime.live.store import RedisStore

    store = RedisStore(redis_url, namespace)
    await store.delete_namespace()
    await store.close()
    cleaner = NatsBus(namespace)
    await cleaner.connect(nats_url, f"cleanup-{namespace}", ensure_streams=False)
    await cleaner.delete_streams()
    await cleaner.close()


@asynccontextmanager
async def running_stack(stack: LiveStack) -> AsyncIterator[LiveStack]:
    """`stack` started, then stopped and its namespace cleaned, whatever the test did."""
    try:
        await stack.start()
        yield stack
    finally:
        await stack.close()
        await clean_namespace(stack.nats_url, stack.redis_url, stack.namespace)


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


def start_up_scenario(scenario: str, tmp_path: Path, nats_url: str, redis_url: str,
                      namespace: str) -> tuple[subprocess.Popen[bytes], int]:
    """`opscale up --scenario` of the scenario YAML `scenario` on a free block of ports, in the test's
    namespace, every server on 127.0.0.1 and heartbeats every 0.5 s: (the process, its port base, where
    the router's API listens). Stop it with `stop_up`."""
    (tmp_path / "scenario.yaml").write_text(scenario)
    base = free_port_block(64)
    env = dict(os.environ, OPSCALE_NATS_URL=nats_url, OPSCALE_REDIS_URL=redis_url, OPSCALE_NAMESPACE=namespace,
               OPSCALE_NODE_AGENT_HEARTBEAT_INTERVAL_S="0.5", OPSCALE_OPS_HOST="127.0.0.1",
               OPSCALE_ROUTER_HTTP_HOST="127.0.0.1", OPSCALE_NODE_AGENT_GRPC_HOST="127.0.0.1")
    proc = subprocess.Popen([sys.executable, "-m", "opscale.cli", "up", "--scenario", str(tmp_path / "scenario.yaml"),
                             "--port-base", str(base)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    return proc, base


async def eventually_while_up(probe: Callable[[], T], proc: subprocess.Popen[bytes], timeout_s: float) -> T:
    """The first truthy value of `probe()`, polled while an `opscale up` process runs; fails the test when
    the stack exits or `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"opscale up exited early:\n{proc.stdout.read().decode()[-3000:]}")  # type: ignore[union-attr]
        value = probe()
        if value:
            return value
        await asyncio.sleep(0.2)  # noqa: TID251 - polling what a live stack published
    raise AssertionError(f"not within {timeout_s} s")
