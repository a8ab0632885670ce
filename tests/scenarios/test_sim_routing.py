"""Routing policies judged on whole simulated runs (fixed seeds): prefix affinity raises the prefix-cache
hit rate on a shared-prefix trace; kv_aware, fed the engines' KV events, keeps conversations on the
instances that hold them where first-block affinity cannot; tier priority keeps interactive TTFT within its objective in an
overload where first-come-first-served does not; spilling to another region keeps SLO attainment when
one region saturates. Behaviour is asserted, not exact figures."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from opscale.engine import EngineConfig
from opscale.experiments.runner import RunResult, run_scenario
from opscale.experiments.scenario import HostGroup, Scenario, TraceSource
from opscale.model import Request, TierModel
from opscale.planning import DeploymentSpec
from opscale.traces import write_csv_trace

pytestmark = pytest.mark.sim

MODEL = "Llama-3-8B"
SKU = "H100-80GB"
BLOCK_TOKENS = 512  # Mooncake's hash block, and the engine's prefix block
FIRST_ARRIVAL_S = 12.0  # after the planner's first plan (10 s): the fleet is up when traffic starts


def _write_shared_prefix_trace(path: Path, *, documents: int, requests: int, rps: float, seed: int) -> None:
    """A Mooncake-format trace in which every request reads one of `documents` long shared prefixes
    (4 blocks) followed by a question of its own (1 block): a retrieval or system-prompt workload."""
    rng = random.Random(seed)
    t_ms = FIRST_ARRIVAL_S * 1000
    with path.open("w") as out:
        for i in range(requests):
            t_ms += rng.expovariate(rps) * 1000
            doc = rng.randrange(documents)
            prefix = [doc * 10 + b for b in range(4)]
            unique = [1_000_000 + i]
            out.write(json.dumps({"timestamp": round(t_ms), "input_length": 5 * BLOCK_TOKENS - 7,
                                  "output_length": rng.randint(16, 64), "hash_ids": prefix + unique}) + "\n")


def _fleet(region_hosts: dict[str, int], replicas: int, **extra: Any) -> dict[str, Any]:
    return {
        "hosts": [HostGroup(region=r, sku=SKU, gpus=8, count=n) for r, n in region_hosts.items()],
        "deployments": [DeploymentSpec(model=MODEL, sku=SKU, tp=1, min_replicas=replicas, max_replicas=replicas)],
        "policy": "static", "policy_params": {"replicas": replicas},
        "warm_start_s": 60.0,  # the fleet is running when the first request comes (the first plan is at 10 s)
        **extra,
    }


def _run_mooncake(trace: Path, policy: str, engine: EngineConfig, duration_s: float) -> dict[str, Any]:
    """A Mooncake-format trace on 6 instances of one host in eu under `policy`: the run's result."""
    scenario = Scenario(
        name=f"{trace.stem} {policy}", seed=5, duration_s=duration_s, drain_s=120.0,
        trace=TraceSource(path=trace, format="mooncake", assign={"model": {MODEL: 1}, "region": {"eu": 1}}),
        routing_policy=policy, engine=engine, **_fleet({"eu": 1}, replicas=6))
    return run_scenario(scenario).result


def test_prefix_affinity_raises_the_prefix_cache_hit_rate(tmp_path: Path) -> None:
    trace = tmp_path / "shared_prefix.jsonl"
    _write_shared_prefix_trace(trace, documents=24, requests=1500, rps=25.0, seed=3)
    # Caches small enough that no instance can hold every document: where a prefix goes matters.
    engine = EngineConfig(emit_tokens=False, enable_prefix_caching=True, gpu_memory_utilization=0.25)

    def run(policy: str) -> dict[str, Any]:
        return _run_mooncake(trace, policy, engine, 85.0)

    spread, affine = run("jsq_tokens"), run("prefix_affinity")
    assert spread["dropped"] == affine["dropped"] == 0
    assert spread["requests"] == affine["requests"] > 1000
    assert affine["prefix_hit_rate"] > spread["prefix_hit_rate"] + 0.1
    assert affine["prefix_hit_rate"] > 0.5


def _mixed_overload_trace(path: Path, *, seconds: float, interactive_rps: float, batch_rps: float, seed: int) -> int:
    rng = random.Random(seed)
    requests: list[Request] = []
    for tier, rps in (("interactive", interactive_rps), ("batch", batch_rps)):
        t = FIRST_ARRIVAL_S
        while t < seconds:
            t += rng.expovariate(rps)
            requests.append(Request(f"{tier}-{len(requests)}", MODEL, tier, "eu", t,
                                    rng.randint(512, 2048), rng.randint(64, 256)))
    requests.sort(key=lambda r: r.arrival_s)
    return write_csv_trace(path, requests)


def test_tier_priority_keeps_interactive_ttft_where_fifo_does_not(tmp_path: Path) -> None:
    trace = tmp_path / "overload.csv"
    # Batch work alone asks for more than the fleet serves: requests queue at the router (admission
    # limit), and only the order in which they leave the queue decides interactive TTFT.
    _mixed_overload_trace(trace, seconds=120.0, interactive_rps=3.0, batch_rps=40.0, seed=11)
    tiers = [TierModel(name="interactive", ttft_slo_s=2.0, tbt_slo_s=0.1),
             TierModel(name="batch", ttft_slo_s=3600.0, tbt_slo_s=1.0, deadline_s=3600.0, priority=1)]

    def run(hold_order: str) -> RunResult:
        scenario = Scenario(
            name=f"overload {hold_order}", seed=2, duration_s=125.0, drain_s=1800.0, tiers=tiers,
            trace=TraceSource(path=trace),
            router={"hold_order": hold_order, "max_outstanding_tokens_per_instance": 16_384,
                    "pending_timeout_s": 3000.0, "max_pending_per_model": 100_000},
            **_fleet({"eu": 1}, replicas=2))
        return run_scenario(scenario)

    fifo, priority = run("fifo").result, run("tier_priority").result
    for result in (fifo, priority):
        assert result["dropped"] == 0
    fifo_i, prio_i = fifo["tiers"]["interactive"], priority["tiers"]["interactive"]
    assert fifo_i["ttft_p99_s"] > 2.0  # first-come-first-served: interactive waits behind batch
    assert prio_i["ttft_p99_s"] <= 2.0
    assert prio_i["slo_attainment"] > fifo_i["slo_attainment"] + 0.2
    assert priority["tiers"]["batch"]["slo_attainment"] == 1.0  # batch still meets its deadline


def test_spilling_to_another_region_keeps_slo_when_one_region_saturates(tmp_path: Path) -> None:
    trace = tmp_path / "hot_region.csv"
    rng = random.Random(7)
    requests: list[Request] = []
    t = FIRST_ARRIVAL_S
    while t < 150.0:
        t += rng.expovariate(45.0)  # all from us-east: more than its two instances serve, less than four
        requests.append(Request(f"r{len(requests)}", MODEL, "interactive", "us-east", t,
                                rng.randint(512, 2048), rng.randint(64, 256)))
    write_csv_trace(trace, requests)

    def run(policy: str) -> dict[str, Any]:
        scenario = Scenario(
            name=f"spill {policy}", seed=4, duration_s=155.0, drain_s=900.0, trace=TraceSource(path=trace),
            routing_policy=policy, router={"pending_timeout_s": 600.0, "max_pending_per_model": 100_000},
            hosts=[HostGroup(region="us-east", sku=SKU, gpus=8, count=1),
                   HostGroup(region="eu-west", sku=SKU, gpus=8, count=1)],
            deployments=[DeploymentSpec(model=MODEL, sku=SKU, tp=1, min_replicas=2, max_replicas=2)],
            policy="static", policy_params={"replicas": 2}, warm_start_s=60.0)
        return run_scenario(scenario).result

    local, spill = run("jsq_tokens"), run("multi_region")
    assert local["dropped"] == spill["dropped"] == 0
    assert local["slo_attainment"] < 0.9  # the hot region alone cannot keep up
    assert spill["slo_attainment"] > 0.95
    assert spill["slo_attainment"] > local["slo_attainment"] + 0.1


def _write_conversation_trace(path: Path, *, conversations: int, turns: int, seed: int) -> None:
    """A Mooncake-format chat trace: every prompt opens with one shared system-prompt block (as in the
    Mooncake conversation trace, whose requests all share their first block), then the conversation's
    history, which grows by two blocks a turn and is resent whole."""
    rng = random.Random(seed)
    rows = []
    for conv in range(conversations):
        t_s = FIRST_ARRIVAL_S + rng.uniform(0.0, 40.0)
        for turn in range(turns):
            blocks = 3 + 2 * turn
            hashes = [0] + [1000 * conv + b for b in range(1, blocks)] + [10**7 + 100 * conv + turn]
            rows.append((t_s, {"input_length": blocks * BLOCK_TOKENS + 100, "output_length": rng.randint(16, 48),
                               "hash_ids": hashes}))
            t_s += rng.uniform(4.0, 12.0)
    rows.sort(key=lambda r: r[0])
    with path.open("w") as out:
        for t_s, row in rows:
            out.write(json.dumps({"timestamp": round(t_s * 1000), **row}) + "\n")


def test_kv_aware_follows_the_engines_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from opscale.experiments import runner
    from opscale.routing.kv_aware import KvAware

    trace = tmp_path / "chat.jsonl"
    _write_conversation_trace(trace, conversations=60, turns=6, seed=4)
    engine = EngineConfig(emit_tokens=False, enable_prefix_caching=True, kv_events=True, gpu_memory_utilization=0.3)
    worlds: list[Any] = []
    build = runner.build_world

    def capture(*args: Any, **kwargs: Any) -> Any:
        world, collector = build(*args, **kwargs)
        worlds.append(world)
        return world, collector

    monkeypatch.setattr(runner, "build_world", capture)

    def run(policy: str) -> dict[str, Any]:
        return _run_mooncake(trace, policy, engine, 120.0)

    spread, affine, aware = run("jsq_tokens"), run("prefix_affinity"), run("kv_aware")
    assert spread["dropped"] == affine["dropped"] == aware["dropped"] == 0
    # prefix_affinity keys on the first block, which every request shares: no better than spreading
    assert aware["prefix_hit_tokens"] > 1.3 * max(spread["prefix_hit_tokens"], affine["prefix_hit_tokens"])
    policy = next(iter(worlds[-1].routers.values())).policy
    assert isinstance(policy, KvAware)
    stats = policy.index.stats
    # the engines' events reached the router through the node-agents' ticks, none of them refused
    assert stats.batches > 0 and stats.stored > 0 and stats.removed > 0
    assert stats.malformed == stats.unknown_instance == stats.stale == stats.out_of_order == 0
