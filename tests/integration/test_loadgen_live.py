"""The load generator against the live stack: a 200-request slice of a synthetic trace, compressed 10x,
replayed open-loop through the router's HTTP API to a node-agent's simulated engine on real NATS and
Redis. No request is lost: the report's request count and the CSV's rows equal the slice's, and every
request completes with the output the trace asked for. The same with 200 requests of the Azure LLM 2023
conversation trace when ../shared/data holds it (slow)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import aiohttp
import pytest
from _stack import LiveStack
from test_live_stack import stack  # noqa: F401 - the live stack fixture, shared

from opscale.model import InstanceState
from opscale.reporting.latency_report import read_latency_csv
from opscale.runtime.live.grpc_glue import NodeAgentClient
from opscale.traces import (
    LengthDistribution,
    StreamSpec,
    SyntheticWorkloadConfig,
    generate_requests,
    read_trace,
    write_csv_trace,
)

from opscale_loadgen.replay import ReplayConfig, replay
from opscale_loadgen.trace_source import TraceWindow

pytestmark = pytest.mark.integration

SLICE = 200


async def _until_serving(live: LiveStack, timeout_s: float = 30.0) -> None:
    """Wait until the router lists the model and the agent has a ready instance."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{live.router_url}/v1/models") as resp:
                models = [m["id"] for m in (await resp.json())["data"]]
            async with NodeAgentClient(live.agent_address, 2.0, tls=live.planner_tls) as agent:
                hb = await agent.status()
            if live.model in models and any(i.state == InstanceState.READY for i in hb.instances):
                return
            if loop.time() > deadline:
                raise AssertionError(f"the stack was not serving {live.model} within {timeout_s} s")
            await asyncio.sleep(0.1)  # noqa: TID251 - polling a real server


def _synthetic_trace(path: Path, live: LiveStack) -> Path:
    config = SyntheticWorkloadConfig(
        seed=7, duration_s=120.0, amplitude=0.0, streams=(StreamSpec(model=live.model, region=live.region,
                                                                     base_rps=4.0),),
        prompt_tokens=LengthDistribution(median_tokens=64, sigma=0.5, max_tokens=256),
        output_tokens=LengthDistribution(median_tokens=6, sigma=0.5, max_tokens=16))
    # More than the slice, so --max-requests does the cutting.
    write_csv_trace(path, itertools.islice(generate_requests(config), SLICE + 50))
    return path


async def test_replay_through_the_live_stack_loses_no_request(stack: LiveStack, tmp_path: Path) -> None:  # noqa: F811
    trace = _synthetic_trace(tmp_path / "trace.csv", stack)
    await _until_serving(stack)
    config = ReplayConfig(trace=trace, url=stack.router_url, out=tmp_path / "out", compress=10.0,
                          max_requests=SLICE, timeout_s=30.0, progress=False)
    result = await asyncio.wait_for(replay(config), 120)

    report = result.report
    rows = list(read_latency_csv(result.requests_path))
    assert report["requests"] == SLICE == len(rows) == len({r["request_id"] for r in rows})
    assert report["errors"] == {} and report["completed"] == SLICE and report["not_sent"] == 0
    # the simulated engine generated exactly what the trace asked for
    assert all(r["output_tokens"] == r["requested_tokens"] for r in rows)
    assert report["tiers"].keys() == {"interactive", "batch"}
    assert report["ttft_p50_s"] is not None and report["replay"]["achieved_rps"] is not None


AZURE_CONV = (Path(__file__).resolve().parents[2].parent / "shared" / "data" / "azure_llm_2023"
              / "AzureLLMInferenceTrace_conv.csv")


@pytest.mark.slow  # about 30 s: 47,000 output tokens streamed through the router
async def test_replay_of_a_real_trace_slice_loses_no_request(stack: LiveStack, tmp_path: Path) -> None:  # noqa: F811
    if not AZURE_CONV.exists():
        pytest.skip(f"the Azure LLM 2023 trace is not at {AZURE_CONV}")
    await _until_serving(stack)
    # The Azure trace names no model or region: every request goes to the stack's model, in its region
    # by spill-over. 200 requests, a minute of the trace, replayed in 6 s.
    config = ReplayConfig(trace=AZURE_CONV, url=stack.router_url, out=tmp_path / "out", compress=10.0,
                          max_requests=SLICE, timeout_s=60.0, model=stack.model, progress=False)
    result = await asyncio.wait_for(replay(config), 120)
    rows = list(read_latency_csv(result.requests_path))
    assert result.report["requests"] == SLICE == len(rows) == len({r["request_id"] for r in rows})
    assert result.report["errors"] == {} and result.report["completed"] == SLICE


AZURE_CODE = AZURE_CONV.with_name("AzureLLMInferenceTrace_code.csv")


@pytest.mark.slow  # a minute of replay: ten minutes of the trace at 10x
async def test_ten_minutes_of_a_real_trace_at_10x_lose_no_request(stack: LiveStack, tmp_path: Path) -> None:  # noqa: F811
    if not AZURE_CODE.exists():
        pytest.skip(f"the Azure LLM 2023 trace is not at {AZURE_CODE}")
    await _until_serving(stack)
    window = TraceWindow(start_s=600.0, end_s=1200.0)  # the trace's second ten minutes
    expected = sum(1 for r in read_trace(AZURE_CODE) if window.start_s <= r.arrival_s < window.end_s)
    config = ReplayConfig(trace=AZURE_CODE, url=stack.router_url, out=tmp_path / "out", compress=10.0,
                          window=window, timeout_s=300.0, drain_s=300.0, model=stack.model, progress=False)
    result = await asyncio.wait_for(replay(config), 600)
    rows = list(read_latency_csv(result.requests_path))
    assert expected > 1000
    assert result.report["requests"] == expected == len(rows) == len({r["request_id"] for r in rows})
    assert result.report["errors"] == {} and result.report["completed"] == expected
