"""`opscale up` restarts a child that dies on its own, with backoff, and says so (issue 16, item 6): the
stack no longer stops because one process died. Real child processes (small Python scripts in place of
the services); the backoff is configuration, nothing here measures time."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from opscale_services.launcher import RestartPolicy, _supervise

pytestmark = pytest.mark.unit

GUARD_S = 30.0  # hang guard only

# Each run appends a line to RUNS; the first `CRASHES` runs exit with code 3, later ones stay up.
CHILD = """
import os, sys, time
runs = os.environ["RUNS"]
with open(runs, "a") as f:
    f.write("run\\n")
if sum(1 for _ in open(runs)) <= int(os.environ["CRASHES"]):
    sys.exit(3)
time.sleep(120)
"""

QUICK = RestartPolicy(max_restarts=3, backoff_s=0.01, max_backoff_s=0.05, stable_s=3600.0)


def runs(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def child_env(tmp_path: Path, crashes: int) -> dict[str, str]:
    return {**os.environ, "RUNS": str(tmp_path / "runs"), "CRASHES": str(crashes)}


def test_restart_policy_backs_off_exponentially_to_its_cap() -> None:
    policy = RestartPolicy(backoff_s=1.0, max_backoff_s=30.0)
    assert [policy.delay_s(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_child_that_dies_is_restarted_and_the_stack_keeps_running(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="opscale.up")
    stop = threading.Event()

    def stop_once_running_again() -> None:
        deadline = time.monotonic() + GUARD_S
        while runs(tmp_path / "runs") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # noqa: TID251 - polling a child process's progress
        time.sleep(0.3)  # noqa: TID251 - a few supervision rounds with the child up
        stop.set()

    watcher = threading.Thread(target=stop_once_running_again)
    watcher.start()
    code = _supervise([("flaky", child_env(tmp_path, crashes=2))], grace_s=5.0, policy=QUICK, stop=stop,
                      command=lambda _: [sys.executable, "-c", CHILD])
    watcher.join()
    assert code == 0  # stopped on request, the restarted child stopped cleanly
    assert runs(tmp_path / "runs") == 3  # two deaths, two restarts, and the third run stayed up
    restarting = [r.getMessage() for r in caplog.records if "restarting it in" in r.getMessage()]
    assert len(restarting) == 2 and "flaky exited with code 3" in restarting[0] and "(restart 1 of 3)" in restarting[0]


def test_a_child_that_keeps_dying_stops_the_stack_after_bounded_restarts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="opscale.up")
    code = _supervise([("broken", child_env(tmp_path, crashes=1000))], grace_s=5.0, policy=QUICK,
                      command=lambda _: [sys.executable, "-c", CHILD])
    assert code == 1
    assert runs(tmp_path / "runs") == 1 + QUICK.max_restarts
    assert any("after 3 restarts in a row; stopping the stack" in r.getMessage() for r in caplog.records)


def test_a_child_that_refuses_its_settings_stops_the_stack_at_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Exit code 2 is bad input (opscale.cli.errors): restarting would refuse the same settings again."""
    caplog.set_level(logging.INFO, logger="opscale.up")
    code = _supervise([("misconfigured", child_env(tmp_path, crashes=0))], grace_s=5.0, policy=QUICK,
                      command=lambda _: [sys.executable, "-c", "import sys; sys.exit(2)"])
    assert code == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("misconfigured refused its settings" in m for m in messages)
    assert not any("restarting it in" in m for m in messages)
