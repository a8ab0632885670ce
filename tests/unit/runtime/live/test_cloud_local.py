"""The local VM actuator's process bookkeeping, with real short-lived child processes standing in for
node-agents: identity through the environment, graceful SIGTERM on scale-in, SIGKILL after the grace
period, and a crash reported as a terminated VM."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from opscale.cloud import CloudEvent, CloudEventKind
from opscale.model import Purchase, VmState
from opscale.runtime.live.cloud_local import NODE_AGENT_COMMAND, LocalProcessActuator

pytestmark = pytest.mark.unit

# A stand-in node-agent: records its environment, then runs until SIGTERM (which it records), unless
# told to ignore SIGTERM or to crash at once.
CHILD = r"""
import json, os, signal, sys, time
out = os.path.join(os.environ["CHILD_DIR"], os.environ["OPSCALE_NODE_AGENT_AGENT_ID"])
env = {k: v for k, v in os.environ.items() if k.startswith("OPSCALE_")}
mode = os.environ.get("CHILD_MODE", "normal")
if mode == "crash":
    sys.exit(3)
def on_term(signum, frame):
    with open(out + ".term", "w") as f:
        f.write("drained")
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else on_term)
with open(out + ".json.tmp", "w") as f:
    json.dump(env, f)
os.replace(out + ".json.tmp", out + ".json")
while True:
    time.sleep(0.05)
"""


def actuator(tmp_path: Path, mode: str = "normal", grace_s: float = 30.0) -> LocalProcessActuator:
    env = {"PATH": os.environ.get("PATH", ""), "CHILD_DIR": str(tmp_path), "CHILD_MODE": mode}
    return LocalProcessActuator(command=(sys.executable, "-c", CHILD), base_env=env, grace_s=grace_s,
                                config=tmp_path / "config.yaml")


def wait_for(check, what: str, limit_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """Poll until `check()`; the limit only keeps a broken test from hanging."""
    deadline = time.monotonic() + limit_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def events_until(act: LocalProcessActuator, kind: CloudEventKind, now_s: float) -> list[CloudEvent]:
    seen: list[CloudEvent] = []
    wait_for(lambda: bool(seen.extend(act.poll_events(now_s)) or any(e.kind is kind for e in seen)), kind.value)
    return seen


def test_default_command_is_how_opscale_up_starts_an_agent() -> None:
    assert NODE_AGENT_COMMAND[1:] == ("-m", "opscale.cli", "serve", "node-agent")


def test_scale_up_starts_agents_with_their_identity_and_scale_down_sends_sigterm(tmp_path: Path) -> None:
    act = actuator(tmp_path)
    try:
        up = act.ensure("eu-west", "H100-80GB", Purchase.SPOT, 2, 0.0)
        assert len(up.started) == 2 and up.live_before == 0
        assert [e.kind for e in act.poll_events(0.0)] == [CloudEventKind.REQUESTED, CloudEventKind.RUNNING] * 2
        for vm_id in up.started:
            wait_for(lambda v=vm_id: (tmp_path / f"{v}.json").exists(), f"{vm_id} to start")
            env = json.loads((tmp_path / f"{vm_id}.json").read_text())
            assert env["OPSCALE_NODE_AGENT_AGENT_ID"] == vm_id
            assert (env["OPSCALE_NODE_AGENT_REGION"], env["OPSCALE_NODE_AGENT_SKU"]) == ("eu-west", "H100-80GB")
            assert env["OPSCALE_NODE_AGENT_GPUS"] == "8" and env["OPSCALE_NODE_AGENT_GRPC_PORT"] == "0"
            assert env["OPSCALE_CONFIG"] == str(tmp_path / "config.yaml")
        assert act.ensure("eu-west", "H100-80GB", Purchase.SPOT, 2, 1.0).started == ()  # idempotent

        down = act.ensure("eu-west", "H100-80GB", Purchase.SPOT, 1, 2.0)
        assert down.released == (up.started[1],)  # the newest goes
        stopping = {v.vm_id: v.state for v in act.current(2.0)}
        assert stopping[up.started[1]] in (VmState.TERMINATING, VmState.TERMINATED)
        events = events_until(act, CloudEventKind.TERMINATED, 3.0)
        end = next(e for e in events if e.kind is CloudEventKind.TERMINATED)
        assert end.vm.vm_id == up.started[1] and end.reason == "stopped (exit code 0)"
        assert (tmp_path / f"{up.started[1]}.term").read_text() == "drained"  # it got SIGTERM, not SIGKILL
        assert [v.vm_id for v in act.current(4.0)] == [up.started[0]]
    finally:
        assert act.close(timeout_s=10.0) == 0


def test_an_agent_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    act = actuator(tmp_path, mode="stubborn", grace_s=5.0)
    try:
        vm_id = act.ensure("us-east", "A10G", Purchase.ON_DEMAND, 1, 0.0).started[0]
        wait_for(lambda: (tmp_path / f"{vm_id}.json").exists(), "the agent to start")
        act.release(vm_id, 10.0)
        act.release(vm_id, 11.0)  # idempotent
        assert [e.kind for e in act.poll_events(14.9)][-1] is CloudEventKind.TERMINATING
        events = act.poll_events(15.0)  # the grace period is over on the caller's clock
        assert [e.kind for e in events] == [CloudEventKind.TERMINATED]
        assert "killed after 5 s" in events[0].reason and act.current(15.0) == ()
    finally:
        act.close(timeout_s=5.0)


def test_an_agent_that_dies_on_its_own_is_reported_and_replaced(tmp_path: Path) -> None:
    act = actuator(tmp_path, mode="crash")
    try:
        first = act.ensure("us-east", "L40S", Purchase.ON_DEMAND, 1, 0.0).started[0]
        events = events_until(act, CloudEventKind.TERMINATED, 1.0)
        assert events[-1].vm.vm_id == first and events[-1].reason == "exited on its own with code 3"
        again = act.ensure("us-east", "L40S", Purchase.ON_DEMAND, 1, 2.0)
        assert again.live_before == 0 and len(again.started) == 1 and again.started[0] != first
    finally:
        act.close(timeout_s=5.0)


def test_unknown_sku_and_bad_count_fail_clearly(tmp_path: Path) -> None:
    act = actuator(tmp_path)
    with pytest.raises(ValueError, match="unknown sku 'B300'"):
        act.ensure("us-east", "B300", Purchase.SPOT, 1, 0.0)
    with pytest.raises(ValueError, match="count"):
        act.ensure("us-east", "A10G", Purchase.SPOT, -2, 0.0)
    with pytest.raises(KeyError, match="unknown local VM"):
        act.release("local-vm-9", 0.0)
