"""What the opscale router adds to a streaming request, and how much load it carries, against vllm-router.

Three processes share the machine, as they would share a host: a fixed-latency streaming upstream
(an OpenAI-compatible server on raw asyncio protocols, bench/_loopback_http.py: first token after
`--token-gap-ms`, then `--tokens` tokens `--token-gap-ms` apart), the router under test, and an open-loop
load generator (a new process per step, same module). Both measuring tools are written to cost little
per request and per token (keep-alive, chunked SSE, no body parsing beyond the event delimiters), so that
at the measured rate they are not what is measured: the `direct` row shows their own ceiling. The same
run measures, against the same upstream:

  direct       the load generator hits the upstream itself (the baseline)
  opscale      through opscale's router: its HTTP API, RouterCore and pooled upstream client, started as
               a process; the upstream is registered by feeding the core one agent heartbeat directly
               (no node-agent, NATS or Redis: request records go to an in-memory bus that counts them)
  vllm-router  through vllm-router (PyPI `vllm-router`), installed on first use into its own venv under
               `--venv-dir` (default .bench-venvs/vllm-router); skipped with a note when it cannot be

The load is open loop: send times are fixed in advance (`i / rate`), and TTFT and end-to-end latency
count from each request's scheduled send time, so a slow target cannot slow the offered load (no
coordinated omission); `send_lag_p99_ms` says how late the generator itself was.

Made to be trusted on a shared machine, where other work comes and goes:
- the targets are measured in rounds at `--rate`, one step each per round in a rotated order, so a burst of
  load from elsewhere falls on each alike; the added TTFT (through a router minus direct) is given per
  round against the same round's direct step, and pooled over the rounds with a 95 % bootstrap interval;
- the headline is CPU per request: the server process's time on a CPU over a step (the scheduler's
  nanoseconds, /proc/TID/schedstat summed over its threads; clock ticks, 10 ms each, where a thread
  ended during the step), divided by the requests it completed, the figure least moved by what else
  runs, with its user share (from the ticks; the system share, loopback reads and writes, is much the
  same for any router); the opscale/vllm-router ratio is taken per round and its median reported with a
  95 % bootstrap interval over the rounds;
- `--baseline REF` adds opscale's router at another git revision to the same rounds, so a change to the
  router is measured against what it replaces under the same conditions;
- the ramp (`RAMP_RPS`) runs direct first at each rate, and a router's step there is sustained only when it
  has no errors, completes >= 95 %, kept the schedule, and its TTFT p99 is within `--sustained-factor` of
  direct's at the same rate (or `--sustained-floor-ms` above it); a step that fails is run again before the
  router leaves the ramp; where direct itself fails, the load tools have met their own ceiling, the ramp
  stops, and a router still sustaining is reported censored (`ramp.censored`); direct is then run at twice
  the highest rate a router sustained (`tool_headroom_ok`), so a router's limit is its own, not the tools'.
- a router's at-rate CPU counts only in rounds where it kept up (TTFT p50 within `--kept-up-p50-ms` of
  direct's): one that fell behind reads several tokens a read and looks cheaper than it is.

opscale's router is built as services/router/main.py builds it: Prometheus request metrics and tenant
accounting, the HTTP limits of its settings, and API keys on (`--no-auth` turns them off). The router
under test and vllm-router are pinned with taskset to one CPU, the upstream and load generators to the
other; the JSON states the pinning and the load average before and after. A full run takes a few minutes.

    python bench/router_proxy.py [--rate 500] [--rounds 4] [--step-s 2] [--no-ramp] [--wrk]

`--profile-out PATH` runs opscale's router under cProfile (for finding hot spots; its latencies are
then not comparable). The last line of output is one JSON object (with the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402
from _revision import commit_of, python_path, unpack  # noqa: E402

from opscale.runtime.live.local_servers import free_port, terminate  # noqa: E402

MODEL = "bench-model"
# `--auth`: the opscale router asks for this key (one tenant, limits far above any rate measured, so the
# request and token buckets run on every request without refusing one) and the load generator sends it.
BENCH_KEY = "sk-bench-0123456789abcdef"
# the target name of `--baseline`: opscale's router at another revision
BASELINE = "opscale_baseline"
BENCH_KEY_SPEC = {"id": "bench", "secret": BENCH_KEY, "requests_per_min": 1e9, "tokens_per_min": 1e12}
ROOT = Path(__file__).resolve().parents[1]
RAMP_RPS = (250, 500, 750, 1000, 1250, 1500, 2000, 2500, 3000, 4000)
VLLM_ROUTER_VERSION = "0.1.17"


def install_loop() -> str:
    """uvloop when installed (an optional speed-up for the router and load processes), else asyncio's."""
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return "asyncio"
    uvloop.install()
    return "uvloop"


# -- the upstream: a fixed-latency streaming OpenAI-compatible server ------------------------------


def run_upstream(port: int, tokens: int, gap_s: float) -> None:
    from _loopback_http import UpstreamAnswer, serve_upstream

    install_loop()

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await serve_upstream(port, UpstreamAnswer(MODEL, tokens, gap_s), stop)

    asyncio.run(main())


# -- the opscale router, fed one heartbeat -----------------------------------------------------------


class CountingBus:
    """Stands in for NATS in this benchmark: counts what the router publishes (records, load reports)."""

    def __init__(self) -> None:
        self.published = 0

    async def publish(self, subject: str, event: object, msg_id: str | None = None) -> None:
        self.published += len(event) if isinstance(event, tuple) else 1


def run_opscale(port: int, upstream_url: str, profile_out: str | None = None, auth: bool = False) -> None:
    """The opscale router process. With `profile_out`, it runs under cProfile and writes the stats
    there when it stops (`python -m pstats PATH`, or `--profile-out` on the command line). With `auth`,
    it asks for BENCH_KEY."""
    loop_name = install_loop()

    async def main() -> None:
        from prometheus_client import CollectorRegistry

        from opscale.model import InstanceState, InstanceStatus, Role
        from opscale.routing.tenants import ApiKeySpec, KeyTable
        from opscale.runtime.clock import WallClock
        from opscale.runtime.live.host import CoreHost
        from opscale.runtime.live.settings import RouterSettings
        from opscale.runtime.live.telemetry import setup_tracing
        from opscale.services.events import AgentHeartbeat
        from opscale.services.router import RouterConfig, RouterCore

        from opscale_services.common import configure_logging
        from opscale_services.router.api import build_router_app, serve_router
        from opscale_services.router.auth import TenantGate
        from opscale_services.router.backend import LiveRouterBackend
        from opscale_services.router.main import freeze_startup_heap
        from opscale_services.router.metrics import RouterMetrics
        from opscale_services.router.records import RecordBatcher
        from opscale_services.router.upstream import UpstreamClient, UpstreamConfig

        # built as services/router/main.py builds it (its settings' defaults): one Prometheus registry for
        # records, tenants and request metrics, the HTTP limits, the pooled upstream client's timeouts, and
        # the tracer provider LiveProcess makes (spans created so trace context flows, none exported)
        settings = RouterSettings()  # OPSCALE_ROUTER_* variables apply, as they do to the service
        configure_logging(settings.log_level)  # as the launcher does: INFO, to this process's stderr file
        tracer_provider = setup_tracing("router", settings.tracing_exporter)
        clock = WallClock()
        bus = CountingBus()
        registry = CollectorRegistry()
        core = RouterCore(RouterConfig(region="local", models=[MODEL]))
        upstream = UpstreamClient(UpstreamConfig(connect_timeout_s=settings.upstream_connect_timeout_s,
                                                 idle_timeout_s=settings.upstream_read_timeout_s))
        await upstream.start()
        records = RecordBatcher(bus, registry, batch_max=settings.records_batch_max)  # type: ignore[arg-type]
        gate = (TenantGate(KeyTable([ApiKeySpec.model_validate(BENCH_KEY_SPEC)], clock.now_s()), clock.now_s,
                           registry) if auth else None)
        metrics = RouterMetrics(registry)
        backend = LiveRouterBackend(core, clock, upstream, records, "local", tracer_provider,
                                    on_finished=gate.settle if gate is not None else None, metrics=metrics,
                                    spans=settings.tracing_exporter != "none")
        host = CoreHost(core, bus, None, clock, on_action=backend.on_action)  # type: ignore[arg-type]
        backend.host = host
        status = InstanceStatus("upstream-0", MODEL, "H100-80GB", 1, Role.UNIFIED, InstanceState.READY,
                                endpoint=upstream_url)
        await host.handle(AgentHeartbeat("bench-agent", "local", "H100-80GB", 8, "bench:0", 1, clock.now_s(),
                                         (status,)))
        limits = settings.http_limits
        server = await serve_router(build_router_app(backend, gate=gate, metrics=metrics), limits, "127.0.0.1", port,
                                    shutdown_timeout_s=settings.stop_timeout_s, access_log=settings.access_log)
        freeze_startup_heap()  # as main.run does once the router is up
        print(json.dumps({"ready": True, "loop": loop_name}), flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            # the live router's supervised loops: core tick (agent timeout keeps the heartbeat alive
            # here by re-feeding it) and record flushing
            await host.handle(AgentHeartbeat("bench-agent", "local", "H100-80GB", 8, "bench:0", 1, clock.now_s(),
                                             (status,)))
            await host.tick()
            await records.flush()
        await server.close()
        await upstream.close()

    if not profile_out:
        asyncio.run(main())
        return
    import cProfile

    with cProfile.Profile() as profiler:
        asyncio.run(main())
    profiler.dump_stats(profile_out)


# -- the open-loop load generator ----------------------------------------------------------------


def run_load(url: str, rate: float, duration_s: float, tokens: int, result_file: str, auth: bool = False) -> None:
    from urllib.parse import urlsplit

    from _loopback_http import OpenLoopLoad

    install_loop()
    target = urlsplit(url)
    body = json.dumps({"model": MODEL, "prompt": "hello", "max_tokens": tokens, "stream": True}).encode()
    load = OpenLoopLoad(target.hostname or "127.0.0.1", target.port or 80, "/v1/completions", body,
                        headers={"Authorization": f"Bearer {BENCH_KEY}"} if auth else None)
    result = asyncio.run(load.run(rate, duration_s))
    Path(result_file).write_text(json.dumps(result.to_json()))


def _pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# -- the orchestrator ----------------------------------------------------------------------------


def spawn(*args: str, env: dict[str, str] | None = None, cpus: str | None = None,
          script: Path | None = None) -> subprocess.Popen[str]:
    """This module (or `script`, another tree's copy of it) run in a role, in a process of its own."""
    # stderr to a file, not a pipe: a server logging under overload must never block on a full pipe
    return subprocess.Popen(pinned([sys.executable, str(script or __file__), *args], cpus), stdout=subprocess.PIPE,
                            stderr=tempfile.TemporaryFile(), text=True, env=env,
                            cwd=script.parent.parent if script else None)


def wait_http(url: str, timeout_s: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def load_step(url: str, rate: float, duration_s: float, tokens: int, procs: int,
              cpus: str | None, auth: bool = False) -> tuple[dict[str, Any], list[float]]:
    """One open-loop step from `procs` load processes, each offering rate/procs (so the Python client is
    not the bottleneck), pinned to `cpus` when given; their samples are merged. With `auth` they send
    BENCH_KEY. Returns the step's summary and its TTFT samples (seconds)."""
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        # each process writes its samples to a file: a pipe is no place for a few hundred KiB of JSON
        results = [Path(tmp) / f"load-{i}.json" for i in range(procs)]
        running = [subprocess.Popen(pinned([sys.executable, __file__, "--role", "load", "--url", url, "--rate",
                                            str(rate / procs), "--step-s", str(duration_s), "--tokens", str(tokens),
                                            "--result-file", str(result), *(["--auth"] if auth else [])], cpus),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                   for result in results]
        for proc, result in zip(running, results, strict=True):
            _, err = proc.communicate(timeout=duration_s + 120)
            if proc.returncode != 0:
                raise RuntimeError(f"load generator failed: {err[-2000:]}")
            parts.append(json.loads(result.read_text()))
    ttfts = sorted(t for p in parts for t in p["ttft_s"])
    e2es = sorted(t for p in parts for t in p["e2e_s"])
    errors: dict[str, int] = {}
    for p in parts:
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v

    def ms(values: list[float], q: float) -> float | None:
        return round(_pct(values, q) * 1e3, 3) if values else None

    events: dict[str, int] = {}
    for p in parts:
        for k, v in p["events_per_response"].items():
            events[k] = events.get(k, 0) + v
    return {"offered_rps": rate, "load_procs": procs, "sent": sum(p["sent"] for p in parts),
            "completed": sum(p["completed"] for p in parts), "errors": errors,
            "send_s": max(p["send_s"] for p in parts), "wall_s": max(p["wall_s"] for p in parts),
            "send_lag_p99_ms": max(p["send_lag_p99_ms"] for p in parts),
            "max_send_lag_ms": max(p["max_send_lag_ms"] for p in parts),
            "connections_opened": sum(p["connections_opened"] for p in parts),
            "events_per_response": events,
            "ttft_p50_ms": ms(ttfts, 0.5), "ttft_p99_ms": ms(ttfts, 0.99),
            "ttft_mean_ms": round(statistics.fmean(ttfts) * 1e3, 3) if ttfts else None,
            "e2e_p50_ms": ms(e2es, 0.5), "e2e_p99_ms": ms(e2es, 0.99)}, ttfts


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    """`cmd` under `taskset -c cpus` when pinning is on and taskset exists."""
    return ["taskset", "-c", cpus, *cmd] if cpus and shutil.which("taskset") else cmd


def wrk_capacity(url: str, tokens: int, duration_s: float, connections: int, cpus: str | None,
                 auth: bool = False) -> dict[str, Any]:
    """Closed-loop capacity with wrk (compiled, so the client costs little): `connections` streams kept
    busy for `duration_s`; requests/s completed and wrk's latency percentiles of whole responses."""
    exe = shutil.which("wrk")
    if exe is None:
        return {"skipped": "wrk not installed (apt-get install wrk)"}
    body = json.dumps({"model": MODEL, "prompt": "hello", "max_tokens": tokens, "stream": True})
    script = ROOT / ".bench-venvs" / "wrk_post.lua"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      + (f'wrk.headers["Authorization"] = "Bearer {BENCH_KEY}"\n' if auth else "") +
                      f"wrk.body = {json.dumps(body)}\n"
                      "done = function(summary, latency, requests)\n"
                      "  io.write(string.format('WRK %d %d %d %d %d %d\\n', summary.requests, summary.duration,\n"
                      "    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,\n"
                      "    summary.errors.status, latency:percentile(50), latency:percentile(99)))\nend\n")
    cmd = pinned([exe, "-t1", f"-c{connections}", f"-d{duration_s:g}s", "-s", str(script), f"{url}/v1/completions"],
                 cpus)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRK ")), None)
    if line is None:
        return {"skipped": f"wrk failed: {proc.stderr[-500:]}"}
    requests, duration_us, io_errors, status_errors, p50_us, p99_us = (int(x) for x in line.split()[1:])
    return {"connections": connections, "duration_s": duration_s,
            "rps": round(requests / (duration_us / 1e6), 1), "io_errors": io_errors, "status_errors": status_errors,
            "e2e_p50_ms": round(p50_us / 1e3, 3), "e2e_p99_ms": round(p99_us / 1e3, 3)}


def sustained(step: dict[str, Any], direct: dict[str, Any] | None, factor: float, floor_ms: float,
              tool_ttft_p99_ms: float = 50.0) -> bool:
    """A step is sustained when nothing failed, nearly all of it completed, the load tool kept its
    schedule, and its TTFT p99 is within `factor` times direct's at the same rate (or `floor_ms` above it,
    whichever is looser: a direct p99 of 2 ms would otherwise leave no room for a router's queueing).
    Direct itself (`direct` None) must keep its TTFT p99 within `tool_ttft_p99_ms`: past that the load
    tools and the upstream are what is measured, and no yardstick is left."""
    if step["errors"] or step["completed"] < 0.95 * step["sent"] or step["ttft_p99_ms"] is None:
        return False
    if step["send_s"] > 1.05 * step["sent"] / step["offered_rps"] + 0.2:
        return False  # the load tool fell behind its own schedule: the rate was not offered
    if direct is None:
        return bool(step["ttft_p99_ms"] <= tool_ttft_p99_ms)
    return bool(step["ttft_p99_ms"] <= max(factor * direct["ttft_p99_ms"], direct["ttft_p99_ms"] + floor_ms))


def cpu_s(pid: int) -> tuple[float, float] | None:
    """User and system CPU seconds a process has used (Linux /proc), None where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _tree(pid: int) -> list[int]:
    """A process and its children's processes, recursively (a router that forks workers)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            pids.extend(_tree(int(child)))
    return pids


def process_tree_cpu_s(pid: int) -> tuple[float, float] | None:
    """User and system CPU seconds of a process and its children (vllm-router is one process with threads,
    which /proc/PID/stat already sums; a process tree is summed here when a router forks workers)."""
    total = cpu_s(pid)
    if total is None:
        return None
    for child in _tree(pid)[1:]:
        user, system = cpu_s(child) or (0.0, 0.0)
        total = (total[0] + user, total[1] + system)
    return total


def on_cpu_ns(pid: int) -> dict[int, int]:
    """Nanoseconds on a CPU of each thread of a process and its children (/proc/TID/schedstat, the
    scheduler's own count): /proc/PID/stat counts in clock ticks, 10 ms, a few percent of a step's CPU."""
    threads: dict[int, int] = {}
    for proc in _tree(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{proc}/task").iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    threads[int(task.name)] = int((task / "schedstat").read_text().split()[0])
    return threads


def cpu_between_s(before: dict[int, int], after: dict[int, int]) -> float | None:
    """CPU seconds between two `on_cpu_ns` readings; None when a thread ended in between (its time
    left the sum), where the caller falls back to the clock ticks."""
    if not before or not set(before) <= set(after):
        return None
    return sum(after[tid] - before.get(tid, 0) for tid in after) / 1e9


def step_cpu_s(ticks: tuple[tuple[float, float], tuple[float, float]],
               threads: tuple[dict[int, int], dict[int, int]]) -> tuple[float, str]:
    """A step's CPU seconds from readings before and after it: the scheduler's nanoseconds where every
    thread lived through the step, else the user and system clock ticks; and which it was."""
    precise = cpu_between_s(*threads)
    if precise is not None:
        return precise, "schedstat"
    before, after = ticks
    return sum(after) - sum(before), "clock_ticks"


class Target:
    """One way to reach the upstream: its URL, the server process whose CPU is counted (none for direct),
    and whether it asks for the API key."""

    def __init__(self, name: str, url: str, pid: int | None, auth: bool) -> None:
        self.name, self.url, self.pid, self.auth = name, url, pid, auth

    def step(self, rate: float, args: argparse.Namespace) -> tuple[dict[str, Any], list[float]]:
        """One open-loop step at `rate`: its summary (with the server's CPU per completed request) and
        its TTFT samples (seconds)."""
        before = process_tree_cpu_s(self.pid) if self.pid else None
        threads_before = on_cpu_ns(self.pid) if self.pid else {}
        step, ttfts = load_step(self.url, rate, args.step_s, args.tokens, args.load_procs, args.cpu_load, self.auth)
        threads_after = on_cpu_ns(self.pid) if self.pid else {}
        after = process_tree_cpu_s(self.pid) if self.pid else None
        if before is not None and after is not None and step["completed"]:
            user = (after[0] - before[0]) * 1e3 / step["completed"]  # the user/system split is only in ticks
            spent, step["cpu_counted_by"] = step_cpu_s((before, after), (threads_before, threads_after))
            step["server_cpu_ms_per_request"] = round(spent * 1e3 / step["completed"], 4)
            # the kernel's share (system calls, loopback TCP) is much the same for any router; the user
            # share is the router's own code
            step["server_user_ms_per_request"] = round(user, 4)
        return step, ttfts


def rotated(targets: list[Target], round_index: int) -> list[Target]:
    """The targets in a different order each round, so no target always runs first or last (a burst of
    load from elsewhere, or a warming cache, falls on each alike over the rounds)."""
    k = round_index % len(targets)
    order = targets[k:] + targets[:k]
    return order if round_index % 2 == 0 else order[::-1]


def bootstrap_added_ms(through: list[float], direct: list[float], q: float, resamples: int,
                       seed: int) -> dict[str, float]:
    """The q-quantile of `through` minus that of `direct` (ms), with a 95 % bootstrap interval: both
    samples resampled with replacement, the difference recomputed `resamples` times."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a, b = np.asarray(through), np.asarray(direct)
    diffs = np.empty(resamples)
    batch = max(1, 2_000_000 // max(len(a), len(b)))  # bounded memory per batch of resamples
    for start in range(0, resamples, batch):
        n = min(batch, resamples - start)
        qa = np.quantile(a[rng.integers(0, len(a), (n, len(a)))], q, axis=1)
        qb = np.quantile(b[rng.integers(0, len(b), (n, len(b)))], q, axis=1)
        diffs[start:start + n] = qa - qb
    low, high = np.quantile(diffs, [0.025, 0.975])
    return {"estimate": round(float(np.quantile(a, q) - np.quantile(b, q)) * 1e3, 3),
            "ci95_low": round(float(low) * 1e3, 3), "ci95_high": round(float(high) * 1e3, 3)}


def bootstrap_median(values: list[float], resamples: int, seed: int) -> dict[str, float] | None:
    """The median of `values` (one per round) with a 95 % bootstrap interval over the rounds; None for
    fewer than three, where an interval says nothing."""
    if len(values) < 3:
        return None
    import numpy as np

    rng = np.random.default_rng(seed)
    a = np.asarray(values)
    medians = np.median(a[rng.integers(0, len(a), (resamples, len(a)))], axis=1)
    low, high = np.quantile(medians, [0.025, 0.975])
    return {"ci95_low": round(float(low), 4), "ci95_high": round(float(high), 4)}


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def at_rate_rounds(targets: list[Target], args: argparse.Namespace) -> dict[str, Any]:
    """`--rounds` rounds at `--rate`, each one step per target in a rotated order. Per target: every
    step's summary, the medians over rounds; added TTFT against direct both per round (the same round's
    direct step) and over all rounds pooled, with a bootstrap interval; CPU per request per round."""
    steps: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    for r in range(args.rounds):
        for target in rotated(targets, r):
            step, ttfts = target.step(args.rate, args)
            step["round"] = r
            steps[target.name].append(step)
            samples[target.name].extend(ttfts)
            print(f"round {r} {target.name}: ttft p50 {step['ttft_p50_ms']} p99 {step['ttft_p99_ms']} ms, "
                  f"cpu/req {step.get('server_cpu_ms_per_request')} ms, errors {step['errors']}",
                  file=sys.stderr, flush=True)
        direct_step = steps["direct"][-1]
        for target in targets:
            # kept up: no errors, and its TTFT p50 within --kept-up-p50-ms of this round's direct step. A
            # router that fell behind reads several tokens at once and so spends less CPU per request: its
            # CPU figure is left out of the ratio, not taken as a saving. (The p50, not the p99: on a shared
            # machine one scheduling stall moves a p99 without the router falling behind.)
            mine = steps[target.name][-1]
            mine["kept_up"] = bool(not mine["errors"] and mine["completed"] >= 0.95 * mine["sent"]
                                   and mine["ttft_p50_ms"] is not None and direct_step["ttft_p50_ms"] is not None
                                   and mine["ttft_p50_ms"] <= direct_step["ttft_p50_ms"] + args.kept_up_p50_ms)
    out: dict[str, Any] = {}
    for target in targets:
        mine = steps[target.name]
        row: dict[str, Any] = {
            "steps": mine,
            "ttft_p50_ms_median": _median([s["ttft_p50_ms"] for s in mine if s["ttft_p50_ms"] is not None]),
            "ttft_p99_ms_median": _median([s["ttft_p99_ms"] for s in mine if s["ttft_p99_ms"] is not None]),
            "errors": sum(sum(s["errors"].values()) for s in mine),
        }
        cpu = [s["server_cpu_ms_per_request"] for s in mine if "server_cpu_ms_per_request" in s and s["kept_up"]]
        row["rounds_kept_up"] = sum(s["kept_up"] for s in mine)
        if cpu:
            row["cpu_ms_per_request"] = {"median": _median(cpu), "min": min(cpu), "max": max(cpu),
                                         "rounds": len(cpu)}
            row["user_cpu_ms_per_request_median"] = _median(
                [s["server_user_ms_per_request"] for s in mine if "server_user_ms_per_request" in s and s["kept_up"]])
        if target.name != "direct" and samples[target.name] and samples["direct"]:
            per_round = {q: [s[f"ttft_{q}_ms"] - d[f"ttft_{q}_ms"] for s, d in zip(mine, steps["direct"], strict=True)
                             if s[f"ttft_{q}_ms"] is not None and d[f"ttft_{q}_ms"] is not None]
                         for q in ("p50", "p99")}
            row["added_ttft_ms"] = {
                f"{q}_per_round": [round(x, 3) for x in values] for q, values in per_round.items()}
            row["added_ttft_ms"].update({f"{q}_per_round_median": _median(values) for q, values in per_round.items()})
            row["added_ttft_ms"]["p50_pooled"] = bootstrap_added_ms(samples[target.name], samples["direct"], 0.5,
                                                                    args.bootstrap, seed=1)
            row["added_ttft_ms"]["p99_pooled"] = bootstrap_added_ms(samples[target.name], samples["direct"], 0.99,
                                                                    args.bootstrap, seed=2)
        out[target.name] = row
    return out


def ramp(targets: list[Target], args: argparse.Namespace) -> dict[str, Any]:
    """The highest rate each target sustains. Rates rise through RAMP_RPS; at each, direct runs first (its
    TTFT p99 is the yardstick), then each target still in the ramp, in a rotated order. A step that is not
    sustained is run again before the target leaves the ramp (one bad step on a shared machine is not a
    ceiling). Where direct itself fails, the load tools (and the upstream) have reached their own ceiling:
    the ramp stops there, and a target still sustaining is reported as at least the last rate, censored."""
    direct = next(t for t in targets if t.name == "direct")
    routers = [t for t in targets if t.name not in ("direct", BASELINE)]
    in_ramp = {t.name for t in routers}
    best: dict[str, float] = {t.name: 0.0 for t in [direct, *routers]}
    log: list[dict[str, Any]] = []
    tool_ceiling: float | None = None
    for i, rate in enumerate(r for r in RAMP_RPS if r <= args.ramp_max_rps):
        yard, _ = direct.step(rate, args)
        if not sustained(yard, None, args.sustained_factor, args.sustained_floor_ms, args.tool_ttft_p99_ms):
            yard, _ = direct.step(rate, args)  # confirm before calling it the tools' ceiling
        log.append({"target": "direct", "rate": rate, **_brief(yard)})
        if not sustained(yard, None, args.sustained_factor, args.sustained_floor_ms, args.tool_ttft_p99_ms):
            tool_ceiling = float(rate)
            break
        best["direct"] = float(rate)
        for target in rotated([t for t in routers if t.name in in_ramp], i):
            step, _ = target.step(rate, args)
            ok = sustained(step, yard, args.sustained_factor, args.sustained_floor_ms)
            entry = {"target": target.name, "rate": rate, **_brief(step), "sustained": ok}
            if not ok:
                again, _ = target.step(rate, args)
                ok = sustained(again, yard, args.sustained_factor, args.sustained_floor_ms)
                entry["confirmation"] = {**_brief(again), "sustained": ok}
            entry["sustained"] = ok
            log.append(entry)
            if ok:
                best[target.name] = float(rate)
            else:
                in_ramp.discard(target.name)
        print(f"ramp {rate} rps: direct p99 {yard['ttft_p99_ms']} ms; still sustaining: {sorted(in_ramp)}",
              file=sys.stderr, flush=True)
        if not in_ramp:
            break
    # The tools' own ceiling must sit well above the routers' limits for those to be the routers': direct
    # is run (and confirmed) at twice the highest rate a router sustained, unless it already was
    highest = max((best[t.name] for t in routers), default=0.0)
    headroom: dict[str, Any] = {"rate": 2 * highest}
    if tool_ceiling is not None and tool_ceiling <= 2 * highest:
        headroom["sustained"] = False
    elif best["direct"] >= 2 * highest:
        headroom["sustained"] = True
    else:
        check, _ = direct.step(2 * highest, args)
        if not sustained(check, None, args.sustained_factor, args.sustained_floor_ms, args.tool_ttft_p99_ms):
            check, _ = direct.step(2 * highest, args)
        headroom.update(_brief(check))
        headroom["sustained"] = sustained(check, None, args.sustained_factor, args.sustained_floor_ms,
                                          args.tool_ttft_p99_ms)
    return {
        "max_sustained_rps": best,
        # a router still sustaining where the ramp ended was not measured to its limit
        "censored": sorted(in_ramp),
        "load_tool_ceiling_rps": tool_ceiling,
        "direct_at_twice_the_routers_max": headroom,
        "tool_headroom_ok": headroom["sustained"],
        "steps": log,
    }


def _brief(step: dict[str, Any]) -> dict[str, Any]:
    return {k: step.get(k) for k in ("sent", "completed", "errors", "ttft_p50_ms", "ttft_p99_ms", "send_s",
                                     "send_lag_p99_ms", "server_cpu_ms_per_request")}


def vllm_router_bin(venv: Path) -> tuple[Path | None, str]:
    exe = venv / "bin" / "vllm-router"
    if exe.exists():
        return exe, "found"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"vllm-router=={VLLM_ROUTER_VERSION}"],
                       check=True, capture_output=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as exc:
        detail = (exc.stderr.decode(errors="replace").strip()[-300:]
                  if isinstance(exc, subprocess.CalledProcessError) and exc.stderr else exc)
        return None, f"could not install vllm-router {VLLM_ROUTER_VERSION} (offline?): {detail}"
    return (exe, "installed") if exe.exists() else (None, "vllm-router installed no executable")


def start_opscale(name: str, port: int, upstream_url: str, args: argparse.Namespace,
                  tree: Path | None = None) -> tuple[subprocess.Popen[str], Target, str]:
    """opscale's router in a process of its own, from this checkout or from `tree` (an unpacked
    revision, see _revision.py): the process, its target and its event loop's name."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if tree is not None:
        env["PYTHONPATH"] = python_path(tree)
    profiling = ("--profile-out", args.profile_out) if args.profile_out and tree is None else ()
    proc = spawn("--role", "opscale", "--port", str(port), "--upstream", upstream_url, *profiling,
                 "--auth" if args.auth else "--no-auth", env=env, cpus=args.cpu_router,
                 script=tree / "bench" / "router_proxy.py" if tree is not None else None)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("{"):
        raise RuntimeError(f"{name} router did not start (exit {proc.wait(10)}): {line}")
    return proc, Target(name, f"http://127.0.0.1:{port}", proc.pid, args.auth), json.loads(line)["loop"]


def cpu_ratio(mine: dict[str, Any], theirs: dict[str, Any], args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One target's CPU per request over another's, per round where both kept up: the median over the
    rounds with a 95 % bootstrap interval (one round's ratio on a shared machine moves by 20% and more)."""
    ratios = [o["server_cpu_ms_per_request"] / v["server_cpu_ms_per_request"]
              for o, v in zip(mine["steps"], theirs["steps"], strict=True)
              if o.get("server_cpu_ms_per_request") and v.get("server_cpu_ms_per_request")
              and o["kept_up"] and v["kept_up"]]
    return {"median": _median(ratios), **(bootstrap_median(ratios, args.bootstrap, seed=seed) or {}),
            "per_round": [round(x, 3) for x in ratios], "rounds_both_kept_up": len(ratios)}


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    load_before = [round(x, 2) for x in os.getloadavg()]
    began = time.monotonic()
    baseline_commit = commit_of(args.baseline) if args.baseline else None
    up_port, ops_port, vr_port, base_port = free_port(), free_port(), free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}"
    procs: list[subprocess.Popen[str]] = []
    notes: list[str] = []
    loop_name = None
    workdir = tempfile.TemporaryDirectory(prefix="opscale-router-proxy-")
    try:
        upstream = spawn("--role", "upstream", "--port", str(up_port), "--tokens", str(args.tokens),
                         "--token-gap-ms", str(args.token_gap_ms), cpus=args.cpu_upstream)
        procs.append(upstream)
        wait_http(f"{upstream_url}/health", 30)
        targets = [Target("direct", upstream_url, None, False)]

        opscale, target, loop_name = start_opscale("opscale", ops_port, upstream_url, args)
        procs.append(opscale)
        targets.append(target)
        if args.baseline:
            tree = unpack(args.baseline, Path(workdir.name) / "baseline")
            baseline, target, _ = start_opscale(BASELINE, base_port, upstream_url, args, tree)
            procs.append(baseline)
            targets.append(target)

        exe, how = (None, "skipped (--no-vllm-router)") if args.no_vllm_router else vllm_router_bin(Path(args.venv_dir))
        if exe is None:
            notes.append(f"vllm-router: {how}; only opscale against direct is measured")
        else:
            # pinned to the router's CPU too: only the target under load is busy, the other idles
            vr = subprocess.Popen(pinned([str(exe), "--host", "127.0.0.1", "--port", str(vr_port), "--worker-urls",
                                          upstream_url, "--policy", "round_robin", "--log-level", "warning"],
                                         args.cpu_router),
                                  stdout=subprocess.DEVNULL, stderr=tempfile.TemporaryFile(), text=True)
            procs.append(vr)
            wait_http(f"http://127.0.0.1:{vr_port}/health", 60)
            targets.append(Target("vllm_router", f"http://127.0.0.1:{vr_port}", vr.pid, False))

        for target in targets:  # one step at the rate, not counted: the first one of a process runs slow
            target.step(args.rate, args)
        at_rate = at_rate_rounds(targets, args)
        ramped = ramp(targets, args) if args.ramp else {"skipped": "--no-ramp"}
        capacity = ({t.name: wrk_capacity(t.url, args.tokens, args.step_s, args.wrk_connections, args.cpu_load,
                                          t.auth) for t in targets} if args.wrk else {"skipped": "--wrk not given"})
    finally:
        for proc in procs:
            terminate(proc, 10.0)
        workdir.cleanup()

    ops = at_rate["opscale"]
    summary: dict[str, Any] = {
        "opscale_auth": args.auth,
        "opscale_cpu_ms_per_request": ops.get("cpu_ms_per_request", {}).get("median"),
        "opscale_user_cpu_ms_per_request": ops.get("user_cpu_ms_per_request_median"),
        "opscale_added_ttft_p50_ms": ops["added_ttft_ms"]["p50_pooled"],
        "opscale_added_ttft_p99_ms": ops["added_ttft_ms"]["p99_pooled"],
        "opscale_added_ttft_p50_ms_per_round_median": ops["added_ttft_ms"]["p50_per_round_median"],
        "opscale_added_ttft_p99_ms_per_round_median": ops["added_ttft_ms"]["p99_per_round_median"],
        "errors": {name: row["errors"] for name, row in at_rate.items()},
    }
    if isinstance(ramped.get("max_sustained_rps"), dict):
        summary["max_sustained_rps"] = ramped["max_sustained_rps"]
        summary["ramp_censored"] = ramped["censored"]
        summary["load_tool_ceiling_rps"] = ramped["load_tool_ceiling_rps"]
        summary["tool_headroom_ok"] = ramped["tool_headroom_ok"]
    if "vllm_router" in at_rate:
        vr = at_rate["vllm_router"]
        summary["vllm_router_cpu_ms_per_request"] = vr.get("cpu_ms_per_request", {}).get("median")
        summary["vllm_router_user_cpu_ms_per_request"] = vr.get("user_cpu_ms_per_request_median")
        summary["vllm_router_added_ttft_p50_ms"] = vr["added_ttft_ms"]["p50_pooled"]
        summary["vllm_router_added_ttft_p99_ms"] = vr["added_ttft_ms"]["p99_pooled"]
        # the headline: both routers' CPU per request in the same round, their ratio, the median over rounds
        summary["cpu_per_request_ratio_opscale_to_vllm_router"] = cpu_ratio(ops, vr, args, seed=3)
        best = ramped.get("max_sustained_rps") if isinstance(ramped.get("max_sustained_rps"), dict) else None
        if best and best.get("vllm_router"):
            summary["max_rate_ratio_opscale_to_vllm_router"] = round(best["opscale"] / best["vllm_router"], 3)
    if BASELINE in at_rate:
        base = at_rate[BASELINE]
        summary["baseline"] = {"ref": args.baseline, "commit": baseline_commit,
                               "cpu_ms_per_request": base.get("cpu_ms_per_request", {}).get("median"),
                               "user_cpu_ms_per_request": base.get("user_cpu_ms_per_request_median"),
                               "cpu_per_request_ratio_opscale_to_baseline": cpu_ratio(ops, base, args, seed=4)}
        if "vllm_router" in at_rate:
            summary["baseline"]["cpu_per_request_ratio_baseline_to_vllm_router"] = cpu_ratio(
                base, at_rate["vllm_router"], args, seed=5)
    summary["targets"] = {"added_ttft_p50_ms": 1.0, "added_ttft_p99_ms": 3.0,
                          "cpu_per_request_ratio_opscale_to_vllm_router": 1.5}
    return {
        "benchmark": "router_proxy",
        "machine": {**machine(), "loadavg_1_5_15_before": load_before,
                    "loadavg_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
                    "run_s": round(time.monotonic() - began, 1)},
        "processes": "separate: upstream (raw asyncio protocols), opscale's router (built as services/router/main.py "
                     "builds it: metrics, HTTP limits, API keys unless --no-auth), vllm-router, and --load-procs "
                     "open-loop load processes per step (raw asyncio protocols; uvloop when installed)",
        "opscale_loop": loop_name,
        "cpu_pinning": {"upstream": args.cpu_upstream, "router": args.cpu_router, "load": args.cpu_load,
                        "taskset": shutil.which("taskset") is not None},
        "opscale_registration": "router core fed one agent heartbeat directly (no node-agent, NATS or Redis); "
                                "records published to an in-memory counting bus",
        "method": "at --rate: --rounds rounds, one step per target each, in a rotated order; added TTFT = through "
                  "a router minus direct, per round (same round's direct step) and pooled over rounds with a 95 % "
                  "bootstrap interval; CPU per request = the server process's time on a CPU over the step "
                  "(schedstat nanoseconds summed over its threads, else utime+stime) divided by the requests completed, over the rounds where the router kept up (TTFT p50 within "
                  "--kept-up-p50-ms of direct's); the first step of each target at the rate is not counted. "
                  "Ramp: direct first at each rate, a router step is sustained when error-free, >=95 % complete, on schedule, and its TTFT p99 <= max(factor x direct's, "
                  "direct's + floor); a failed step is run again before the target leaves the ramp.",
        "vllm_router_version": VLLM_ROUTER_VERSION if "vllm_router" in at_rate else None,
        "workload": {"rate_rps": args.rate, "rounds": args.rounds, "step_s": args.step_s, "tokens": args.tokens,
                     "token_gap_ms": args.token_gap_ms, "first_token_after_ms": args.token_gap_ms,
                     "open_loop": True, "streaming": True,
                     "ramp_rps": [r for r in RAMP_RPS if r <= args.ramp_max_rps] if args.ramp else [],
                     "sustained_factor": args.sustained_factor, "sustained_floor_ms": args.sustained_floor_ms,
                     "tool_ttft_p99_ms": args.tool_ttft_p99_ms, "kept_up_p50_ms": args.kept_up_p50_ms},
        "summary": summary,
        "at_rate": at_rate,
        "ramp": ramped,
        "wrk_closed_loop": capacity,
        "notes": notes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["bench", "upstream", "opscale", "load"], default="bench",
                        help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", default="", help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", default="", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=500.0, help="Offered rate of the latency measurement (req/s)")
    parser.add_argument("--step-s", type=float, default=2.0, help="Seconds of load per measurement step")
    parser.add_argument("--tokens", type=int, default=16, help="Tokens each streamed answer has")
    parser.add_argument("--token-gap-ms", type=float, default=1.0, help="Upstream delay before each token")
    parser.add_argument("--load-procs", type=int, default=1,
                        help="Open-loop load processes per step (on the load CPU; one carries a few thousand "
                             "streams/s, and more on the same CPU only add switching)")
    parser.add_argument("--wrk-connections", type=int, default=64, help="Streams wrk keeps busy (capacity)")
    two = (os.cpu_count() or 1) >= 2
    parser.add_argument("--cpu-upstream", default="0" if two else None, help="taskset CPU list of the upstream")
    parser.add_argument("--cpu-router", default="1" if two else None, help="taskset CPU list of the router")
    parser.add_argument("--cpu-load", default="0" if two else None,
                        help="taskset CPU list of the load generators (shares the upstream's on 2 cores)")
    parser.add_argument("--rounds", type=int, default=4, help="Rounds at --rate (one step per target each)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="Bootstrap resamples of the added TTFT")
    parser.add_argument("--ramp", action=argparse.BooleanOptionalAction, default=True,
                        help="Find each target's maximum sustained rate")
    parser.add_argument("--ramp-max-rps", type=float, default=float(RAMP_RPS[-1]), help="Highest ramp rate tried")
    parser.add_argument("--sustained-factor", type=float, default=3.0,
                        help="A ramp step is sustained when its TTFT p99 is within this multiple of direct's")
    parser.add_argument("--sustained-floor-ms", type=float, default=20.0,
                        help="... or within this many ms of direct's, whichever is looser")
    parser.add_argument("--kept-up-p50-ms", type=float, default=5.0,
                        help="A router's step at --rate counts for CPU per request when its TTFT p50 is within "
                             "this of the same round's direct step")
    parser.add_argument("--tool-ttft-p99-ms", type=float, default=50.0,
                        help="Direct's TTFT p99 past which the load tools' own ceiling is reached")
    parser.add_argument("--wrk", action="store_true", help="Also measure closed-loop capacity with wrk")
    parser.add_argument("--venv-dir", default=str(ROOT / ".bench-venvs" / "vllm-router"),
                        help="Where vllm-router is installed (its own venv)")
    parser.add_argument("--no-vllm-router", action="store_true", help="Skip the vllm-router comparison")
    parser.add_argument("--baseline", default=None, metavar="REF",
                        help="Also measure opscale's router at git revision REF, in the same rounds (not in the "
                             "ramp): its CPU per request against this checkout's and vllm-router's")
    parser.add_argument("--profile-out", default=None,
                        help="Run opscale's router under cProfile and write its stats to this file (for finding "
                             "hot spots: profiling slows the router, so its latencies are then not comparable)")
    parser.add_argument("--auth", action=argparse.BooleanOptionalAction, default=True,
                        help="opscale's router asks for an API key (one tenant whose limits never bind, so the "
                             "buckets run on every request) and the load tools send it; on by default, as in "
                             "production")
    args = parser.parse_args()
    if args.role == "upstream":
        run_upstream(args.port, args.tokens, args.token_gap_ms / 1e3)
    elif args.role == "opscale":
        run_opscale(args.port, args.upstream, args.profile_out, args.auth)
    elif args.role == "load":
        run_load(args.url, args.rate, args.step_s, args.tokens, args.result_file, args.auth)
    else:
        print(json.dumps(orchestrate(args)))


if __name__ == "__main__":
    main()
