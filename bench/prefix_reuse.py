"""Prefix reuse under each routing policy: how much of what a workload allows the fleet captures.

Replays the two Mooncake sample heads (conversation and synthetic, 2,000 requests each, from
../shared/data) and a seeded multi-turn synthetic workload (shared system prompts, conversations whose
turns resend their history) through the simulated fleet, once per routing policy, with prefix caching
and KV events on. The fleet is the same for every run: Qwen2-7B at TP1 on H100s under the static
planner, started before the first request.

Per workload: `bound`, the share of prompt tokens a single unbounded cache would skip
(opscale.traces.prefix_reuse); per policy: `hit_rate` (prompt tokens served from GPU KV caches over all
prompt tokens, the bound's measure), `host_hit_rate` (from the host-memory tier, when it is on),
`ratio_to_bound`, `ttft_p50_s`, `ttft_p99_s`, `gpu_hours`, `completed`, `dropped` and `wall_s`. Prints
one JSON object as its last line; a Mooncake head that is absent is reported as skipped.

    python bench/prefix_reuse.py                      # a few seconds
    python bench/prefix_reuse.py --instances 8 --policies kv_aware,jsq_tokens
    python bench/prefix_reuse.py --diagnose           # where reuse is lost, step by step (README)

`--diagnose` measures, per Mooncake head, the hit rate at each step from the bound to the fleet: one
engine with an unbounded cache (it must equal the bound), one with an H100's cache, a single LRU cache
as large as the fleet's caches together (a trace-level reference: no fleet can do better), then the
fleet under each policy and setting, then a host reclaimed mid-run (scale-in: its instances' caches
are lost, their replacements start cold).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine  # noqa: E402

from opscale.engine import EngineConfig, SimEngine, replay  # noqa: E402
from opscale.experiments.runner import run_scenario  # noqa: E402
from opscale.experiments.scenario import Scenario  # noqa: E402
from opscale.model import Request  # noqa: E402
from opscale.perf import RooflineLatencyModel, default_catalog  # noqa: E402
from opscale.traces.mooncake import read_mooncake_trace  # noqa: E402
from opscale.traces.prefix_reuse import prefix_reuse_bound  # noqa: E402

HEADS = Path("../shared/data/samples/mooncake_fast25")
MOONCAKE = {"mooncake_conversation": "conversation_trace_head2000.jsonl",
            "mooncake_synthetic": "synthetic_trace_head2000.jsonl"}
POLICIES = ("kv_aware", "prefix_affinity", "jsq_tokens", "least_kv", "power_of_two", "round_robin")
MODEL, SKU = "Qwen2-7B", "H100-80GB"
BLOCK = 512  # Mooncake's hash_ids granularity, and the engines' prefix_block_tokens


def multi_turn_trace(path: Path, seed: int, conversations: int = 500, span_s: float = 600.0) -> None:
    """A Mooncake-format trace of multi-turn chat: each conversation opens with one of 8 shared system
    prompts (1-4k tokens), then turns (1-8, mean about 3) each resend the system prompt and the whole
    history plus a new user message; turns are a think time (exponential, mean 30 s) after the previous
    answer would be read. Full 512-token blocks get ids chained from the prefix, as Mooncake's: a system
    prompt's own blocks are shared by every conversation using it, a conversation's by its turns."""
    rng = random.Random(seed)
    systems = [rng.randint(1024, 4096) for _ in range(8)]
    next_id = 0
    shared: dict[tuple[str, int, int], int] = {}

    def block_id(key: tuple[str, int, int]) -> int:
        nonlocal next_id
        if key not in shared:
            shared[key] = next_id
            next_id += 1
        return shared[key]

    rows: list[dict[str, Any]] = []
    for conv in range(conversations):
        system = rng.randrange(len(systems))
        sys_len = systems[system]
        at_s = rng.uniform(0.0, span_s)
        context = sys_len
        for _turn in range(min(8, 1 + int(rng.expovariate(1 / 3.0)))):
            prompt = context + int(rng.lognormvariate(math.log(300), 0.8)) + 1
            output = max(1, int(rng.lognormvariate(math.log(250), 0.7)))
            hashes = []
            for k in range(-(-prompt // BLOCK)):
                if (k + 1) * BLOCK <= sys_len:
                    hashes.append(block_id(("sys", system, k)))
                elif (k + 1) * BLOCK <= prompt:
                    hashes.append(block_id(("conv", conv, k)))
                else:  # the partial last block: its own id, as it will not be whole again
                    hashes.append(block_id(("tail", conv, prompt)))
            rows.append({"timestamp": int(at_s * 1000), "input_length": prompt, "output_length": output,
                         "hash_ids": hashes})
            context = prompt + output
            at_s += 2.0 + output * 0.02 + rng.expovariate(1 / 30.0)
    rows.sort(key=lambda r: r["timestamp"])
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def scenario(trace: Path, policy: str, instances: int, host_tier_gb: float) -> Scenario:
    hosts = -(-instances // 8)
    engine: dict[str, Any] = {"enable_prefix_caching": True, "kv_events": True, "emit_tokens": False}
    if host_tier_gb > 0:
        engine["host_kv_cache_gb"] = host_tier_gb
    return Scenario.model_validate({
        "name": f"prefix reuse {trace.stem} {policy}", "duration_s": 1.0, "drain_s": 1800.0,
        "hosts": [{"region": "local", "sku": SKU, "gpus": 8, "count": hosts}],
        "deployments": [{"model": MODEL, "sku": SKU, "tp": 1, "min_replicas": instances, "max_replicas": instances,
                         "typical_prompt_tokens": 8192, "typical_output_tokens": 256}],
        "policy": "static", "routing_policy": policy, "engine": engine,
        "trace": {"path": trace, "assign": {"model": {MODEL: 1.0}}},
    })


def run_one(trace: Path, policy: str, instances: int, host_tier_gb: float, prompt_tokens: int,
            bound: float, duration_s: float, **update: Any) -> dict[str, Any]:
    sc = scenario(trace, policy, instances, host_tier_gb)
    sc = Scenario.model_validate({**sc.model_dump(), "duration_s": duration_s, **update})
    started = time.perf_counter()
    result = run_scenario(sc).result
    hit = result["prefix_hit_tokens"] / prompt_tokens
    host = result.get("prefix_host_hit_tokens", 0) / prompt_tokens
    return {
        "hit_rate": round(hit, 4), "host_hit_rate": round(host, 4),
        "ratio_to_bound": round(hit / bound, 4) if bound else None,
        "ttft_p50_s": result["ttft_p50_s"], "ttft_p99_s": result["ttft_p99_s"], "gpu_hours": result["gpu_hours"],
        "completed": result["completed"], "dropped": result["dropped"],
        "dropped_by_cause": result.get("dropped_by_cause", {}), "wall_s": round(time.perf_counter() - started, 2),
    }


def one_engine(requests: list[Request], memory_gb: float | None) -> float:
    """GPU hit rate of one Qwen2-7B engine fed the requests in arrival order; memory_gb None: a cache
    that holds everything (and a context that takes every prompt)."""
    catalog = default_catalog()
    model, sku = catalog.model(MODEL), catalog.sku(SKU)
    if memory_gb is None:
        sku = dataclasses.replace(sku, gpu_memory_gb=100_000.0)
    config = EngineConfig(enable_prefix_caching=True, emit_tokens=False,
                          max_model_len=model.max_context * 2 if memory_gb is None else None)
    engine = SimEngine("i-1", model, sku, 1, RooflineLatencyModel(model, sku, 1), config)
    replay(engine, [r for r in requests if r.prompt_tokens + r.output_tokens <= engine.max_request_tokens])
    return engine.prefix_hit_tokens / sum(r.prompt_tokens for r in requests)


def diagnose(instances: int, host_tier_gb: float) -> dict[str, Any]:
    catalog = default_catalog()
    model, sku = catalog.model(MODEL), catalog.sku(SKU)
    probe = SimEngine("probe", model, sku, 1, RooflineLatencyModel(model, sku, 1), EngineConfig())
    per_instance_blocks = probe.total_blocks * probe.config.block_size // BLOCK
    table: dict[str, Any] = {"instances": instances, "h100_cache_prefix_blocks": per_instance_blocks, "workloads": {}}
    for name, file in MOONCAKE.items():
        if (HEADS / file).exists():
            steps = diagnose_workload(HEADS / file, instances, host_tier_gb, per_instance_blocks, sku.gpu_memory_gb)
            bound = steps["bound (one unbounded cache, trace-level)"]
            for k, v in steps.items():
                print(f"{name:24s} {v:7.2%}  {v / bound:6.1%} of bound  {k}", file=sys.stderr)
            table["workloads"][name] = {k: round(v, 4) for k, v in steps.items()}
    return table


def diagnose_workload(path: Path, instances: int, host_tier_gb: float, per_instance_blocks: int,
                      memory_gb: float) -> dict[str, float]:
    """The hit rate at each step (see the module docstring), by step."""
    requests = [dataclasses.replace(r, model=MODEL) for r in read_mooncake_trace(path)]
    bound = prefix_reuse_bound(requests, BLOCK)
    prompt_tokens = sum(r.prompt_tokens for r in requests)
    duration_s = requests[-1].arrival_s + 1.0

    def fleet(policy: str, params: dict[str, Any] | None = None, kv_events: bool = True, host_gb: float = 0.0,
              **update: Any) -> float:
        engine = {"enable_prefix_caching": True, "kv_events": kv_events, "emit_tokens": False,
                  "host_kv_cache_gb": host_gb}
        run = run_one(path, policy, instances, 0.0, prompt_tokens, bound, duration_s, engine=engine,
                      router={"policy_params": params or {}}, **update)
        return float(run["hit_rate"] + run["host_hit_rate"])

    hosts = -(-instances // 8)
    n = f"{instances} instances,"
    steps = {
        "bound (one unbounded cache, trace-level)": bound,
        "1 instance, unbounded cache (engine)": one_engine(requests, None),
        "1 instance, H100 cache (engine)": one_engine(requests, memory_gb),
        f"one LRU as large as {instances} H100 caches (trace-level reference)":
            prefix_reuse_bound(requests, BLOCK, capacity_blocks=instances * per_instance_blocks),
        f"{n} round_robin": fleet("round_robin"),
        f"{n} jsq_tokens": fleet("jsq_tokens"),
        f"{n} prefix_affinity (first hash only)": fleet("prefix_affinity"),
        f"{n} prefix_affinity (first 8 hashes)": fleet("prefix_affinity", {"prefix_blocks": 8}),
        f"{n} prefix_affinity (first 8 hashes, load bound c=4)": fleet("prefix_affinity",
                                                                       {"prefix_blocks": 8, "load_factor": 4.0}),
        f"{n} kv_aware, load bound c=1.25": fleet("kv_aware", {"load_factor": 1.25}),
        f"{n} kv_aware, no KV events (routed blocks only)": fleet("kv_aware", kv_events=False),
        f"{n} kv_aware": fleet("kv_aware"),
        f"{n} kv_aware, a host reclaimed at 300 s (scale-in)":
            fleet("kv_aware", hosts=[{"region": "local", "sku": SKU, "gpus": 8, "count": hosts + 1}],
                  faults=[{"kind": "spot_preemption", "at_s": 300.0, "host": "local-h100-80gb-1", "notice_s": 30.0}]),
    }
    if host_tier_gb > 0:
        steps[f"{n} kv_aware, + {host_tier_gb:g} GB host tier each (GPU + host hits)"] = fleet(
            "kv_aware", host_gb=host_tier_gb)
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=16, help="Qwen2-7B TP1 instances (H100s); default 16")
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated routing policies")
    parser.add_argument("--host-tier-gb", type=float, default=0.0,
                        help="host-memory KV tier per instance, GB (0: off); a second kv_aware run uses it")
    parser.add_argument("--seed", type=int, default=7, help="seed of the multi-turn synthetic workload")
    parser.add_argument("--workloads", default="mooncake_conversation,mooncake_synthetic,multi_turn")
    parser.add_argument("--diagnose", action="store_true", help="the step-by-step diagnosis instead (see above)")
    ns = parser.parse_args()
    if ns.diagnose:
        print(json.dumps({"diagnosis": diagnose(ns.instances, ns.host_tier_gb), "machine": machine()}))
        return 0
    policies = [p for p in ns.policies.split(",") if p]
    wanted = [w for w in ns.workloads.split(",") if w]
    out: dict[str, Any] = {
        "fleet": {"model": MODEL, "sku": SKU, "tp": 1, "instances": ns.instances, "planner": "static",
                  "engine": "prefix caching on, KV events on, block 16, prefix block 512",
                  "host_tier_gb": ns.host_tier_gb},
        "machine": machine(), "workloads": {}, "skipped": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        traces: dict[str, Path] = {}
        for name, file in MOONCAKE.items():
            if name in wanted:
                if (HEADS / file).exists():
                    traces[name] = HEADS / file
                else:
                    out["skipped"].append(f"{name}: {HEADS / file} absent")
        if "multi_turn" in wanted:
            traces["multi_turn"] = Path(tmp) / "multi_turn.jsonl"
            multi_turn_trace(traces["multi_turn"], ns.seed)
        for name, path in traces.items():
            requests = list(read_mooncake_trace(path))
            bound = prefix_reuse_bound(requests, BLOCK)
            prompt_tokens = sum(r.prompt_tokens for r in requests)
            duration_s = requests[-1].arrival_s + 1.0
            entry: dict[str, Any] = {"requests": len(requests), "bound": round(bound, 4), "policies": {}}
            for policy in policies:
                entry["policies"][policy] = run_one(path, policy, ns.instances, 0.0, prompt_tokens, bound, duration_s)
                print(name, policy, entry["policies"][policy], file=sys.stderr)
            if ns.host_tier_gb > 0 and "kv_aware" in policies:
                entry["policies"]["kv_aware+host_tier"] = run_one(path, "kv_aware", ns.instances, ns.host_tier_gb,
                                                                  prompt_tokens, bound, duration_s)
            out["workloads"][name] = entry
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
