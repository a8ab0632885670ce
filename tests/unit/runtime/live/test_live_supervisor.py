"""Supervisor: cadence, per-step timeouts, backoff on error, heartbeats read by /healthz, restarts of
long-running tasks, and a stop that reports what is stuck. Waits are event-driven; the only clock that
is advanced by hand is the VirtualClock that stamps heartbeats."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import CollectorRegistry

from opscale.runtime.clock import VirtualClock
from opscale.runtime.live.supervisor import Supervisor, run_until_signalled

pytestmark = pytest.mark.unit

WAIT_S = 5.0


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """A supervisor test must leave no task behind (stop() is the only way out)."""
    before = asyncio.all_tasks()
    yield
    leaked = {t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()}
    assert not leaked, f"leaked tasks: {[t.get_name() for t in leaked]}"


class Counter:
    """A step that counts its runs and wakes waiters when a count is reached."""

    def __init__(self, fail_first: int = 0, exc: Exception | None = None) -> None:
        self.calls = 0
        self.fail_first = fail_first
        self.exc = exc or RuntimeError("flaky dependency")
        self._waiters: list[tuple[int, asyncio.Event]] = []

    async def __call__(self) -> None:
        self.calls += 1
        for n, event in self._waiters:
            if self.calls >= n:
                event.set()
        if self.calls <= self.fail_first:
            raise self.exc

    async def reached(self, n: int) -> None:
        event = asyncio.Event()
        if self.calls >= n:
            return
        self._waiters.append((n, event))
        await asyncio.wait_for(event.wait(), WAIT_S)


async def until(predicate: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0)  # noqa: TID251 - yield to the loops under test
    await asyncio.wait_for(poll(), WAIT_S)


async def test_periodic_loop_runs_and_beats() -> None:
    clock = VirtualClock(1000.0)
    sup = Supervisor("svc", clock=clock)
    step = Counter()
    sup.every("tick", period_s=0.001, step=step, timeout_s=1.0)
    sup.start()
    await step.reached(5)
    await until(lambda: sup.health()["loops"]["tick"]["runs"] >= 5)
    health = sup.health()
    assert health["ok"] and health["stuck"] == [] and health["service"] == "svc"
    assert health["loops"]["tick"]["failures"] == 0
    report = await sup.stop()
    assert report.clean and report.stopped == ("tick",)


async def test_errors_are_logged_with_the_loop_name_and_backed_off(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    sup = Supervisor("svc", clock=VirtualClock(), registry=registry)
    step = Counter(fail_first=3)
    sup.every("reconcile", period_s=0.001, step=step, timeout_s=1.0, max_backoff_s=0.002)
    with caplog.at_level(logging.WARNING, logger="opscale.runtime.live.supervisor"):
        sup.start()
        await step.reached(4)
        await until(lambda: sup.health()["loops"]["reconcile"]["runs"] >= 1)
    loop = sup.health()["loops"]["reconcile"]
    assert (loop["failures"], loop["consecutive_failures"]) == (3, 0)  # recovered: the streak resets
    assert "flaky dependency" in loop["last_error"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("loop reconcile failed: RuntimeError('flaky dependency') (1 in a row)" in m for m in messages)
    assert any("(3 in a row); next try in 0.00s" in m for m in messages)  # capped by max_backoff_s
    assert registry.get_sample_value("opscale_loop_failures_total", {"loop": "reconcile"}) == 3.0
    await sup.stop()


async def test_a_step_over_its_timeout_is_cut_off_and_counted() -> None:
    sup = Supervisor("svc", clock=VirtualClock())
    hang = asyncio.Event()
    calls = 0

    async def hangs_once() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await hang.wait()

    sup.every("slow", period_s=0.001, step=hangs_once, timeout_s=0.01)
    sup.start()
    await until(lambda: sup.health()["loops"]["slow"]["runs"] >= 1)
    loop = sup.health()["loops"]["slow"]
    assert loop["failures"] == 1 and loop["last_error"] == "timed out after 0.01s"
    await sup.stop()


async def test_a_loop_without_a_recent_beat_is_reported_stuck() -> None:
    clock = VirtualClock(0.0)
    sup = Supervisor("planner", clock=clock)
    started = asyncio.Event()
    release = asyncio.Event()

    async def blocks() -> None:
        started.set()
        await release.wait()

    sup.every("plan", period_s=1.0, step=blocks, timeout_s=60.0)  # deadline: 3 periods + timeout = 63 s
    sup.start()
    await asyncio.wait_for(started.wait(), WAIT_S)
    assert sup.health()["ok"]
    clock.advance(64.0)
    health = sup.health()
    assert not health["ok"] and health["stuck"] == ["plan"]
    assert health["loops"]["plan"]["problem"] == "no heartbeat for 64.0s (deadline 63.0s)"
    release.set()
    await until(lambda: sup.health()["ok"])  # the step finished: a fresh beat at the current time
    await sup.stop()


async def test_stop_reports_a_loop_that_ignores_cancellation() -> None:
    sup = Supervisor("svc", clock=VirtualClock())
    entered = asyncio.Event()
    finish = asyncio.Event()

    async def stubborn() -> None:
        entered.set()
        while True:
            try:
                await finish.wait()
                return
            except asyncio.CancelledError:
                continue  # the misbehaviour stop() must survive and report

    sup.every("stubborn", period_s=1.0, step=stubborn, timeout_s=60.0)
    sup.every("polite", period_s=0.001, step=Counter(), timeout_s=1.0)
    sup.start()
    await asyncio.wait_for(entered.wait(), WAIT_S)
    report = await sup.stop(timeout_s=0.05)
    assert report.stuck == ("stubborn",) and report.stopped == ("polite",) and not report.clean
    assert not sup.health()["ok"]  # a stopping service is not healthy
    finish.set()  # let it go so the test leaks nothing
    await until(lambda: all(t.done() for t in asyncio.all_tasks() if t.get_name().startswith("svc:")))


async def test_tasks_are_restarted_after_failures_and_checked_by_beats() -> None:
    clock = VirtualClock(0.0)
    sup = Supervisor("svc", clock=clock)
    runs = 0
    serving = asyncio.Event()
    forever = asyncio.Event()

    async def consumer() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise ConnectionError("server restarting")
        sup.beat("consumer")
        serving.set()
        await forever.wait()

    sup.task("consumer", consumer, deadline_s=30.0, max_backoff_s=0.001)
    sup.start()
    await asyncio.wait_for(serving.wait(), WAIT_S)
    loop = sup.health()["loops"]["consumer"]
    assert runs == 3 and loop["failures"] == 2 and loop["kind"] == "task"
    assert sup.health()["ok"]
    clock.advance(31.0)
    assert sup.health()["stuck"] == ["consumer"]
    assert (await sup.stop()).clean


async def test_a_task_that_gives_up_is_unhealthy() -> None:
    sup = Supervisor("svc", clock=VirtualClock())

    async def broken() -> None:
        raise ValueError("bad config")

    sup.task("server", broken, restart=False)
    sup.start()
    await until(lambda: not sup.health()["ok"])
    assert sup.health()["loops"]["server"]["problem"] == "task gave up: failed: ValueError('bad config')"
    await sup.stop()


async def test_loops_added_after_start_run_at_once() -> None:
    sup = Supervisor("svc", clock=VirtualClock())
    sup.start()
    step = Counter()
    sup.every("late", period_s=0.001, step=step, timeout_s=1.0)
    await step.reached(2)
    await sup.stop()
    with pytest.raises(RuntimeError, match="stopping"):
        sup.every("too-late", period_s=1.0, step=step, timeout_s=1.0)


def test_bad_registrations_name_the_loop_and_value() -> None:
    sup = Supervisor("svc", clock=VirtualClock())
    step = Counter()
    with pytest.raises(ValueError, match="loop 'x': period_s must be a finite number > 0, got 0"):
        sup.every("x", period_s=0, step=step, timeout_s=1.0)
    with pytest.raises(ValueError, match="loop 'x': timeout_s must be a finite number > 0, got nan"):
        sup.every("x", period_s=1.0, step=step, timeout_s=float("nan"))
    sup.every("x", period_s=1.0, step=step, timeout_s=1.0)
    with pytest.raises(ValueError, match="already exists"):
        sup.task("x", step)
    assert sup.health()["stuck"] == ["x"]  # registered but not started is not healthy


async def test_sigterm_stops_gracefully() -> None:
    sup = Supervisor("svc", clock=VirtualClock())
    step = Counter()
    sup.every("tick", period_s=0.001, step=step, timeout_s=1.0)

    async def send_sigterm_once_running() -> None:
        await step.reached(1)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = asyncio.create_task(send_sigterm_once_running())
    report = await asyncio.wait_for(run_until_signalled(sup), WAIT_S)
    await sender
    assert report.clean and report.stopped == ("tick",)
