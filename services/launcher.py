"""Starting live services: `opscale serve SERVICE` (one, in this process) and `opscale up` (the whole
local stack as child processes).

`up` serves the API without keys unless the settings configure some, and warns loudly when it does.
`up` gives each node-agent its own identity and ports through environment variables, forwards Ctrl-C or
SIGTERM to every child as SIGTERM, waits for them to stop, and kills only what is still running after
the grace period. A child that dies on its own is restarted after an exponential backoff (1 s, 2 s, 4 s,
... up to 30 s), and the log says so; one that dies `RestartPolicy.max_restarts` times in a row (each
time within `stable_s` of its start) stops the whole stack, and the exit code says so.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from opscale.runtime.live.settings import (
    SERVICE_SETTINGS,
    RouterSettings,
    SettingsError,
    load_settings,
    read_config_file,
)

from opscale_services.common import configure_logging

log = logging.getLogger("opscale.up")

# `opscale up` is the local demo stack: it serves without API keys unless its settings configure some
# (router.auth), and says so where nobody can miss it.
AUTH_OFF_WARNING = ("!!! API keys are OFF: the router's OpenAI API serves anyone who can reach it. This is the "
                    "local demo setting; configure router.auth (keys_file or keys) to require keys. !!!")

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


def stack_environments(agents: int | Sequence[Mapping[str, str]], base_env: Mapping[str, str],
                       port_base: int | None = None,
                       routers: Sequence[Mapping[str, str]] = ({},)) -> list[tuple[str, dict[str, str]]]:
    """(service, environment) for every process of a local stack: the aggregator, forecaster and planner,
    `routers` (each an environment that gives it its identity) and `agents` (a count of default agents,
    or one identity environment per agent).

    Without `port_base` the control-plane services keep their documented ports (router 8000 and 50052,
    ops 9100-9103; a further router k gets 8000+k, 50052+k and ops 9190+k) and agent i gets gRPC
    50061+i, engines 9201+i, ops 9111+i. With it, every port is an offset from `port_base` (the first
    router's API at the base, agents from base+10, further routers after the agents), so two stacks (or
    a test) can run side by side."""
    b = port_base
    identities = ([{"OPSCALE_NODE_AGENT_AGENT_ID": f"local-agent-{i + 1}"} for i in range(agents)]
                  if isinstance(agents, int) else list(agents))
    ports = {} if b is None else {"aggregator": {"OPS_PORT": b + 3}, "forecaster": {"OPS_PORT": b + 4},
                                  "planner": {"OPS_PORT": b + 5}}
    procs: list[tuple[str, dict[str, str]]] = []
    for name in ("aggregator", "forecaster", "planner"):
        env = dict(base_env)
        for field, port in ports.get(name, {}).items():
            env[f"OPSCALE_{name.upper()}_{field}"] = str(port)
        procs.append((name, env))
    for k, identity in enumerate(routers):
        if b is None:
            http, grpc, ops = (8000, 50052, 9100) if k == 0 else (8000 + k, 50052 + k, 9190 + k)
        else:
            first = b if k == 0 else b + 10 + 3 * len(identities) + 3 * (k - 1)
            http, grpc, ops = first, first + 1, first + 2
        env = {**base_env, **identity}
        if b is not None or k > 0:
            env.update({"OPSCALE_ROUTER_HTTP_PORT": str(http), "OPSCALE_ROUTER_GRPC_PORT": str(grpc),
                        "OPSCALE_ROUTER_OPS_PORT": str(ops)})
        procs.append(("router", env))
    prefix = "OPSCALE_NODE_AGENT_"
    for i, identity in enumerate(identities):
        env = {**base_env, **identity}
        grpc, http, ops = (50061 + i, 9201 + i, 9111 + i) if b is None else (b + 10 + 3 * i, b + 11 + 3 * i,
                                                                                b + 12 + 3 * i)
        env[f"{prefix}GRPC_PORT"] = str(grpc)
        env[f"{prefix}HTTP_PORT"] = str(http)
        env[f"{prefix}OPS_PORT"] = str(ops)
        env[f"{prefix}ADVERTISE_HOST"] = env.get(f"{prefix}ADVERTISE_HOST") or "127.0.0.1"
        procs.append(("node-agent", env))
    return procs


def run_stack(agents: int, config: Path | None, grace_s: float = 15.0, port_base: int | None = None,
              scenario: Path | None = None) -> int:
    """Run the local stack until SIGINT/SIGTERM or a child's death: `agents` default node-agents with
    `config`'s settings, or, with `scenario`, the scenario's routers and hosts with the settings it implies
    (opscale_services.scenario_stack) laid over `config`'s."""
    configure_logging("INFO")
    base = dict(os.environ)
    routers: Sequence[Mapping[str, str]] = ({},)
    agent_envs: int | list[dict[str, str]] = agents
    with tempfile.TemporaryDirectory(prefix="opscale-up-") as folder:
        if scenario is not None:
            from opscale.experiments.scenario import ScenarioError  # only `up --scenario` reads one

            try:
                config, routers, agent_envs = scenario_stack(scenario, config, Path(folder))
            except (ScenarioError, SettingsError) as exc:
                log.error("%s", exc)
                return 2
        # Validate every service's settings before starting anything, so a typo fails fast and clearly.
        for cls in SERVICE_SETTINGS.values():
            try:
                settings = load_settings(cls, config)
            except SettingsError as exc:
                log.error("%s", exc)
                return 2
            if isinstance(settings, RouterSettings) and not settings.auth.active:
                log.warning(AUTH_OFF_WARNING)
        if config is not None:
            base["OPSCALE_CONFIG"] = str(config)
        return _supervise(stack_environments(agent_envs, base, port_base, routers), grace_s)


def scenario_stack(scenario_path: Path, config: Path | None,
                    folder: Path) -> tuple[Path, list[dict[str, str]], list[dict[str, str]]]:
    """The settings file (the scenario's settings over `config`'s), router and agent identities of a
    scenario's stack. The file is written into `folder`, which lives as long as the stack."""
    from opscale.experiments.comparison import merge_overrides
    from opscale.experiments.scenario import load_scenario

    from opscale_services.scenario_stack import scenario_processes, scenario_settings

    scenario = load_scenario(scenario_path)
    merged = merge_overrides(read_config_file(config) if config is not None else {}, scenario_settings(scenario))
    path = folder / "settings.yaml"
    path.write_text(yaml.safe_dump(merged, sort_keys=False))
    processes = scenario_processes(scenario)
    log.info("scenario %s: %d router(s), %d host(s), policy %s", scenario.name,
             sum(p.service == "router" for p in processes), sum(p.service == "node-agent" for p in processes),
             scenario.policy)
    return (path, [p.env for p in processes if p.service == "router"],
            [p.env for p in processes if p.service == "node-agent"])


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How `up` restarts a child that died on its own: after `backoff_s`, doubling per consecutive death
    up to `max_backoff_s`, at most `max_restarts` times in a row; a child that ran `stable_s` before
    dying starts its count afresh."""

    max_restarts: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    stable_s: float = 60.0

    def delay_s(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2.0 ** (attempt - 1))


def service_command(service: str) -> list[str]:
    return [sys.executable, "-m", "opscale.cli", "serve", service]


@dataclass(slots=True)
class _Child:
    service: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0
    restarts: int = 0  # consecutive deaths so far
    restart_at_s: float = 0.0


def _supervise(processes: list[tuple[str, dict[str, str]]], grace_s: float, policy: RestartPolicy | None = None,
               stop: threading.Event | None = None,
               command: Callable[[str], list[str]] = service_command) -> int:
    """Run `processes` until SIGINT/SIGTERM (or `stop`), restarting any that dies on its own (see
    RestartPolicy); 0 after a clean stop, 1 when a child kept dying or had to be killed."""
    policy = policy or RestartPolicy()
    children = [_Child(service, env) for service, env in processes]
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    def start(child: _Child) -> None:
        child.proc = subprocess.Popen(command(child.service), env=child.env)
        child.started_s = time.monotonic()

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = ({sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
                if in_main_thread else {})
    try:
        for child in children:
            start(child)
            log.info("started %s (pid %d)", child.service, child.proc.pid)  # type: ignore[union-attr]
        exit_code = 0
        while not stopping and not (stop is not None and stop.is_set()):
            now = time.monotonic()
            for child in children:
                if child.proc is None:
                    if now >= child.restart_at_s:
                        start(child)
                        log.warning("restarted %s (pid %d, restart %d of %d)", child.service,
                                    child.proc.pid, child.restarts, policy.max_restarts)  # type: ignore[union-attr]
                    continue
                code = child.proc.poll()
                if code is None:
                    continue
                if now - child.started_s >= policy.stable_s:
                    child.restarts = 0  # it ran a good while: a new failure, not the same one again
                if child.restarts >= policy.max_restarts:
                    log.error("%s exited with code %s after %d restarts in a row; stopping the stack",
                              child.service, code, child.restarts)
                    stopping, exit_code = True, 1
                    break
                child.restarts += 1
                delay = policy.delay_s(child.restarts)
                log.warning("%s exited with code %s; restarting it in %.1f s (restart %d of %d)", child.service,
                            code, delay, child.restarts, policy.max_restarts)
                child.proc, child.restart_at_s = None, now + delay
            time.sleep(0.2)
        running = [(c.service, c.proc) for c in children if c.proc is not None]
        return _stop_all(running, grace_s) or exit_code
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
