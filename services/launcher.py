"""Starting live services: `opscale serve SERVICE` (one, in this process) and `opscale up` (the whole
local stack as child processes).

`up` gives each node-agent its own identity and ports through environment variables, forwards Ctrl-C or
SIGTERM to every child as SIGTERM, waits for them to stop, and kills only what is still running after
the grace period. If a child dies on its own, the others are stopped too, and the exit code says so.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from opscale.runtime.live.settings import SERVICE_SETTINGS, SettingsError, load_settings

from opscale_services.common import configure_logging

log = logging.getLogger("opscale.up")

MODULES = {"router": "router", "aggregator": "aggregator", "forecaster": "forecaster", "planner": "planner",
           "node-agent": "node_agent"}


def serve_service(service: str, config: Path | None) -> None:
    """Run one service until SIGINT/SIGTERM. Raises ValueError (SettingsError) for bad settings."""
    key = MODULES[service]
    settings = load_settings(SERVICE_SETTINGS[key], config)
    configure_logging(settings.log_level)
    main = importlib.import_module(f"opscale_services.{key}.main")
    getattr(main, "install_fast_loop", lambda: None)()  # the router uses uvloop when it is installed
    asyncio.run(main.run(settings))


def stack_environments(agents: int, base_env: dict[str, str],
                       port_base: int | None = None) -> list[tuple[str, dict[str, str]]]:
    """(service, environment) for every process of a local stack with `agents` node-agents.

    Without `port_base` the control-plane services keep their documented ports (router 8000 and 50052,
    ops 9100-9103) and agent i gets gRPC 50061+i, engines 9201+i, ops 9111+i. With it, every port is an
    offset from `port_base`, so two stacks (or a test) can run side by side."""
    b = port_base
    ports = {} if b is None else {
        "router": {"HTTP_PORT": b, "GRPC_PORT": b + 1, "OPS_PORT": b + 2},
        "aggregator": {"OPS_PORT": b + 3}, "forecaster": {"OPS_PORT": b + 4}, "planner": {"OPS_PORT": b + 5}}
    procs: list[tuple[str, dict[str, str]]] = []
    for name in ("aggregator", "forecaster", "planner", "router"):
        env = dict(base_env)
        for field, port in ports.get(name, {}).items():
            env[f"OPSCALE_{name.upper()}_{field}"] = str(port)
        procs.append((name, env))
    for i in range(agents):
        env = dict(base_env)
        prefix = "OPSCALE_NODE_AGENT_"
        grpc, http, ops = (50061 + i, 9201 + i, 9111 + i) if b is None else (b + 10 + 3 * i, b + 11 + 3 * i,
                                                                                b + 12 + 3 * i)
        env[f"{prefix}AGENT_ID"] = f"local-agent-{i + 1}"
        env[f"{prefix}GRPC_PORT"] = str(grpc)
        env[f"{prefix}HTTP_PORT"] = str(http)
        env[f"{prefix}OPS_PORT"] = str(ops)
        env[f"{prefix}ADVERTISE_HOST"] = env.get(f"{prefix}ADVERTISE_HOST") or "127.0.0.1"
        procs.append(("node-agent", env))
    return procs


def run_stack(agents: int, config: Path | None, grace_s: float = 15.0, port_base: int | None = None) -> int:
    configure_logging("INFO")
    # Validate every service's settings before starting anything, so a typo fails fast and clearly.
    for cls in SERVICE_SETTINGS.values():
        try:
            load_settings(cls, config)
        except SettingsError as exc:
            log.error("%s", exc)
            return 2
    base = dict(os.environ)
    if config is not None:
        base["OPSCALE_CONFIG"] = str(config)
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for service, env in stack_environments(agents, base, port_base):
            cmd = [sys.executable, "-m", "opscale.cli", "serve", service]
            children.append((service, subprocess.Popen(cmd, env=env)))
            log.info("started %s (pid %d)", service, children[-1][1].pid)
        exit_code = 0
        while not stopping:
            for service, proc in children:
                if proc.poll() is not None:
                    log.error("%s exited with code %s; stopping the stack", service, proc.returncode)
                    stopping, exit_code = True, 1
                    break
            time.sleep(0.2)
        return _stop_all(children, grace_s) or exit_code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_all(children: list[tuple[str, subprocess.Popen[bytes]]], grace_s: float) -> int:
    for _, proc in children:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    stuck = 0
    for service, proc in children:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("%s (pid %d) did not stop within %.0f s; killing it", service, proc.pid, grace_s)
            proc.kill()
            proc.wait()
            stuck += 1
    log.info("stack stopped")
    return 1 if stuck else 0
