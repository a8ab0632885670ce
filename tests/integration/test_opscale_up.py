"""`opscale up` as a user runs it: every service as its own process against real NATS and Redis; a
request goes through; SIGTERM stops the whole stack cleanly (exit code 0, no process left behind)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from _stack import clean_namespace, stop_up

from opscale.runtime.live.local_servers import free_port_block

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _post(url: str, body: dict, timeout_s: float) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


SCENARIO = """
name: one host
duration_s: 60
hosts: [{region: eu-west, sku: H100-80GB, gpus: 8, count: 1}]
deployments: [{model: Llama-3-8B, sku: H100-80GB, tp: 1, min_replicas: 1, max_replicas: 2}]
engine: {max_num_seqs: 32}
load_time_scale: 0.02
"""


@pytest.mark.parametrize("fleet", ["agents", "scenario", "cloud"])
def test_opscale_up_serves_a_request_and_stops_cleanly_on_sigterm(nats_url: str, redis_url: str, namespace: str,
                                                                  fleet: str, tmp_path: Path) -> None:
    # `--agents 1`: one default host; `--scenario`: the fleet of a simulation scenario file; `--cloud local`:
    # its host is the planner's first VM, a node-agent process the planner starts (and stops on SIGTERM)
    base = free_port_block(64)
    if fleet in ("scenario", "cloud"):
        (tmp_path / "scenario.yaml").write_text(SCENARIO)
        launch = ["--scenario", str(tmp_path / "scenario.yaml")] + (["--cloud", "local"] if fleet == "cloud" else [])
    else:
        launch = ["--agents", "1"]
    env = dict(os.environ, OPSCALE_NATS_URL=nats_url, OPSCALE_REDIS_URL=redis_url, OPSCALE_NAMESPACE=namespace,
               OPSCALE_NODE_AGENT_LOAD_TIME_SCALE="0.02", OPSCALE_NODE_AGENT_HEARTBEAT_INTERVAL_S="0.5",
               OPSCALE_OPS_HOST="127.0.0.1", OPSCALE_ROUTER_HTTP_HOST="127.0.0.1",
               OPSCALE_NODE_AGENT_GRPC_HOST="127.0.0.1")
    proc = subprocess.Popen([sys.executable, "-m", "opscale.cli", "up", *launch, "--port-base", str(base)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        status, body = 0, {}
        while time.monotonic() < deadline:
            try:
                # held at the router until the planner's first instance is ready, then answered
                status, body = _post(f"http://127.0.0.1:{base}/v1/completions",
                                     {"model": "Llama-3-8B", "prompt": "hello", "max_tokens": 5}, timeout_s=60)
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        assert status == 200, body
        assert body["usage"]["completion_tokens"] == 5 and body["choices"][0]["text"]
        with urllib.request.urlopen(f"http://127.0.0.1:{base + 2}/healthz", timeout=5) as health:
            assert health.status == 200
    finally:
        text = stop_up(proc)
    assert proc.returncode == 0, text[-3000:]
    assert "stack stopped" in text and "killing it" not in text
    if fleet == "cloud":
        assert "vms: eu-west/H100-80GB/on_demand: 0 -> 1" in text and "started local-vm-1-eu-west-h100-80gb" in text
        assert "stopping local-vm-1-eu-west-h100-80gb" in text, text[-3000:]
        pid = int(text.split("started local-vm-1-eu-west-h100-80gb (pid ")[1].split(")")[0])
        with pytest.raises(ProcessLookupError):  # the planner stopped its VM's agent: nothing left behind
            os.kill(pid, 0)
    # no grpc_tls settings: the run made its own CA, and the planner commanded the agent over mTLS
    assert "gRPC over mTLS with a development CA made for this run" in text
    assert "CONTROL IS UNENCRYPTED: NATS without TLS and without credentials" in text
    if fleet == "scenario":
        assert "scenario one host: 1 router(s), 1 host(s), policy reactive" in text


@pytest.fixture(autouse=True)
async def _cleanup(nats_url: str, redis_url: str, namespace: str):  # noqa: ANN202
    """The stack's streams and keys live in the test's namespace; remove them afterwards."""
    yield
    await clean_namespace(nats_url, redis_url, namespace)
