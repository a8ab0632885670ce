"""HeteroScale live: under rising load the planner scales a disaggregated deployment's prefill and decode
pools together, at the P/D ratio, on real NATS and Redis.

`opscale up --scenario` runs a prefill host and a decode host of simulated engines (room for 3 prefill and
6 decode instances), the `heteroscale` policy at a 1:2 P/D ratio with a small per-instance decode TPS
target, a short period and short cooldowns, and fast model loads. The deployment starts at its minimum,
1P/1D. The test then sends requests at a rate that rises in steps and checks, from every plan the planner
publishes:

- both pools grew (the prefill pool too, which sees no decode TPS of its own);
- every plan keeps prefill:decode within one instance of the split `ratio.arrange` gives for its total;
- the planner said why: "scale out" on the service's pools, with the decode TPS it saw, which must be the
  decode pool's measured tokens (non-zero, and near the output tokens/s the load asks for), not zero;
- every request completed.

Latency feedback is turned off: the engines are paced in real time on a shared machine, where TBT and
TTFT measure CPU contention rather than the modelled GPUs; the proportional law on decode TPS is what this
test is about (the feedback tiers have their unit tests). No wall-clock threshold: the load's steps are
long against the planner's period, and the checks read what the planner published.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from _stack import eventually_while_up, start_up_scenario, stop_up
from conftest import BusFactory

from opscale.model import InstanceState, Plan, Role
from opscale.planning.heteroscale.config import parse_pd_ratio
from opscale.planning.heteroscale.ratio import RoleBounds, arrange
from opscale.runtime.live.bus import Delivery
from opscale.runtime.live.store import RedisStore
from opscale.services import subjects

pytestmark = pytest.mark.integration

MODEL = "Llama-3-8B"
PD_RATIO = "1:2"
BOUNDS = RoleBounds(min_prefill=1, max_prefill=3, min_decode=1, max_decode=6)
DECODE_TPS_PER_INSTANCE = 20.0
PROMPT_TOKENS = 32
OUTPUT_TOKENS = 48
# Requests/s per step of the load, each held for STEP_S: 48, 96 and 192 output tokens/s, i.e. about 2.4,
# 4.8 and 9.6 instances at 20 decode tokens/s each (the last one more than the bounds allow).
STEPS_RPS = (1.0, 2.0, 4.0)
STEP_S = 9.0

SCENARIO = f"""
name: pd live scaling
duration_s: 60
policy: heteroscale
policy_params:
  decode_tps_per_instance: {DECODE_TPS_PER_INSTANCE}
  pd_ratio: "{PD_RATIO}"
  period_s: 2
  scale_out_cooldown_s: 2
  scale_in_cooldown_s: 600     # no scale-in while the load rises step by step
  ttft_feedback: null
  tbt_feedback:                # off in effect: see the module docstring
    moderate: {{over_objective: 1000, capacity_step: 0.1}}
    severe: {{over_objective: 2000, capacity_step: 0.2}}
hosts:
  - {{region: eu-west, sku: H100-80GB, gpus: {BOUNDS.max_prefill}, count: 1, s0: leaf-a, s1: pod-1}}
  - {{region: eu-west, sku: H20, gpus: {BOUNDS.max_decode}, count: 1, s0: leaf-b, s1: pod-1}}
deployments:
  - model: {MODEL}
    prefill: {{sku: H100-80GB, tp: 1, min_replicas: {BOUNDS.min_prefill}, max_replicas: {BOUNDS.max_prefill}}}
    decode: {{sku: H20, tp: 1, min_replicas: {BOUNDS.min_decode}, max_replicas: {BOUNDS.max_decode}}}
engine: {{max_num_seqs: 64, report_window_s: 3}}
planner: {{interval_s: 1}}
load_time_scale: 0.01
"""


@dataclass(frozen=True)
class SeenPlan:
    at_s: float  # time.monotonic() when it arrived
    epoch: int
    prefill: int
    decode: int
    reason: str
    instances: frozenset[str]  # the model's discoverable instances


def counts(plan: Plan) -> tuple[int, int]:
    """(prefill, decode) instances of the model that routers may send work to."""
    found = {Role.PREFILL: 0, Role.DECODE: 0}
    for spec in plan.discoverable().values():
        if spec.model == MODEL and spec.role in found:
            found[spec.role] += 1
    return found[Role.PREFILL], found[Role.DECODE]


async def test_rising_load_scales_prefill_and_decode_together_at_the_pd_ratio(
        nats_url: str, redis_url: str, namespace: str, bus_factory: BusFactory, store: RedisStore,
        tmp_path: Path) -> None:
    bus = await bus_factory()
    plans: list[SeenPlan] = []
    served_by: dict[str, tuple[str, str]] = {}  # request id -> (prefill instance, decode instance)
    ready: set[str] = set()  # instances a heartbeat has reported ready

    async def on_plan(delivery: Delivery) -> None:
        plan = delivery.event.plan
        prefill, decode = counts(plan)
        plans.append(SeenPlan(time.monotonic(), plan.epoch, prefill, decode, plan.reason,
                              frozenset(i for i, spec in plan.discoverable().items() if spec.model == MODEL)))

    async def on_heartbeat(delivery: Delivery) -> None:
        for st in delivery.event.instances:
            if st.state == InstanceState.READY:
                ready.add(st.instance_id)

    async def on_records(delivery: Delivery) -> None:
        for outcome in delivery.event:
            if outcome.status == "ok":
                served_by[outcome.request_id] = (outcome.prefill_instance_id, outcome.instance_id)

    await bus.subscribe(subjects.PLANS_ALL, "test-pd-scaling-plans", on_plan, deliver="new")
    await bus.subscribe(subjects.RECORDS_ALL, "test-pd-scaling-records", on_records, deliver="new")
    await bus.subscribe(subjects.HEARTBEATS_ALL, "test-pd-scaling-heartbeats", on_heartbeat, deliver="new")

    proc, base = start_up_scenario(SCENARIO, tmp_path, nats_url, redis_url, namespace)
    try:
        async with aiohttp.ClientSession() as session:
            # The minimum, 1P/1D, serving end to end: one request streams through both roles.
            await eventually_while_up(lambda: plans and (plans[-1].prefill, plans[-1].decode) == (1, 1), proc, timeout_s=90)
            await _eventually_served(session, base, proc, timeout_s=60)
            load_began = time.monotonic()
            del plans[:-1]  # the last plan before the load is its starting point
            outcomes = await _rising_load(session, base, proc)
        # the routers' records of the load's requests (and of the probe's), published in batches
        await eventually_while_up(lambda: len(served_by) >= len(outcomes), proc, timeout_s=30)
        # every instance the last plan asked for came up (loads are short against the load's last step)
        await eventually_while_up(lambda: plans[-1].instances <= ready, proc, timeout_s=30)
        stored = await store.load_plan()  # what a restarted planner would continue from
    finally:
        output = stop_up(proc)
    assert proc.returncode == 0, output[-3000:]

    share = parse_pd_ratio(PD_RATIO)
    assert isinstance(share, float)
    seen_tps = [(p, _seen_decode_tps(p.reason)) for p in plans]
    print(f"\nP/D live scaling ({len(outcomes)} requests at {STEPS_RPS} req/s, {STEP_S:.0f} s each; offered "
          f"{[r * OUTPUT_TOKENS for r in STEPS_RPS]} output tokens/s):")
    for p, tps in seen_tps:
        step = min(len(STEPS_RPS), max(0, int((p.at_s - load_began) // STEP_S) + 1))  # 0: before the load
        print(f"  t={p.at_s - load_began:5.1f}s (step {step}) epoch {p.epoch}: {p.prefill}P/{p.decode}D"
              + (f", decode TPS seen {tps:.0f}" if tps is not None else "") + f"  [{p.reason[:110]}]")

    # Every request completed, all its tokens served.
    failed = [o for o in outcomes if o != OUTPUT_TOKENS]
    assert not failed, f"{len(failed)} of {len(outcomes)} requests failed: {failed[:5]}"

    # Both pools grew from 1P/1D, and every plan kept the ratio within one instance of its total's split.
    start, grown = plans[0], plans[-1]
    assert stored is not None and (stored.epoch, counts(stored)) == (grown.epoch, (grown.prefill, grown.decode))
    assert (start.prefill, start.decode) == (1, 1)
    assert grown.prefill > start.prefill and grown.decode > start.decode, plans
    for p in plans:
        want = arrange(p.prefill + p.decode, share, BOUNDS)
        assert abs(p.prefill - want[0]) <= 1 and abs(p.decode - want[1]) <= 1, (p, want)

    # The decode instances it added served: the router spread the decodes (each holds a request for a
    # while) over the grown pool. Prefills are short: how many prefill instances took one is the
    # routing's tie-break, not the planner's doing, so it is reported, not asserted.
    prefills, decodes = {p for p, _ in served_by.values()}, {d for _, d in served_by.values()}
    print(f"  served by {len(prefills)} prefill and {len(decodes)} decode instances")
    assert len(decodes) > start.decode, served_by

    # The planner said why, for the service's pools: scale out on the decode TPS it measured, which is the
    # decode pool's real tokens (non-zero, no more than the load offered, a good share of it at the top).
    outs = [(p, tps) for p, tps in seen_tps if "scale out" in p.reason]
    assert outs, [p.reason for p in plans]
    assert all(tps is not None and tps > 0 for _, tps in outs), outs
    for role in ("prefill", "decode"):  # one decision, on both pools of the service
        assert any(f"{MODEL}/eu-west/{role}: scale out" in p.reason for p, _ in outs), [p.reason for p, _ in outs]
    top_offered = max(STEPS_RPS) * OUTPUT_TOKENS
    top_seen = max(tps for _, tps in outs if tps is not None)
    assert top_seen <= 1.5 * top_offered, (top_seen, top_offered)
    assert top_seen >= 0.25 * top_offered, (top_seen, top_offered)
    assert re.search(rf"plan epoch \d+: .*{re.escape(MODEL)}.*scale out", output), output[-3000:]


def _seen_decode_tps(reason: str) -> float | None:
    """The decode TPS behind a decision, from its reason ("decode_tps needs 4.8 instances, ...")."""
    found = re.search(r"decode_tps needs ([0-9.]+) instances", reason)
    return float(found.group(1)) * DECODE_TPS_PER_INSTANCE if found else None


async def _complete(session: aiohttp.ClientSession, base: int) -> int | str:
    """One streamed request through the router: the tokens it streamed, or what went wrong."""
    body = {"model": MODEL, "prompt": [7] * PROMPT_TOKENS, "max_tokens": OUTPUT_TOKENS, "stream": True}
    try:
        async with session.post(f"http://127.0.0.1:{base}/v1/completions", json=body,
                                timeout=aiohttp.ClientTimeout(total=60)) as resp:
            if resp.status != 200:
                return f"HTTP {resp.status}: {(await resp.text())[:200]}"
            tokens = 0
            async for line in resp.content:
                data = line.decode().strip().removeprefix("data: ")
                if data and data != "[DONE]":
                    tokens += json.loads(data)["choices"][0]["text"].count("tok")
            return tokens
    except (TimeoutError, aiohttp.ClientError) as exc:
        return f"{type(exc).__name__}: {exc}"


async def _rising_load(session: aiohttp.ClientSession, base: int, proc: subprocess.Popen[bytes]) -> list[int | str]:
    """Requests at each step's rate (evenly spaced), then every answer."""
    tasks: list[asyncio.Task[int | str]] = []
    for rps in STEPS_RPS:
        step_began = time.monotonic()
        for i in range(round(rps * STEP_S)):
            # Sent on a schedule, not after the previous answer: the load does not slow with the stack.
            await asyncio.sleep(max(0.0, step_began + i / rps - time.monotonic()))  # noqa: TID251 - pacing the load
            tasks.append(asyncio.create_task(_complete(session, base)))
        if proc.poll() is not None:
            break
    return list(await asyncio.gather(*tasks))


async def _eventually_served(session: aiohttp.ClientSession, base: int, proc: subprocess.Popen[bytes],
                             timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last: int | str = "not tried"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"opscale up exited early:\n{proc.stdout.read().decode()[-3000:]}")  # type: ignore[union-attr]
        last = await _complete(session, base)
        if last == OUTPUT_TOKENS:
            return
        await asyncio.sleep(0.3)  # noqa: TID251 - waiting for instances to become ready
    raise AssertionError(f"no request served within {timeout_s} s: {last}")

