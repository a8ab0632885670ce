"""What API keys cost the router per request: auth on against auth off, in the same run.

Two measurements:
- the gate alone, in process, on the thread's CPU clock: what one request adds when keys are on (the
  key read from the headers, `KeyTable.authenticate`: a SHA-256 and a dict lookup, `Tenant.admit`: the
  request and token buckets, and `TenantGate.settle` when it ends), against the router core's routing
  decision for the same request (`RouterCore.handle(RequestArrived)` with 8 ready instances), in
  alternating rounds;
- the router whole, as bench/router_proxy.py runs it (its upstream, router and load roles): one
  fixed-latency streaming upstream and two opscale routers, one asking for a key (one tenant whose limits
  never bind, so the buckets run on every request without refusing any) and one not, both pinned to the
  same CPU. Open-loop load steps at `--rate` alternate between the two, round after round (the order
  swapped each round), so a burst of load from elsewhere on a shared machine falls on both alike. Each
  step gives the router's CPU per completed request (its /proc counters) and TTFT p50/p99. The summary
  gives the medians over rounds and the median of the per-round on/off ratios.

    python bench/router_auth.py [--rate 300] [--step-s 3] [--rounds 4] [--gate-requests 20000]

The last line of output is one JSON object (with the machine).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import router_proxy as rp  # noqa: E402
from _machine import machine  # noqa: E402

from opscale.model import InstanceState, InstanceStatus, Request, RequestOutcome, Role  # noqa: E402
from opscale.openai.schema import parse_completion  # noqa: E402
from opscale.routing.tenants import ApiKeySpec, KeyTable  # noqa: E402
from opscale.services.events import AgentHeartbeat, RequestArrived, RequestFinished  # noqa: E402
from opscale.services.router import RouterConfig, RouterCore  # noqa: E402

from opscale_services.router.auth import TenantGate, presented_key  # noqa: E402


def gate_cost(requests: int, rounds: int = 10) -> dict[str, Any]:
    """CPU µs per request of the gate's work, and of the routing decision it sits beside."""
    table = KeyTable([ApiKeySpec.model_validate(rp.BENCH_KEY_SPEC)])
    gate = TenantGate(table, time.monotonic)
    headers = {"authorization": f"Bearer {rp.BENCH_KEY}", "Content-Type": "application/json"}
    parsed = parse_completion(json.dumps({"model": "m", "prompt": "hello " * 50, "max_tokens": 16}).encode(),
                              "completion", tenant="bench")
    assert not isinstance(parsed, Exception) and hasattr(parsed, "prompt_tokens")
    core = RouterCore(RouterConfig(models=["m"]))
    statuses = tuple(InstanceStatus(f"i{k}", "m", "H100-80GB", 1, Role.UNIFIED, InstanceState.READY)
                     for k in range(8))
    core.handle(AgentHeartbeat("a", "local", "H100-80GB", 8, "a:1", 1, 0.0, statuses), 0.0)
    # the record the back end builds anyway; the gate only reads it
    outcome = RequestOutcome("r", "m", "interactive", "local", "local", "i0", 0.0, 0.1, 0.2, 13, 16, "ok", "", "bench")
    per_round = max(1, requests // rounds)
    gate_ns: list[int] = []
    decide_ns: list[int] = []
    n = 0
    gc.disable()
    try:
        for _ in range(rounds):
            start = time.thread_time_ns()
            for _ in range(per_round):
                key = presented_key(headers)
                tenant = table.authenticate(key or "")
                assert tenant is not None
                gate.admit(tenant, parsed)  # type: ignore[arg-type]
                gate.settle(outcome)
            gate_ns.append(time.thread_time_ns() - start)
            start = time.thread_time_ns()
            for _ in range(per_round):
                n += 1
                request = Request(f"r{n}", "m", "interactive", "local", 0.0, 13, 16, tenant="bench")
                [dispatch] = core.handle(RequestArrived(request), 0.0)
                core.handle(RequestFinished(RequestOutcome(request.request_id, "m", "interactive", "local", "local",
                                                           dispatch.instance_id, 0.0, 0.1, 0.2, 13, 16)), 0.0)
            decide_ns.append(time.thread_time_ns() - start)
            gc.collect()
    finally:
        gc.enable()
    gate_us = statistics.median(gate_ns) / per_round / 1e3
    decide_us = statistics.median(decide_ns) / per_round / 1e3
    return {"requests": per_round * rounds, "gate_cpu_us_per_request": round(gate_us, 3),
            "routing_decision_cpu_us_per_request": round(decide_us, 3),
            "gate_to_decision_ratio": round(gate_us / decide_us, 3) if decide_us else None}


def start_router(port: int, upstream_url: str, cpus: str | None, auth: bool) -> Any:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = rp.spawn("--role", "opscale", "--port", str(port), "--upstream", upstream_url,
                    "--auth" if auth else "--no-auth", env=env, cpus=cpus)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("{"):
        raise RuntimeError(f"opscale router (auth {auth}) did not start (exit {proc.wait(10)}): {line}")
    return proc


def whole_router(args: argparse.Namespace) -> dict[str, Any]:
    up_port, off_port, on_port = rp.free_port(), rp.free_port(), rp.free_port()
    upstream_url = f"http://127.0.0.1:{up_port}"
    procs: list[Any] = []
    steps: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    try:
        procs.append(rp.spawn("--role", "upstream", "--port", str(up_port), "--tokens", str(args.tokens),
                              "--token-gap-ms", str(args.token_gap_ms), cpus=args.cpu_upstream))
        rp.wait_http(f"{upstream_url}/health", 30)
        routers = {"off": start_router(off_port, upstream_url, args.cpu_router, False),
                   "on": start_router(on_port, upstream_url, args.cpu_router, True)}
        procs.extend(routers.values())
        ports = {"off": off_port, "on": on_port}
        for variant in ("off", "on"):  # warm both (connections, caches) before anything is timed
            rp.load_step(f"http://127.0.0.1:{ports[variant]}", args.rate, 1.0, args.tokens, 1, args.cpu_load,
                         auth=variant == "on")  # (the step and its TTFT samples: neither kept)
        for r in range(args.rounds):
            for variant in (("off", "on") if r % 2 == 0 else ("on", "off")):
                pid = routers[variant].pid
                before, threads_before = rp.cpu_s(pid), rp.on_cpu_ns(pid)
                step, _ = rp.load_step(f"http://127.0.0.1:{ports[variant]}", args.rate, args.step_s, args.tokens, 1,
                                       args.cpu_load, auth=variant == "on")
                after, threads_after = rp.cpu_s(pid), rp.on_cpu_ns(pid)
                if before is not None and after is not None and step["completed"]:
                    spent, _ = rp.step_cpu_s((before, after), (threads_before, threads_after))
                    step["server_cpu_ms_per_request"] = round(spent * 1e3 / step["completed"], 4)
                steps[variant].append(step)
                print(f"round {r} auth {variant}: {step['completed']}/{step['sent']} completed, cpu "
                      f"{step.get('server_cpu_ms_per_request')} ms/request, ttft p50 {step['ttft_p50_ms']} ms, "
                      f"p99 {step['ttft_p99_ms']} ms", file=sys.stderr, flush=True)
    finally:
        for proc in procs:
            rp.terminate(proc, 10.0)

    def median(variant: str, key: str) -> float | None:
        values = [s[key] for s in steps[variant] if s.get(key) is not None]
        return round(statistics.median(values), 4) if values else None

    def paired(key: str, how: str) -> float | None:
        pairs = [(on[key], off[key]) for on, off in zip(steps["on"], steps["off"], strict=True)
                 if on.get(key) is not None and off.get(key)]
        if not pairs:
            return None
        values = [a / b if how == "ratio" else a - b for a, b in pairs]
        return round(statistics.median(values), 4)

    return {
        "cpu_ms_per_request_off": median("off", "server_cpu_ms_per_request"),
        "cpu_ms_per_request_on": median("on", "server_cpu_ms_per_request"),
        "cpu_per_request_ratio_on_to_off": paired("server_cpu_ms_per_request", "ratio"),
        "ttft_p50_ms_off": median("off", "ttft_p50_ms"), "ttft_p50_ms_on": median("on", "ttft_p50_ms"),
        "ttft_p99_ms_off": median("off", "ttft_p99_ms"), "ttft_p99_ms_on": median("on", "ttft_p99_ms"),
        "added_ttft_p50_ms_on_vs_off": paired("ttft_p50_ms", "difference"),
        "added_ttft_p99_ms_on_vs_off": paired("ttft_p99_ms", "difference"),
        "errors": {v: sum(sum(s["errors"].values()) for s in steps[v]) for v in steps},
        "completed": {v: sum(s["completed"] for s in steps[v]) for v in steps},
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300.0, help="Offered rate of each load step (req/s)")
    parser.add_argument("--step-s", type=float, default=3.0, help="Seconds of load per step")
    parser.add_argument("--rounds", type=int, default=4, help="Rounds of one step with auth off and one on")
    parser.add_argument("--tokens", type=int, default=16, help="Tokens each streamed answer has")
    parser.add_argument("--token-gap-ms", type=float, default=1.0, help="Upstream delay before each token")
    parser.add_argument("--gate-requests", type=int, default=20000, help="Requests timed in the in-process part")
    parser.add_argument("--no-processes", action="store_true", help="Only the in-process measurement")
    two = (os.cpu_count() or 1) >= 2
    parser.add_argument("--cpu-upstream", default="0" if two else None, help="taskset CPU list of the upstream")
    parser.add_argument("--cpu-router", default="1" if two else None, help="taskset CPU list of both routers")
    parser.add_argument("--cpu-load", default="0" if two else None, help="taskset CPU list of the load generator")
    args = parser.parse_args()
    load_before = [round(x, 2) for x in os.getloadavg()]
    result: dict[str, Any] = {"benchmark": "router_auth", "gate": gate_cost(args.gate_requests)}
    if not args.no_processes:
        result["router"] = whole_router(args)
    result["machine"] = {**machine(), "loadavg_1_5_15_before": load_before,
                         "loadavg_1_5_15_after": [round(x, 2) for x in os.getloadavg()]}
    result["baseline"] = ("the same router without keys, measured in the same run (alternating steps); the gate "
                          "alone against the router core's routing decision")
    result["workload"] = {"rate_rps": args.rate, "step_s": args.step_s, "rounds": args.rounds, "tokens": args.tokens,
                          "token_gap_ms": args.token_gap_ms, "open_loop": True, "streaming": True,
                          "cpu_pinning": {"upstream": args.cpu_upstream, "routers": args.cpu_router,
                                          "load": args.cpu_load}}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
