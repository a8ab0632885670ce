"""Does the live stack decide as the simulator does? One scenario file, one trace slice, both runtimes.

The same scenario (fleet, deployments, tiers, policies, engine settings) configures both runs:

  live  `opscale up --scenario S` on a NATS and a Redis server started for this run (fresh, on free ports),
        simulated engines paced in real time; the slice is sent by `opscale loadgen replay`
  sim   `opscale simulate --config S` on the same slice (`--window`, `--compress`, `--model` alike)

Before the replay the live stack is brought to the state the simulation starts in: every instance the
planner placed at start is ready (its loading is not part of the slice in either run). The trace's
requests are labelled once (region and tier, written to an opscale CSV both runs read), so both see the
same requests. Printed: TTFT, TBT and end-to-end p50 and p99, SLO attainment and completed counts of
both runs, and the relative differences (live against sim). The last line is one JSON object with the
machine. The live figures move with the machine's load: run it on a quiet machine.

    python bench/live_vs_sim.py [--trace PATH] [--window 0:600] [--compress 4] [--scenario FILE] [--out DIR]

Default trace: the Azure 2023 conversation trace from ../shared/data (skipped with a message when absent).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT.parent / "shared" / "data" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
DEFAULT_SCENARIO = Path(__file__).resolve().parent / "scenarios" / "live_vs_sim.yaml"
FIGURES = ("ttft_p50_s", "ttft_p99_s", "tbt_p50_s", "tbt_p99_s", "e2e_p50_s", "e2e_p99_s")


def _label_trace(trace: Path, region: str, tier: str, dest: Path) -> None:
    """The trace as an opscale CSV whose requests originate in `region`, in `tier` (public traces name
    neither), so the simulator and the load generator read identical requests."""
    from opscale.traces import assign_by_weights, read_trace, write_csv_trace

    requests = assign_by_weights(read_trace(trace), "region", {region: 1.0}, 0)
    write_csv_trace(dest, assign_by_weights(requests, "tier", {tier: 1.0}, 0))


async def _wait_until_ready(nats_url: str, namespace: str, agents: list[tuple[str, str]], instances: int,
                            timeout_s: float, stack: subprocess.Popen[bytes]) -> int:
    """Wait until the agents' heartbeats report `instances` ready instances (or the stack has died);
    returns how many are."""
    from opscale.model import InstanceState
    from opscale.runtime.live.bus import BusError, NatsBus
    from opscale.services import subjects

    bus = NatsBus(namespace)
    await bus.connect(nats_url, "live-vs-sim-probe", ensure_streams=False)
    ready = 0
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and stack.poll() is None:
            ready = 0
            for region, agent_id in agents:
                try:
                    hb = await bus.last(subjects.heartbeat(region, agent_id))
                except BusError:  # the stream may not exist yet while the stack starts
                    hb = None
                if hb is not None:
                    ready += sum(st.state == InstanceState.READY for st in hb.instances)
            if ready >= instances:
                return ready
            await asyncio.sleep(0.5)
        return ready
    finally:
        await bus.close()


def _post(url: str, body: dict[str, Any], timeout_s: float) -> int:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _run(cmd: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("w") as out:
        done = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({done.returncode}); see {log}:\n"
                           f"{log.read_text()[-2000:]}")


def run_live(args: argparse.Namespace, scenario: Any, labelled: Path, out: Path, opscale: list[str]) -> dict[str, Any]:
    from opscale.runtime.live.local_servers import free_port_block, start_nats, start_redis, terminate

    nats, redis = start_nats(), start_redis()
    base = free_port_block(64)
    namespace = "lvs"
    env = dict(os.environ, OPSCALE_NATS_URL=nats.url, OPSCALE_REDIS_URL=redis.url, OPSCALE_NAMESPACE=namespace,
               OPSCALE_OPS_HOST="127.0.0.1", OPSCALE_ROUTER_HTTP_HOST="127.0.0.1",
               OPSCALE_NODE_AGENT_GRPC_HOST="127.0.0.1", OPSCALE_LOG_LEVEL="WARNING")
    stack_log = (out / "stack.log").open("w")
    stack = subprocess.Popen([*opscale, "up", "--scenario", str(args.scenario), "--port-base", str(base)],
                             env=env, stdout=stack_log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{base}"
    try:
        agents = [(g.region, agent_id) for g in scenario.hosts for agent_id in g.host_ids()]
        initial = sum(d.min_replicas for d in scenario.deployments)
        ready = asyncio.run(_wait_until_ready(nats.url, namespace, agents, initial, 180.0, stack))
        if ready < initial:
            raise RuntimeError(f"the live stack had {ready} of {initial} instances ready (exit code "
                               f"{stack.poll()}); see {out / 'stack.log'}")
        # The router also learns of them through heartbeats: one answered request shows it has.
        deadline = time.monotonic() + 60
        while _post(f"{url}/v1/completions", {"model": args.model, "prompt": "warm-up", "max_tokens": 2}, 60) != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the router answered no warm-up request within 60 s")
            time.sleep(0.5)
        # The scenario's tiers judge the SLO in both runs (a scenario without them has opscale's, as
        # the load generator does by default).
        tiers = ["--tiers", str(args.scenario)] if "tiers" in (yaml.safe_load(args.scenario.read_text()) or {}) else []
        _run([*opscale, "loadgen", "replay", str(labelled), "--url", url, "--window", args.window,
              "--compress", str(args.compress), "--model", args.model, *tiers, "--out", str(out / "live"),
              "--no-progress"], env, out / "loadgen.log")
        return json.loads((out / "live" / "report.json").read_text())
    finally:
        terminate(stack, 60.0)
        stack_log.close()
        nats.stop()
        redis.stop()


def run_sim(args: argparse.Namespace, labelled: Path, out: Path, opscale: list[str]) -> dict[str, Any]:
    _run([*opscale, "simulate", "--trace", str(labelled), "--config", str(args.scenario), "--window", args.window,
          "--compress", str(args.compress), "--model", args.model, "--out", str(out / "sim")],
         dict(os.environ), out / "simulate.log")
    return json.loads((out / "sim" / "result.json").read_text())


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    """The compared figures of a replay report or a result.json (the same keys in both)."""
    return {k: report.get(k) for k in (*FIGURES, "slo_attainment", "completed", "requests")}


def _relative(live: float | None, sim: float | None) -> float | None:
    if live is None or sim is None or sim == 0:
        return None
    return round((live - sim) / sim, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    parser.add_argument("--window", default="0:600", help="START:END trace seconds")
    parser.add_argument("--compress", type=float, default=4.0)
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    parser.add_argument("--out", type=Path, default=None, help="Folder for both runs' outputs (default: a temp dir)")
    args = parser.parse_args()
    if not args.trace.exists():
        print(f"skipped: trace {args.trace} is absent (pass --trace)")
        print(json.dumps({"skipped": f"no trace at {args.trace}", "machine": machine()}))
        return

    from opscale.experiments.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    if len(scenario.regions()) != 1 or len(scenario.deployments) != 1:
        raise SystemExit("the scenario must have one region and one deployment (the replay sends one model)")
    args.model = scenario.deployments[0].model
    region = scenario.regions()[0]
    tier = min(scenario.tiers, key=lambda t: t.priority).name
    out = args.out or Path(tempfile.mkdtemp(prefix="live-vs-sim-"))
    out.mkdir(parents=True, exist_ok=True)
    labelled = out / "trace.csv"
    _label_trace(args.trace, region, tier, labelled)
    opscale = [sys.executable, "-m", "opscale.cli"]

    started = time.perf_counter()
    sim = _figures(run_sim(args, labelled, out, opscale))
    live = _figures(run_live(args, scenario, labelled, out, opscale))
    relative = {k: _relative(live[k], sim[k]) for k in FIGURES}
    relative["slo_attainment_pp"] = (None if live["slo_attainment"] is None or sim["slo_attainment"] is None
                                     else round(100 * (live["slo_attainment"] - sim["slo_attainment"]), 2))
    for key in (*FIGURES, "slo_attainment", "completed"):
        print(f"{key:16} live {live[key]!s:>22}  sim {sim[key]!s:>22}  {relative.get(key, '')}")
    print(json.dumps({
        "benchmark": "live_vs_sim", "trace": args.trace.name, "window": args.window, "compress": args.compress,
        "scenario": str(args.scenario.relative_to(ROOT)) if args.scenario.is_relative_to(ROOT) else str(args.scenario),
        "policy": scenario.policy, "live": live, "sim": sim, "baseline": "sim", "relative_live_vs_sim": relative,
        "same_completed": live["completed"] == sim["completed"], "wall_s": round(time.perf_counter() - started, 1),
        "out": str(out), "machine": machine(), "load_average": os.getloadavg(),
    }))


if __name__ == "__main__":
    main()
