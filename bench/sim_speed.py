"""Speed of the whole simulation: simulated requests and events per wall-clock second.

Runs the embedded simulation (SimWorld: router, aggregator, forecaster, planner, node-agents and one
simulated engine per instance) of a fixed fleet of about M Llama-3-8B TP1 instances on 8-GPU H100 hosts
in one region, under a steady Poisson load sized to a fraction (`--load`, default 0.6) of the fleet's
modelled capacity: busy, not overloaded. The static planning policy holds the fleet size fixed, so the
measurement is the shell and the cores, not scaling. Each `--requests` value is one run; `linearity`
is wall time per request at the largest N over that at the smallest (1.0: cost grows linearly). The
synthetic arrivals are Poisson, so a run's actual request count is within a few percent of its N.

Baseline, measured in the same run: the engines alone. The same request stream is dealt round-robin
to M bare SimEngines, each driven directly from event to event (as `opscale.engine.replay` does), so
the cost of everything around the engines is visible as `shell_overhead` (world wall / engine wall).
Both include generating the synthetic requests; `generate_only_s` says how much that is.

Compiled variant, also in the same run (unless `--no-compiled`): the same worlds in a child process
that imports the optional compiled build (OPSCALE_COMPILE=1, the modules of
opscale._native_modules compiled with mypyc; see bench/_compiled_build.py), built into
.bench-venvs/ on first use and reused while the sources are unchanged. `compiled` reports its
requests/s beside the pure Python ones, its speed-up, the mypy (mypyc) version, and `same_results`:
whether both builds completed and dropped the same requests with the same SLO attainment, as the
same seed must give.

    python bench/sim_speed.py                      # N = 10k and 100k, M = 100
    python bench/sim_speed.py --requests 10000 100000 1000000 --instances 200
    python bench/sim_speed.py --no-compiled        # pure Python only

Prints progress on stderr and one JSON object as the last line of stdout. Timings are reported,
never asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _compiled_build import compiled_build, compiled_modules_loaded  # noqa: E402
from _machine import machine  # noqa: E402

from opscale.engine import Finished, SimEngine  # noqa: E402
from opscale.experiments.runner import requests_of, run_scenario  # noqa: E402
from opscale.experiments.scenario import HostGroup, Scenario  # noqa: E402
from opscale.model import DEFAULT_TIERS, latency_objective  # noqa: E402
from opscale.perf import RooflineLatencyModel, default_catalog  # noqa: E402
from opscale.planning import DeploymentSpec  # noqa: E402
from opscale.planning.capacity import CapacityEstimator  # noqa: E402
from opscale.traces import LengthDistribution, StreamSpec, SyntheticWorkloadConfig  # noqa: E402

MODEL = "Llama-3-8B"
SKU = "H100-80GB"
REGION = "bench"
GPUS_PER_HOST = 8
TBT_SLO_S = latency_objective(DEFAULT_TIERS).tbt_slo_s  # what sizes the capacity estimate of the default tiers
# The demo's chat-like request shape.
PROMPT_TOKENS = LengthDistribution(median_tokens=1024, sigma=0.8, max_tokens=6144)
OUTPUT_TOKENS = LengthDistribution(median_tokens=256, sigma=0.7, max_tokens=1536)
# The first plan is made at the planner's first 10 s tick; arrivals start after it has been applied.
FIRST_ARRIVAL_S = 12.0


def _lognormal_mean(dist: LengthDistribution) -> float:
    return dist.median_tokens * math.exp(dist.sigma ** 2 / 2)


def instance_capacity_rps() -> float:
    """Requests/s one instance sustains at the TBT objective, from the performance model."""
    estimate = CapacityEstimator(default_catalog(), TBT_SLO_S)
    return estimate(MODEL, SKU, 1, _lognormal_mean(PROMPT_TOKENS), _lognormal_mean(OUTPUT_TOKENS))


def build_scenario(requests: int, instances: int, offered_rps: float, seed: int) -> Scenario:
    """A fixed fleet of `instances` under `offered_rps` for as long as `requests` arrivals take."""
    duration_s = requests / offered_rps
    return Scenario(
        name=f"sim_speed: {instances} instances, {requests} requests", seed=seed,
        duration_s=FIRST_ARRIVAL_S + duration_s,
        hosts=[HostGroup(region=REGION, sku=SKU, gpus=GPUS_PER_HOST, count=math.ceil(instances / GPUS_PER_HOST))],
        deployments=[DeploymentSpec(model=MODEL, sku=SKU, tp=1, min_replicas=instances, max_replicas=instances)],
        workload=SyntheticWorkloadConfig(
            seed=seed, start_s=FIRST_ARRIVAL_S, duration_s=duration_s, amplitude=0.0,
            streams=(StreamSpec(model=MODEL, region=REGION, base_rps=offered_rps),),
            prompt_tokens=PROMPT_TOKENS, output_tokens=OUTPUT_TOKENS),
        policy="static", policy_params={"replicas": instances},
        sample_interval_s=max(60.0, duration_s / 100),  # the timeline is not what is measured
    )


def run_world(scenario: Scenario) -> dict[str, Any]:
    started = time.perf_counter()
    result = run_scenario(scenario).result
    wall_s = time.perf_counter() - started
    return {
        "requests": result["requests"], "simulated_s": result["simulated_s"], "wall_s": wall_s,
        "requests_per_s": result["requests"] / wall_s, "events": result["events"],
        "events_per_s": result["events"] / wall_s, "simulated_s_per_wall_s": result["simulated_s"] / wall_s,
        "completed": result["completed"], "dropped": result["dropped"], "slo_attainment": result["slo_attainment"],
        "mean_gpu_util": result["mean_gpu_util"], "ttft_p99_s": result["ttft_p99_s"],
    }


def run_engines_alone(scenario: Scenario, instances: int) -> dict[str, Any]:
    """The scenario's requests dealt round-robin to `instances` bare engines, each advanced to its own
    events up to every arrival and then to idle: the engines' share of the world's work."""
    catalog = default_catalog()
    model, sku = catalog.model(MODEL), catalog.sku(SKU)
    latency = RooflineLatencyModel(model, sku, 1)
    engines = [SimEngine(f"engine-{i}", model, sku, 1, latency, scenario.engine) for i in range(instances)]
    started = time.perf_counter()
    requests = events = 0
    last_s = 0.0
    for request in requests_of(scenario):
        engine = engines[requests % instances]
        while (event_s := engine.next_event_s()) is not None and event_s <= request.arrival_s:
            engine.advance(event_s)
            events += 1
        engine.submit(request, request.arrival_s)
        requests += 1
    for engine in engines:
        while (event_s := engine.next_event_s()) is not None:
            for out in engine.advance(event_s):
                if isinstance(out, Finished):
                    last_s = max(last_s, out.at_s)
            events += 1
    wall_s = time.perf_counter() - started
    completed = sum(e.finished for e in engines)
    return {"requests": requests, "completed": completed, "simulated_s": last_s, "wall_s": wall_s,
            "requests_per_s": requests / wall_s, "events": events, "events_per_s": events / wall_s}


def generate_only_s(scenario: Scenario) -> float:
    started = time.perf_counter()
    for _ in requests_of(scenario):
        pass
    return time.perf_counter() - started


# What the compiled build must reproduce exactly, run for run.
SAME_RESULT_FIELDS = ("requests", "completed", "dropped", "slo_attainment")


def run_compiled(sizes: list[int], instances: int, offered_rps: float, seed: int) -> dict[str, Any]:
    """The worlds of `sizes` in a child process that imports the compiled build (built if needed)."""
    build = compiled_build()
    how = "reused" if build.reused else f"built in {build.build_s:.0f} s"
    print(f"compiled build: {build.site.parent.name} ({how})", file=sys.stderr)
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    path = os.pathsep.join([str(build.site), *inherited])
    command = [sys.executable, __file__, "--compiled-child", "--instances", str(instances),
               "--offered-rps", repr(offered_rps), "--seed", str(seed), "--requests", *map(str, sizes)]
    child = subprocess.run(command, env={**os.environ, "PYTHONPATH": path}, stdout=subprocess.PIPE, text=True,
                           check=True)
    runs = json.loads(child.stdout.splitlines()[-1])
    return {"mypyc": build.mypy_version, "modules": list(build.modules), "build_s": build.build_s,
            "build_reused": build.reused, "runs": runs}


def result_mismatches(pure_runs: list[dict[str, Any]], compiled_runs: list[dict[str, Any]]) -> list[str]:
    """Where the compiled runs' SAME_RESULT_FIELDS differ from the pure ones of the same size (none: [])."""
    mismatches = []
    for compiled in compiled_runs:
        n = compiled["requests_target"]
        pure = next(r for r in pure_runs if r["requests_target"] == n)
        mismatches += [f"N={n} {name}: pure {pure[name]}, compiled {compiled[name]}"
                       for name in SAME_RESULT_FIELDS if compiled[name] != pure[name]]
    return mismatches


def compiled_child(sizes: list[int], instances: int, offered_rps: float, seed: int) -> None:
    """In the child: check that the compiled modules are the ones imported, run, print the runs as JSON."""
    from opscale._native_modules import NATIVE_MODULES

    loaded = compiled_modules_loaded(NATIVE_MODULES)
    if not all(loaded.values()):
        sys.exit(f"not compiled in this process: {sorted(m for m, ok in loaded.items() if not ok)}")
    runs = []
    for n in sizes:
        world = {"requests_target": n, **run_world(build_scenario(n, instances, offered_rps, seed))}
        print(f"N={n}: compiled world {world['requests']} requests in {world['wall_s']:.2f} s "
              f"({world['requests_per_s']:.0f} req/s)", file=sys.stderr)
        runs.append(world)
    print(json.dumps(runs))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _load_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=_positive_int, nargs="+", default=[10_000, 100_000],
                        help="simulated requests per run, one run per value (default: 10000 100000)")
    parser.add_argument("--instances", type=_positive_int, default=100, help="fleet size (default 100)")
    parser.add_argument("--load", type=_load_fraction, default=0.6,
                        help="offered load as a fraction of the fleet's modelled capacity (default 0.6)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-compiled", action="store_true", help="skip the compiled build's variant")
    # The compiled variant's child process (internal): the offered load exactly as the parent sized it.
    parser.add_argument("--compiled-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--offered-rps", type=float, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    sizes = sorted(set(ns.requests))
    if ns.compiled_child:
        compiled_child(sizes, ns.instances, ns.offered_rps, ns.seed)
        return

    capacity_rps = instance_capacity_rps()
    offered_rps = ns.load * capacity_rps * ns.instances
    print(f"fleet: {ns.instances} x {MODEL} TP1 on {SKU}; {capacity_rps:.2f} rps/instance modelled; "
          f"offered {offered_rps:.0f} rps", file=sys.stderr)
    runs: list[dict[str, Any]] = []
    baseline_runs: list[dict[str, Any]] = []
    for n in sizes:
        scenario = build_scenario(n, ns.instances, offered_rps, ns.seed)
        world = {"requests_target": n, **run_world(scenario)}
        alone = {"requests_target": n, **run_engines_alone(scenario, ns.instances)}
        alone["generate_only_s"] = generate_only_s(scenario)
        world["shell_overhead"] = world["wall_s"] / alone["wall_s"]
        runs.append(world)
        baseline_runs.append(alone)
        print(f"N={n}: world {world['requests']} requests in {world['wall_s']:.2f} s "
              f"({world['requests_per_s']:.0f} req/s, {world['events_per_s']:.0f} events/s, "
              f"{world['simulated_s']:.0f} simulated s); engines alone {alone['wall_s']:.2f} s "
              f"({alone['requests_per_s']:.0f} req/s)", file=sys.stderr)

    def linearity(rows: list[dict[str, Any]]) -> float:
        return (rows[-1]["wall_s"] / rows[-1]["requests"]) / (rows[0]["wall_s"] / rows[0]["requests"])

    compiled: dict[str, Any] | None = None
    if not ns.no_compiled:
        try:
            compiled = run_compiled(sizes, ns.instances, offered_rps, ns.seed)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"compiled variant skipped: {exc}", file=sys.stderr)
            compiled = {"error": str(exc)}
        else:
            mismatches = result_mismatches(runs, compiled["runs"])
            if mismatches:
                print("compiled build differs from pure Python: " + "; ".join(mismatches), file=sys.stderr)
            pure_wall_s = {r["requests_target"]: r["wall_s"] for r in runs}
            compiled.update({
                "requests_per_s": {str(r["requests_target"]): r["requests_per_s"] for r in compiled["runs"]},
                "speedup": {str(r["requests_target"]): pure_wall_s[r["requests_target"]] / r["wall_s"]
                            for r in compiled["runs"]},
                "linearity": linearity(compiled["runs"]),
                "same_results": not mismatches, "compared": list(SAME_RESULT_FIELDS), "mismatches": mismatches,
            })

    result = {
        "benchmark": "sim_speed", "instances": ns.instances, "model": MODEL, "sku": SKU,
        "load_fraction": ns.load, "instance_capacity_rps": capacity_rps, "offered_rps": offered_rps,
        "seed": ns.seed, "machine": machine(), "runs": runs,
        "requests_per_s": {str(r["requests_target"]): r["requests_per_s"] for r in runs},
        "events_per_s": {str(r["requests_target"]): r["events_per_s"] for r in runs},
        "linearity": linearity(runs),
        "baseline": {"what": "the same requests, dealt round-robin to bare SimEngines driven directly",
                     "runs": baseline_runs, "linearity": linearity(baseline_runs)},
        "compiled": compiled,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
