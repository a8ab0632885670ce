"""`opscale up` as a user runs it: every service as its own process against real NATS and Redis; a
request goes through; SIGTERM stops the whole stack cleanly (exit code 0, no process left behind)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _free_block(size: int = 20) -> int:
    """A base port with `size` free ports above it (checked, not guaranteed; loopback only)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + size > 65000:
            continue
        ok = True
        for port in range(base, base + size):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free block of ports")


def _post(url: str, body: dict, timeout_s: float) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_opscale_up_serves_a_request_and_stops_cleanly_on_sigterm(nats_url: str, redis_url: str,
                                                                  namespace: str) -> None:
    base = _free_block()
    env = dict(os.environ, OPSCALE_NATS_URL=nats_url, OPSCALE_REDIS_URL=redis_url, OPSCALE_NAMESPACE=namespace,
               OPSCALE_NODE_AGENT_LOAD_TIME_SCALE="0.02", OPSCALE_NODE_AGENT_HEARTBEAT_INTERVAL_S="0.5",
               OPSCALE_OPS_HOST="127.0.0.1", OPSCALE_ROUTER_HTTP_HOST="127.0.0.1",
               OPSCALE_NODE_AGENT_GRPC_HOST="127.0.0.1")
    proc = subprocess.Popen([sys.executable, "-m", "opscale.cli", "up", "--agents", "1", "--port-base", str(base)],
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
        proc.send_signal(signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            pytest.fail(f"opscale up did not stop within 45 s:\n{output.decode()[-3000:]}")
    text = output.decode()
    assert proc.returncode == 0, text[-3000:]
    assert "stack stopped" in text and "killing it" not in text


@pytest.fixture(autouse=True)
async def _cleanup(nats_url: str, redis_url: str, namespace: str):  # noqa: ANN202
    """The stack's streams and keys live in the test's namespace; remove them afterwards."""
    yield
    from opscale.runtime.live.bus import NatsBus
    from opscale.runtime.live.store import RedisStore

    store = RedisStore(redis_url, namespace)
    await store.delete_namespace()
    await store.close()
    bus = NatsBus(namespace)
    await bus.connect(nats_url, f"cleanup-{namespace}", ensure_streams=False)
    await bus.delete_streams()
    await bus.close()
