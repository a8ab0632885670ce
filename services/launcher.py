"""Starting live services: `opscale serve SERVICE` (one, in this process) and `opscale up` (the whole
local stack as child processes).

`up` serves the API without keys unless the settings configure some, and warns loudly when it does.
Its control surface is secured unless the settings say otherwise: every server binds 127.0.0.1 unless
the settings name another address, and without `grpc_tls` settings `up` makes a development CA and
certificates for the run (opscale.runtime.live.pki), so the planner commands the node-agents over mTLS.
`grpc_tls.insecure`, and NATS or Redis without credentials or TLS, are said loudly at start.
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

from opscale.exit_codes import BAD_INPUT_EXIT_CODE
from opscale.runtime.live.settings import (
    SERVICE_SETTINGS,
    LiveSettings,
    PlannerSettings,
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

CONTROL_PLAIN_WARNING = ("!!! CONTROL IS UNENCRYPTED: {what}. Anyone who reaches these ports can read or "
                         "forge control traffic. Fine for a laptop demo; see the README's Security section. !!!")

# Servers `up` binds to loopback unless the settings (file or environment) name an address.
LOOPBACK_BINDS = (("ops_host", None), ("http_host", "router"), ("grpc_host", "node_agent"))
# Services that speak gRPC, and the environment prefix that gives each its own certificate.
GRPC_IDENTITIES = {"planner": "planner", "router": "router", "node_agent": "node-agent"}

MODULES = {"router": "router", "aggregator": "aggregator", "forecaster": "forecaster", "planner": "planner",
           "node-agent": "node_agent"}


def serve_service(service: str, config: Path | None) -> None:
    """Run one service until SIGINT/SIGTERM. Raises ValueError (SettingsError) for bad settings."""
    key = MODULES[service]
    settings = load_settings(SERVICE_SETTINGS[key], config)
    configure_logging(settings.log_level)
    if isinstance(settings, RouterSettings) and settings.workers != 1 and settings.worker_index < 0:
        code = serve_router_workers(settings, config)
        if code:
            raise SystemExit(code)
        return
    main = importlib.import_module(f"opscale_services.{key}.main")
    getattr(main, "install_fast_loop", lambda: None)()  # the router uses uvloop when it is installed
    asyncio.run(main.run(settings))


def serve_router_workers(settings: RouterSettings, config: Path | None = None, grace_s: float | None = None) -> int:
    """Run `settings.workers` router processes on one host (opscale_services.router.workers) until
    SIGINT/SIGTERM, restarting one that dies as `up` does; its exit code."""
    from opscale_services.router.workers import WORKER_INDEX_ENV, worker_count

    n = worker_count(settings)
    log.info("router: %d worker processes sharing port %d (SO_REUSEPORT), ids %s-w0..w%d", n, settings.http_port,
             settings.core.router_id, n - 1)
    # every worker reads the same settings (file and environment) and adds its index; the router id is
    # fixed here so that all are named after this parent (a pid-based default would differ per child)
    env = dict(os.environ, OPSCALE_ROUTER_CORE__ROUTER_ID=settings.core.router_id)
    if config is not None:
        env["OPSCALE_CONFIG"] = str(config.resolve())
    workers = [("router", {**env, WORKER_INDEX_ENV: str(i)}) for i in range(n)]
    return _supervise(workers, grace_s if grace_s is not None else settings.stop_timeout_s + 5.0)


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
              scenario: Path | None = None, cloud: str | None = None) -> int:
    """Run the local stack until SIGINT/SIGTERM or a child's death: `agents` default node-agents with
    `config`'s settings, or, with `scenario`, the scenario's routers and hosts with the settings it implies
    (opscale_services.scenario_stack) laid over `config`'s. With `cloud` (local, k8s), `up` starts no
    node-agent itself: the planner acts on its plans' VM counts through that actuator, starting from
    `planner.cloud.initial_vms` (with `scenario`: the scenario's hosts)."""
    configure_logging("INFO")
    base = dict(os.environ)
    routers: Sequence[Mapping[str, str]] = ({},)
    agent_envs: int | list[dict[str, str]] = [] if cloud else agents
    with tempfile.TemporaryDirectory(prefix="opscale-up-") as folder:
        if scenario is not None:
            from opscale.experiments.scenario import ScenarioError  # only `up --scenario` reads one

            try:
                config, routers, agent_envs = scenario_stack(scenario, config, Path(folder), cloud)
            except (ScenarioError, SettingsError) as exc:
                log.error("%s", exc)
                return 2
        if cloud:
            base["OPSCALE_PLANNER_CLOUD__ACTUATOR"] = cloud  # laid over the file's planner.cloud section
        # Validate every service's settings before starting anything, so a typo fails fast and clearly.
        loaded: dict[str, LiveSettings] = {}
        for key, cls in SERVICE_SETTINGS.items():
            try:
                settings = load_settings(cls, config)
            except SettingsError as exc:
                log.error("%s", exc)
                return 2
            loaded[key] = settings
            if isinstance(settings, RouterSettings) and not settings.auth.active:
                log.warning(AUTH_OFF_WARNING)
            if cloud and isinstance(settings, PlannerSettings) and not settings.cloud.initial_vms:
                log.error("--cloud %s: the planner would start with no host, and it plans only once one has "
                          "reported: give planner.cloud.initial_vms in --config, or a --scenario whose hosts "
                          "are the first VMs", cloud)
                return 2
        secured = secure_defaults(loaded, base, Path(folder))
        if "OPSCALE_GRPC_TLS__CA_FILE" not in secured:
            for key in GRPC_IDENTITIES:  # the settings' own grpc_tls: complete, or insecure by name
                try:
                    loaded[key].grpc_tls.require(key)
                except SettingsError as exc:
                    log.error("%s", exc)
                    return 2
        base.update(secured)
        plain = plain_control(loaded)
        if plain:
            log.warning(CONTROL_PLAIN_WARNING.format(what="; ".join(plain)))
        if config is not None:
            base["OPSCALE_CONFIG"] = str(config)
        return _supervise(stack_environments(agent_envs, base, port_base, routers), grace_s)


def secure_defaults(loaded: Mapping[str, LiveSettings], env: Mapping[str, str], folder: Path) -> dict[str, str]:
    """Environment that binds every server to loopback unless the settings name an address, and, when
    no service has grpc_tls settings, gives the stack mTLS with a development CA made in `folder`."""
    out: dict[str, str] = {}
    for field, only in LOOPBACK_BINDS:
        for key, settings in loaded.items():
            if (only is None or key == only) and field in type(settings).model_fields \
                    and field not in settings.model_fields_set:
                out[f"OPSCALE_{key.upper()}_{field.upper()}"] = "127.0.0.1"
    configured = any(s.grpc_tls.insecure or s.grpc_tls.model_fields_set - {"allowed_clients", "server_name"}
                     for s in loaded.values())
    if not configured and not any(k.startswith("OPSCALE_") and "GRPC_TLS" in k for k in env):
        from opscale.runtime.live.pki import init_dev_pki  # only a run that needs certificates makes them

        issued = init_dev_pki(folder / "pki", identities=tuple(GRPC_IDENTITIES.values()))
        out["OPSCALE_GRPC_TLS__CA_FILE"] = str(issued.ca_cert)
        for key, identity in GRPC_IDENTITIES.items():
            cert, private = issued.certs[identity]
            out[f"OPSCALE_{key.upper()}_GRPC_TLS__CERT_FILE"] = str(cert)
            out[f"OPSCALE_{key.upper()}_GRPC_TLS__KEY_FILE"] = str(private)
        log.info("control: gRPC over mTLS with a development CA made for this run (%s); only the planner's "
                 "certificate may command the node-agents", folder / "pki")
    return out


def plain_control(loaded: Mapping[str, LiveSettings]) -> list[str]:
    """What of the stack's control traffic goes unencrypted or unauthenticated, in words."""
    any_settings = next(iter(loaded.values()))
    plain: list[str] = []
    if any(s.grpc_tls.insecure for s in loaded.values()):
        plain.append("gRPC planner -> node-agents in plain text, no client certificates (grpc_tls.insecure)")
    nats = any_settings.nats_auth
    if nats.tls_ca_file is None and not any_settings.nats_url.startswith("tls://"):
        plain.append("NATS without TLS" + ("" if nats.user or nats.token or nats.creds_file else
                                           " and without credentials"))
    redis = any_settings.redis_auth
    if not any_settings.redis_url.startswith("rediss://"):
        plain.append("Redis without TLS" + ("" if redis.password is not None or "@" in any_settings.redis_url
                                            else " and without a password"))
    return plain


def scenario_stack(scenario_path: Path, config: Path | None, folder: Path,
                   cloud: str | None = None) -> tuple[Path, list[dict[str, str]], list[dict[str, str]]]:
    """The settings file (the scenario's settings over `config`'s), router and agent identities of a
    scenario's stack. The file is written into `folder`, which lives as long as the stack. With `cloud`,
    no agent: the hosts are the planner's first VMs (opscale_services.scenario_stack.scenario_cloud)."""
    from opscale.experiments.comparison import merge_overrides
    from opscale.experiments.scenario import load_scenario

    from opscale_services.scenario_stack import scenario_cloud, scenario_processes, scenario_settings

    scenario = load_scenario(scenario_path)
    settings = scenario_settings(scenario)
    if cloud:
        settings["planner"]["cloud"] = scenario_cloud(scenario, cloud)
    merged = merge_overrides(read_config_file(config) if config is not None else {}, settings)
    path = folder / "settings.yaml"
    path.write_text(yaml.safe_dump(merged, sort_keys=False))
    processes = scenario_processes(scenario)
    agents = [] if cloud else [p.env for p in processes if p.service == "node-agent"]
    log.info("scenario %s: %d router(s), %d host(s)%s, policy %s", scenario.name,
             sum(p.service == "router" for p in processes), sum(p.service == "node-agent" for p in processes),
             f" as the first VMs of the {cloud} actuator" if cloud else "", scenario.policy)
    return path, [p.env for p in processes if p.service == "router"], agents


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
                if code == BAD_INPUT_EXIT_CODE:
                    # its settings were refused: a restart would refuse them again
                    log.error("%s refused its settings (exit code %d, the error above); stopping the stack",
                              child.service, code)
                    stopping, exit_code = True, 1
                    break
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
