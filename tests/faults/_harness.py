"""The fault suite's harness: a whole live stack as separate processes, on a NATS and a Redis of its own,
so a case can kill any part of it (SIGKILL, SIGTERM) and start it again; load replayed through the
router with the load generator (`opscale loadgen replay`'s `replay`) while the fault happens; and the
tally every case reports: sent, completed, failed by class, lost, and the time to recover.

Each service is `opscale serve SERVICE` with the environment `opscale up --scenario` would give it
(`stack_environments`, `scenario_stack`), so what is tested is what `up` runs; the harness starts them
itself rather than through `up` because `up` restarts a dead child, and a case must choose when.

A request is *lost* when the load generator sent it and it got neither an answer nor a clear error: it
timed out, its connection was cut without an SSE error event, its answer was not OpenAI's format, or it
is missing from the records.
Everything else that did not complete is failed with a class (HTTP status class, `stream_error` for an
SSE error event, `connect_error` for a refused connection).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from opscale.model import InstanceState
from opscale.reporting.latency_report import RequestStatus, read_latency_csv
from opscale.runtime.live.grpc_glue import NodeAgentClient
from opscale.runtime.live.local_servers import (
    LocalServer,
    free_port_block,
    start_nats,
    start_redis,
    terminate,
)
from opscale.runtime.live.settings import GrpcTlsSettings, load_settings
from opscale.traces import (
    LengthDistribution,
    StreamSpec,
    SyntheticWorkloadConfig,
    generate_requests,
    write_csv_trace,
)

from opscale_loadgen.clock import MonotonicClock
from opscale_loadgen.replay import ReplayConfig, ReplayResult, replay
from opscale_services.launcher import (
    SERVICE_SETTINGS,
    scenario_stack,
    secure_defaults,
    service_command,
    stack_environments,
)

ROOT = Path(__file__).resolve().parents[2]
MODEL = "Llama-3-8B"
REGION = "eu-west"
# Where each case's figures go when set (bench/faults.py sets it and prints the table from them)
OUT_ENV = "OPSCALE_FAULTS_OUT"

LOST_CLASSES = frozenset({RequestStatus.TIMEOUT, RequestStatus.STREAM_CUT, RequestStatus.CANCELLED,
                          RequestStatus.PROTOCOL_ERROR})

# Two one-GPU hosts and a deployment of two replicas: one instance on each, so a request whose host dies
# has somewhere else to go. Planner ticks and heartbeats are fast so that recovery is measured on the
# stack's reactions, not on its idle periods.
SCENARIO = f"""
name: faults
duration_s: 600
hosts: [{{region: {REGION}, sku: H100-80GB, gpus: 1, count: {{hosts}}}}]
deployments: [{{model: {MODEL}, sku: H100-80GB, tp: 1, min_replicas: 2, max_replicas: 2}}]
engine: {{max_num_seqs: 64}}
load_time_scale: 0.02
"""


@dataclass
class Figures:
    """What one fault case measured (a row of the README's table)."""

    case: str
    fault: str
    sent: int
    completed: int
    failed: dict[str, int]
    lost: int
    recovery_s: float | None
    recovery_what: str
    notes: dict[str, Any] = field(default_factory=dict)

    def write(self) -> None:
        out = os.environ.get(OUT_ENV)
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / f"{self.case}.json").write_text(json.dumps(asdict(self), indent=2) + "\n")


def tally(result: ReplayResult, case: str, fault: str, recovery_s: float | None, recovery_what: str,
          **notes: Any) -> Figures:
    """Count every request of a replay: completed, failed by class, lost (see the module docstring)."""
    rows = list(read_latency_csv(result.requests_path))
    statuses = Counter(r["status"] for r in rows)
    sent = result.counts.sent
    missing = sent - sum(n for s, n in statuses.items() if s != RequestStatus.NOT_SENT)
    lost = sum(statuses.get(s, 0) for s in LOST_CLASSES) + max(0, missing)
    failed = {s: n for s, n in sorted(statuses.items())
              if s not in LOST_CLASSES and s not in (RequestStatus.OK, RequestStatus.NOT_SENT)}
    errors = Counter(r["error"][:120] for r in rows if r["status"] not in (RequestStatus.OK, RequestStatus.NOT_SENT))
    figures = Figures(case, fault, sent, statuses.get(RequestStatus.OK, 0), failed, lost,
                      None if recovery_s is None else round(recovery_s, 2), recovery_what,
                      {**notes, "errors": dict(errors.most_common(5))})
    figures.write()
    return figures


def write_trace(path: Path, rps: float, requests: int, output_median: int = 24, seed: int = 11) -> Path:
    """A steady synthetic trace of `requests` at `rps` (streams long enough to be cut mid-way)."""
    config = SyntheticWorkloadConfig(
        seed=seed, duration_s=requests / rps * 2 + 10, amplitude=0.0,
        streams=(StreamSpec(model=MODEL, region=REGION, base_rps=rps),),
        prompt_tokens=LengthDistribution(median_tokens=64, sigma=0.5, max_tokens=256),
        output_tokens=LengthDistribution(median_tokens=output_median, sigma=0.3, max_tokens=output_median * 3))
    write_csv_trace(path, itertools.islice(generate_requests(config), requests))
    return path


@dataclass
class Service:
    name: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        handle = self.log_path.open("ab")
        self.proc = subprocess.Popen(service_command(self.kind), cwd=ROOT, env=self.env, stdout=handle,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        handle.close()

    @property
    def kind(self) -> str:
        return self.name.split("#")[0]

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is not None:
            terminate(self.proc, timeout_s)

    def log_count(self, text: str) -> int:
        """Lines of this service's log (all its runs) that contain `text`."""
        if not self.log_path.exists():
            return 0
        return sum(text in line for line in self.log_path.read_text(errors="replace").splitlines())

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class FaultStack:
    """NATS, Redis and every service of a two-host stack, each a process this harness may kill."""

    def __init__(self, folder: Path, namespace: str, hosts: int = 2, planners: int = 1,
                 env: dict[str, str] | None = None, agent_env: dict[int, dict[str, str]] | None = None) -> None:
        self.folder, self.namespace = folder, namespace
        self.nats_store = folder / "nats-store"
        self.nats: LocalServer = start_nats(store_dir=self.nats_store)
        self.redis: LocalServer = start_redis()
        self.base = free_port_block(64)
        scenario = folder / "scenario.yaml"
        scenario.write_text(SCENARIO.replace("{hosts}", str(hosts)))
        config, routers, agents = scenario_stack(scenario, None, folder)
        base_env = dict(os.environ, OPSCALE_CONFIG=str(config), OPSCALE_NATS_URL=self.nats.url,
                        OPSCALE_REDIS_URL=self.redis.url, OPSCALE_NAMESPACE=namespace,
                        OPSCALE_NODE_AGENT_HEARTBEAT_INTERVAL_S="0.5", OPSCALE_OPS_HOST="127.0.0.1",
                        OPSCALE_ROUTER_HTTP_HOST="127.0.0.1", OPSCALE_NODE_AGENT_GRPC_HOST="127.0.0.1",
                        OPSCALE_PLANNER_HOLDER_ID="planner-1", **(env or {}))
        # The control surface as `opscale up` runs it: gRPC over mTLS with a development CA made here
        loaded = {key: load_settings(cls, config) for key, cls in SERVICE_SETTINGS.items()}
        secured = secure_defaults(loaded, base_env, folder)
        base_env.update(secured)
        self.planner_tls = GrpcTlsSettings(ca_file=secured["OPSCALE_GRPC_TLS__CA_FILE"],
                                           cert_file=secured["OPSCALE_PLANNER_GRPC_TLS__CERT_FILE"],
                                           key_file=secured["OPSCALE_PLANNER_GRPC_TLS__KEY_FILE"])
        for i, extra in (agent_env or {}).items():
            agents[i] = {**agents[i], **extra}
        self.services: dict[str, Service] = {}
        counts: Counter[str] = Counter()
        for kind, service_env in stack_environments(agents, base_env, self.base, routers):
            counts[kind] += 1
            name = f"{kind}#{counts[kind]}"
            self.services[name] = Service(name, service_env, folder / f"{kind}-{counts[kind]}.log")
        for k in range(2, planners + 1):  # standbys: same settings, their own identity and ops port
            env_k = dict(self.services["planner#1"].env, OPSCALE_PLANNER_HOLDER_ID=f"planner-{k}",
                         OPSCALE_PLANNER_OPS_PORT=str(self.base + 60 - k))
            self.services[f"planner#{k}"] = Service(f"planner#{k}", env_k, folder / f"planner-{k}.log")

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.base}"

    def agent(self, i: int) -> Service:
        return self.services[f"node-agent#{i}"]

    def agent_grpc(self, i: int) -> str:
        return f"127.0.0.1:{self.agent(i).env['OPSCALE_NODE_AGENT_GRPC_PORT']}"

    def agent_http_port(self, i: int) -> int:
        return int(self.agent(i).env["OPSCALE_NODE_AGENT_HTTP_PORT"])

    def agent_ops(self, i: int) -> str:
        return f"http://127.0.0.1:{self.agent(i).env['OPSCALE_NODE_AGENT_OPS_PORT']}"

    def start(self) -> None:
        for service in self.services.values():
            service.start()

    def close(self) -> None:
        # SIGTERM to all at once, then wait for each: the stack stops in one grace period, not in seven
        running = [s for s in self.services.values() if s.proc is not None and s.proc.poll() is None]
        for service in running:
            service.signal(signal.SIGTERM)
        for service in running:
            service.stop()
        self.nats.stop()
        self.redis.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {s.name} ---\n{s.log_tail()}" for s in self.services.values())

    # -- faults on the servers ----------------------------------------------------------------

    def kill_nats(self) -> None:
        self.nats.kill()

    def restart_nats(self) -> None:
        self.nats = start_nats(self.nats.port, store_dir=self.nats_store)

    def kill_redis(self) -> None:
        self.redis.kill()

    def restart_redis(self) -> None:
        self.redis = start_redis(self.redis.port)

    # -- probes ---------------------------------------------------------------------------------

    async def ready_instances(self, agents: list[int]) -> dict[int, int]:
        """READY instances per agent (an agent that does not answer has none)."""
        counts: dict[int, int] = {}
        for i in agents:
            try:
                async with NodeAgentClient(self.agent_grpc(i), 1.0, tls=self.planner_tls) as client:
                    hb = await client.status()
                counts[i] = sum(inst.state == InstanceState.READY for inst in hb.instances)
            except Exception:  # noqa: BLE001 - an agent that is down or unreachable serves nothing
                counts[i] = 0
        return counts

    async def until(self, probe: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> float:
        """Poll `probe` until true; the seconds it took. Fails with the services' logs after `timeout_s`."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            for service in self.services.values():
                if service.proc is not None and service.proc.poll() not in (None, 0, -9, -15):
                    raise AssertionError(f"{service.name} died (code {service.proc.poll()}):\n{service.log_tail()}")
            if await probe():
                return time.monotonic() - start
            await asyncio.sleep(0.1)  # noqa: TID251 - polling live processes
        raise AssertionError(f"{what}: not within {timeout_s} s\n{self.logs()}")

    async def serving(self, timeout_s: float = 60.0, agents: int = 2, replicas: int = 2) -> float:
        """Wait until the deployment's replicas are READY (one a host) and the router answers a completion."""
        async def probe() -> bool:
            counts = await self.ready_instances(list(range(1, agents + 1)))
            return sum(counts.values()) >= replicas and await self.completes()
        return await self.until(probe, timeout_s, "the stack serving its replicas")

    async def heartbeat_heard(self, timeout_s: float = 2.0) -> bool:
        """True when a node-agent heartbeat goes through NATS within `timeout_s` (a plain subscription to
        the heartbeat subjects: the agents publish through the server again)."""
        import nats

        from opscale.runtime.live.bus import NatsBus
        from opscale.services import subjects

        try:
            client = await nats.connect(self.nats.url, connect_timeout=1, allow_reconnect=False)
        except Exception:  # noqa: BLE001 - the server is not back yet
            return False
        try:
            sub = await client.subscribe(NatsBus(self.namespace).subject(f"{subjects.PREFIX}.heartbeat.>"))
            try:
                await sub.next_msg(timeout=timeout_s)
            except nats.errors.TimeoutError:
                return False
            return True
        finally:
            await client.close()

    async def completes(self, timeout_s: float = 5.0) -> bool:
        """One small streamed completion through the router: True when it ends with [DONE]."""
        body = {"model": MODEL, "prompt": "probe", "max_tokens": 2, "stream": True}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session, \
                    session.post(f"{self.router_url}/v1/completions", json=body) as resp:
                return resp.status == 200 and b"[DONE]" in await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            return False


async def replay_with_fault(stack: FaultStack, trace: Path, out: Path, fault_at_s: float,
                            fault: Callable[[], Awaitable[None]], compress: float = 1.0,
                            timeout_s: float = 60.0) -> tuple[ReplayResult, float]:
    """Replay `trace` through the router; `fault_at_s` seconds in, run `fault` (alongside the replay).
    Returns the replay and the replay-clock time of the fault."""
    clock = MonotonicClock()
    config = ReplayConfig(trace=trace, url=stack.router_url, out=out, compress=compress, timeout_s=timeout_s,
                          drain_s=timeout_s + 5, progress=False)
    fired: list[float] = []

    async def inject() -> None:
        await asyncio.sleep(fault_at_s)  # noqa: TID251 - the fault happens mid-replay, in real time
        fired.append(clock.now())
        await fault()

    task = asyncio.create_task(inject())
    try:
        result = await replay(config, clock=clock)
    except BaseException:
        task.cancel()
        raise
    await task  # the fault's own steps (a restart) finish, and their errors surface
    assert fired, "the replay ended before the fault was due"
    return result, fired[0]


def first_success_after(result: ReplayResult, at_s: float) -> float | None:
    """Seconds from `at_s` (replay clock) to the end of the first request sent after it that completed."""
    ends = [float(r["finish_s"]) for r in read_latency_csv(result.requests_path)
            if r["status"] == RequestStatus.OK and r["sent_s"] and float(r["sent_s"]) >= at_s]
    return min(ends) - at_s if ends else None

