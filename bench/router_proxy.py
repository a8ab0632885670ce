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

For each: TTFT and end-to-end p50/p99 at `--rate` requests/s (open loop, streaming), the router's added TTFT (through
it minus direct), and the maximum sustained rate, found by ramping the offered rate until a step has
errors, completes under 95 % of what was offered, or its p99 TTFT exceeds `--degraded-ttft-ms`.

The added latency is measured twice: TTFT, and the whole streamed response (end-to-end minus direct,
which takes out the fixed streaming time). Capacity is measured twice: the open-loop ramp, and wrk
(closed loop, compiled) keeping `--wrk-connections` streams busy. The router under test (and
vllm-router) is pinned with taskset to its own CPU, the upstream and load generators to another, so
the router's CPU is its own; the JSON states the pinning and the load average before and after.

    python bench/router_proxy.py [--rate 500] [--step-s 5] [--tokens 16] [--token-gap-ms 1] [--load-procs 1]

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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

MODEL = "bench-model"
# `--auth`: the opscale router asks for this key (one tenant, limits far above any rate measured, so the
# request and token buckets run on every request without refusing one) and the load generator sends it.
BENCH_KEY = "sk-bench-0123456789abcdef"
BENCH_KEY_SPEC = {"id": "bench", "secret": BENCH_KEY, "requests_per_min": 1e9, "tokens_per_min": 1e12}
ROOT = Path(__file__).resolve().parents[1]
RAMP_RPS = (100, 250, 500, 750, 1000, 1250, 1500, 2000, 2500, 3000, 4000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        from aiohttp import web
        from prometheus_client import CollectorRegistry

        from opscale.model import InstanceState, InstanceStatus, Role
        from opscale.routing.tenants import ApiKeySpec, KeyTable
        from opscale.runtime.clock import WallClock
        from opscale.runtime.live.host import CoreHost
        from opscale.services.events import AgentHeartbeat
        from opscale.services.router import RouterConfig, RouterCore

        from opscale_services.router.api import build_router_app, make_runner
        from opscale_services.router.auth import TenantGate
        from opscale_services.router.backend import LiveRouterBackend
        from opscale_services.router.records import RecordBatcher
        from opscale_services.router.upstream import UpstreamClient

        clock = WallClock()
        bus = CountingBus()
        core = RouterCore(RouterConfig(region="local", models=[MODEL]))
        upstream = UpstreamClient()
        await upstream.start()
        records = RecordBatcher(bus, CollectorRegistry())  # type: ignore[arg-type]
        gate = (TenantGate(KeyTable([ApiKeySpec.model_validate(BENCH_KEY_SPEC)], clock.now_s()), clock.now_s,
                           CollectorRegistry()) if auth else None)
        backend = LiveRouterBackend(core, clock, upstream, records, "local",
                                    on_finished=gate.settle if gate is not None else None)
        host = CoreHost(core, bus, None, clock, on_action=backend.on_action)  # type: ignore[arg-type]
        backend.host = host
        status = InstanceStatus("upstream-0", MODEL, "H100-80GB", 1, Role.UNIFIED, InstanceState.READY,
                                endpoint=upstream_url)
        await host.handle(AgentHeartbeat("bench-agent", "local", "H100-80GB", 8, "bench:0", 1, clock.now_s(),
                                         (status,)))
        runner = make_runner(build_router_app(backend, gate=gate), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
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
        await runner.cleanup()
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


def spawn(*args: str, env: dict[str, str] | None = None, cpus: str | None = None) -> subprocess.Popen[str]:
    # stderr to a file, not a pipe: a server logging under overload must never block on a full pipe
    return subprocess.Popen(pinned([sys.executable, __file__, *args], cpus), stdout=subprocess.PIPE,
                            stderr=tempfile.TemporaryFile(), text=True, env=env)


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
              cpus: str | None, auth: bool = False) -> dict[str, Any]:
    """One open-loop step from `procs` load processes, each offering rate/procs (so the Python client is
    not the bottleneck), pinned to `cpus` when given; their samples are merged. With `auth` they send
    BENCH_KEY."""
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
            "e2e_p50_ms": ms(e2es, 0.5), "e2e_p99_ms": ms(e2es, 0.99)}


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


def sustained(step: dict[str, Any], degraded_ttft_ms: float) -> bool:
    return (not step["errors"] and step["completed"] >= 0.95 * step["sent"]
            and step["send_s"] <= 1.05 * step["sent"] / step["offered_rps"] + 0.2
            and step["ttft_p99_ms"] is not None and step["ttft_p99_ms"] <= degraded_ttft_ms)


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds a process has used (Linux /proc), None where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(name: str, url: str, args: argparse.Namespace, server_pid: int | None = None,
            auth: bool = False) -> dict[str, Any]:
    """The step at `--rate`, the ramp and wrk against `url`. With `server_pid`, the at-rate step also
    reports that process's CPU per completed request (what the router costs, independent of queueing)."""
    def step_at(rate: float) -> dict[str, Any]:
        return load_step(url, rate, args.step_s, args.tokens, args.load_procs, args.cpu_load, auth)

    cpu_before = cpu_s(server_pid) if server_pid else None
    at_rate = step_at(args.rate)
    cpu_after = cpu_s(server_pid) if server_pid else None
    if cpu_before is not None and cpu_after is not None and at_rate["completed"]:
        at_rate["server_cpu_ms_per_request"] = round((cpu_after - cpu_before) * 1e3 / at_rate["completed"], 3)
    ramp: list[dict[str, Any]] = []
    max_rate = 0.0
    for rate in RAMP_RPS:
        step = at_rate if rate == args.rate else step_at(rate)
        ramp.append(step)
        if not sustained(step, args.degraded_ttft_ms):
            break
        max_rate = float(rate)
    capacity = wrk_capacity(url, args.tokens, args.step_s, args.wrk_connections, args.cpu_load, auth)
    print(f"{name}: ttft p50 {at_rate['ttft_p50_ms']} ms, p99 {at_rate['ttft_p99_ms']} ms, e2e p50 "
          f"{at_rate['e2e_p50_ms']} ms, p99 {at_rate['e2e_p99_ms']} ms at {args.rate} rps; max sustained "
          f"{max_rate:.0f} rps; wrk {capacity.get('rps')} rps", file=sys.stderr, flush=True)
    return {"at_rate": at_rate, "max_sustained_rps": max_rate, "wrk_closed_loop": capacity, "ramp": ramp}


def vllm_router_bin(venv: Path) -> tuple[Path | None, str]:
    exe = venv / "bin" / "vllm-router"
    if exe.exists():
        return exe, "found"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "vllm-router==0.1.17"], check=True,
                       capture_output=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"could not install vllm-router: {exc}"
    return (exe, "installed") if exe.exists() else (None, "vllm-router installed no executable")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    load_before = [round(x, 2) for x in os.getloadavg()]
    up_port, ops_port, vr_port = free_port(), free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}"
    procs: list[subprocess.Popen[str]] = []
    results: dict[str, Any] = {}
    notes: list[str] = []
    try:
        upstream = spawn("--role", "upstream", "--port", str(up_port), "--tokens", str(args.tokens),
                         "--token-gap-ms", str(args.token_gap_ms), cpus=args.cpu_upstream)
        procs.append(upstream)
        wait_http(f"{upstream_url}/health", 30)
        results["direct"] = measure("direct", upstream_url, args)

        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        profiling = ("--profile-out", args.profile_out) if args.profile_out else ()
        keyed = ("--auth",) if args.auth else ()
        opscale = spawn("--role", "opscale", "--port", str(ops_port), "--upstream", upstream_url, *profiling, *keyed,
                        env=env, cpus=args.cpu_router)
        procs.append(opscale)
        line = opscale.stdout.readline() if opscale.stdout else ""
        if not line.startswith("{"):
            raise RuntimeError(f"opscale router did not start (exit {opscale.wait(10)}): {line}")
        measured = measure("opscale", f"http://127.0.0.1:{ops_port}", args, opscale.pid, args.auth)
        results["opscale"] = {"loop": json.loads(line)["loop"], "auth": args.auth, **measured}
        stop(opscale)

        exe, how = (None, "skipped (--no-vllm-router)") if args.no_vllm_router else vllm_router_bin(Path(args.venv_dir))
        if exe is None:
            notes.append(f"vllm-router: {how}")
        else:
            vr = subprocess.Popen(pinned([str(exe), "--host", "127.0.0.1", "--port", str(vr_port), "--worker-urls",
                                          upstream_url, "--policy", "round_robin", "--log-level", "warning"],
                                         args.cpu_router),
                                  stdout=subprocess.DEVNULL, stderr=tempfile.TemporaryFile(), text=True)
            procs.append(vr)
            wait_http(f"http://127.0.0.1:{vr_port}/health", 60)
            results["vllm_router"] = {"version": "0.1.17",
                                      **measure("vllm-router", f"http://127.0.0.1:{vr_port}", args, vr.pid)}
    finally:
        for proc in procs:
            stop(proc)

    def added(which: str, q: str) -> float | None:
        through, direct = results.get(which, {}).get("at_rate", {}), results["direct"]["at_rate"]
        if through.get(q) is None or direct.get(q) is None:
            return None
        return round(through[q] - direct[q], 3)

    summary: dict[str, Any] = {
        "opscale_added_ttft_p50_ms": added("opscale", "ttft_p50_ms"),
        "opscale_added_ttft_p99_ms": added("opscale", "ttft_p99_ms"),
        "opscale_added_e2e_p50_ms": added("opscale", "e2e_p50_ms"),
        "opscale_added_e2e_p99_ms": added("opscale", "e2e_p99_ms"),
        "direct_wrk_rps": results["direct"]["wrk_closed_loop"].get("rps"),
        "opscale_wrk_rps": results["opscale"]["wrk_closed_loop"].get("rps"),
        "direct_max_sustained_rps": results["direct"]["max_sustained_rps"],
        "opscale_max_sustained_rps": results["opscale"]["max_sustained_rps"],
        "opscale_cpu_ms_per_request": results["opscale"]["at_rate"].get("server_cpu_ms_per_request"),
        "opscale_auth": args.auth,
        "targets": {"added_ttft_p50_ms": 1.0, "added_ttft_p99_ms": 3.0, "max_rate_ratio_vs_vllm_router": 0.5},
    }
    if "vllm_router" in results:
        vr_max = results["vllm_router"]["max_sustained_rps"]
        summary["vllm_router_added_ttft_p50_ms"] = added("vllm_router", "ttft_p50_ms")
        summary["vllm_router_added_ttft_p99_ms"] = added("vllm_router", "ttft_p99_ms")
        summary["vllm_router_max_sustained_rps"] = vr_max
        summary["vllm_router_cpu_ms_per_request"] = results["vllm_router"]["at_rate"].get("server_cpu_ms_per_request")
        summary["vllm_router_added_e2e_p50_ms"] = added("vllm_router", "e2e_p50_ms")
        summary["vllm_router_added_e2e_p99_ms"] = added("vllm_router", "e2e_p99_ms")
        vr_wrk, ops_wrk = results["vllm_router"]["wrk_closed_loop"].get("rps"), summary["opscale_wrk_rps"]
        summary["vllm_router_wrk_rps"] = vr_wrk
        summary["wrk_rps_ratio_opscale_to_vllm_router"] = round(ops_wrk / vr_wrk, 3) if vr_wrk and ops_wrk else None
        summary["max_rate_ratio_opscale_to_vllm_router"] = (
            round(results["opscale"]["max_sustained_rps"] / vr_max, 3) if vr_max else None)
    return {
        "benchmark": "router_proxy",
        "machine": {**machine(), "loadavg_1_5_15_before": load_before,
                    "loadavg_1_5_15_after": [round(x, 2) for x in os.getloadavg()]},
        "processes": "separate: upstream (raw asyncio protocols), router under test, and --load-procs open-loop "
                     "load processes per step (raw asyncio protocols; uvloop when installed), plus wrk (compiled, "
                     "closed loop) for capacity",
        "cpu_pinning": {"upstream": args.cpu_upstream, "router": args.cpu_router, "load": args.cpu_load,
                        "taskset": shutil.which("taskset") is not None},
        "opscale_registration": "router core fed one agent heartbeat directly (no node-agent, NATS or Redis); "
                                "records published to an in-memory counting bus",
        "baseline": "direct (load generator to upstream), and vllm-router in front of the same upstream",
        "workload": {"rate_rps": args.rate, "step_s": args.step_s, "tokens": args.tokens,
                     "token_gap_ms": args.token_gap_ms, "first_token_after_ms": args.token_gap_ms,
                     "open_loop": True, "streaming": True, "ramp_rps": list(RAMP_RPS),
                     "degraded_ttft_p99_ms": args.degraded_ttft_ms},
        "summary": summary,
        "results": results,
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
    parser.add_argument("--step-s", type=float, default=5.0, help="Seconds of load per measurement step")
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
    parser.add_argument("--degraded-ttft-ms", type=float, default=250.0,
                        help="A ramp step whose TTFT p99 exceeds this is not sustained")
    parser.add_argument("--venv-dir", default=str(ROOT / ".bench-venvs" / "vllm-router"),
                        help="Where vllm-router is installed (its own venv)")
    parser.add_argument("--no-vllm-router", action="store_true", help="Skip the vllm-router comparison")
    parser.add_argument("--profile-out", default=None,
                        help="Run opscale's router under cProfile and write its stats to this file (for finding "
                             "hot spots: profiling slows the router, so its latencies are then not comparable)")
    parser.add_argument("--auth", action="store_true", help="opscale's router asks for an API key (one tenant "
                        "whose limits never bind) and the load tools send it")
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
