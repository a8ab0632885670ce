"""Supervision of a live service's loops: a cadence, a deadline and a heartbeat for each.

`every(name, period_s, step, timeout_s)` runs `step` at a fixed rate (missed ticks are skipped, never
bunched), each run under `timeout_s`; an error or timeout is logged with the loop's name and retried
after an exponential backoff. `task(name, run)` keeps a long-running coroutine alive, restarting it
with backoff when it fails. Every successful step (or `beat(name)` from a task) is a heartbeat;
`health()` reports, for /healthz, which loops have not beaten within their deadline.

`stop()` cancels everything, waits up to a deadline and reports the loops that did not finish (a step
that swallows cancellation, or blocks the event loop) instead of hanging shutdown.
`run_until_signalled()` wires SIGINT/SIGTERM to a graceful stop.

Heartbeat times come from the injected Clock (wall-clock seconds by default, a VirtualClock in tests);
cadence and backoff use the event loop's monotonic time, which is what asyncio.sleep waits on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from opscale.runtime.clock import Clock, WallClock

__all__ = ["StopReport", "Supervisor", "install_signal_handlers", "run_until_signalled"]

log = logging.getLogger(__name__)

Step = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class StopReport:
    """What `stop()` found: `stuck` names the loops still running after the deadline."""

    stopped: tuple[str, ...]
    stuck: tuple[str, ...]

    @property
    def clean(self) -> bool:
        return not self.stuck


@dataclass(slots=True)
class _Loop:
    name: str
    period_s: float | None  # None: a long-running task
    timeout_s: float | None
    deadline_s: float | None  # None: a task checked only for being alive
    max_backoff_s: float
    step: Step
    restart: bool = True
    last_beat_s: float = 0.0
    runs: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    finished: bool = False
    task: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class _Metrics:
    failures: Counter
    step_s: Histogram

    @staticmethod
    def create(registry: CollectorRegistry) -> _Metrics:
        return _Metrics(
            failures=Counter("opscale_loop_failures", "Failed or timed-out loop steps", ["loop"], registry=registry),
            step_s=Histogram("opscale_loop_step_seconds", "Duration of successful loop steps", ["loop"],
                             registry=registry),
        )


def _positive(value: float, label: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"loop {name!r}: {label} must be a finite number > 0, got {value!r}")
    return float(value)


class Supervisor:
    """Runs and watches the loops of one service. See the module docstring."""

    def __init__(self, service: str, *, clock: Clock | None = None, stop_timeout_s: float = 10.0,
                 registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self._clock = clock or WallClock()
        self._stop_timeout_s = stop_timeout_s
        self._loops: dict[str, _Loop] = {}
        self._started = False
        self._stopping = False
        self._metrics = _Metrics.create(registry) if registry is not None else None

    # -- registration ----------------------------------------------------------------------------------

    def every(self, name: str, period_s: float, step: Step, timeout_s: float, *, deadline_s: float | None = None,
              max_backoff_s: float | None = None) -> None:
        """Run `step` every `period_s` seconds, each run bounded by `timeout_s`.

        The loop is healthy while a step has succeeded within `deadline_s` (default: three periods plus
        the timeout). After n consecutive failures it waits `period_s * 2**(n-1)`, at most
        `max_backoff_s` (default 16 periods), before the next try.
        """
        period = _positive(period_s, "period_s", name)
        timeout = _positive(timeout_s, "timeout_s", name)
        deadline = _positive(deadline_s, "deadline_s", name) if deadline_s is not None else 3 * period + timeout
        backoff = _positive(max_backoff_s, "max_backoff_s", name) if max_backoff_s is not None else 16 * period
        self._add(_Loop(name=name, period_s=period, timeout_s=timeout, deadline_s=deadline, max_backoff_s=backoff,
                        step=step))

    def task(self, name: str, run: Step, *, deadline_s: float | None = None, restart: bool = True,
             max_backoff_s: float = 30.0) -> None:
        """Keep the long-running coroutine `run()` going (a consumer, a server). If it raises it is
        restarted after a backoff when `restart`; with `deadline_s` it must call `beat(name)` at least
        that often to count as healthy, otherwise being alive is enough."""
        deadline = _positive(deadline_s, "deadline_s", name) if deadline_s is not None else None
        self._add(_Loop(name=name, period_s=None, timeout_s=None, deadline_s=deadline,
                        max_backoff_s=_positive(max_backoff_s, "max_backoff_s", name), step=run, restart=restart))

    def _add(self, loop: _Loop) -> None:
        if loop.name in self._loops:
            raise ValueError(f"supervisor {self.service}: a loop named {loop.name!r} already exists")
        if self._stopping:
            raise RuntimeError(f"supervisor {self.service} is stopping; cannot add {loop.name!r}")
        self._loops[loop.name] = loop
        if self._started:
            self._launch(loop)

    # -- running ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every registered loop (loops added later start at once). Needs a running event loop."""
        if self._started:
            return
        self._started = True
        for loop in self._loops.values():
            self._launch(loop)

    def _launch(self, loop: _Loop) -> None:
        # A new loop counts as fresh: it gets a full deadline to produce its first beat.
        loop.last_beat_s = self._clock.now_s()
        if loop.period_s is not None and loop.timeout_s is not None:
            runner = self._run_periodic(loop, loop.period_s, loop.timeout_s)
        else:
            runner = self._run_task(loop)
        loop.task = asyncio.get_running_loop().create_task(runner, name=f"{self.service}:{loop.name}")

    def beat(self, name: str) -> None:
        """Record that `name` is making progress (for long-running tasks; periodic steps beat themselves)."""
        self._loops[name].last_beat_s = self._clock.now_s()

    def _failed(self, loop: _Loop, error: str, exc: BaseException | None) -> float:
        loop.failures += 1
        loop.consecutive_failures += 1
        loop.last_error = error
        if self._metrics is not None:
            self._metrics.failures.labels(loop=loop.name).inc()
        base = loop.period_s if loop.period_s is not None else 0.5
        delay_s = min(loop.max_backoff_s, base * 2 ** min(loop.consecutive_failures - 1, 30))
        log.warning("%s: loop %s %s (%d in a row); next try in %.2fs", self.service, loop.name, error,
                    loop.consecutive_failures, delay_s, exc_info=exc)
        return delay_s

    async def _run_periodic(self, loop: _Loop, period_s: float, timeout_s: float) -> None:
        ev = asyncio.get_running_loop()
        next_at = ev.time()
        while not self._stopping:
            started = ev.time()
            try:
                async with asyncio.timeout(timeout_s):
                    await loop.step()
            except TimeoutError:
                delay_s = self._failed(loop, f"timed out after {timeout_s}s", None)
                next_at = ev.time() + delay_s
            except Exception as exc:  # noqa: BLE001 - a failing step is logged and retried, never fatal
                delay_s = self._failed(loop, f"failed: {exc!r}", exc)
                next_at = ev.time() + delay_s
            else:
                loop.runs += 1
                loop.consecutive_failures = 0
                loop.last_beat_s = self._clock.now_s()
                if self._metrics is not None:
                    self._metrics.step_s.labels(loop=loop.name).observe(ev.time() - started)
                # Fixed rate: the next run is due one period after the previous due time; if the step
                # overran, skip the missed ticks rather than run them back to back.
                next_at += period_s
                if next_at < ev.time():
                    next_at = ev.time() + period_s
            if self._stopping:
                return
            await asyncio.sleep(max(0.0, next_at - ev.time()))

    async def _run_task(self, loop: _Loop) -> None:
        while not self._stopping:
            try:
                await loop.step()
            except Exception as exc:  # noqa: BLE001 - restarted with backoff below
                delay_s = self._failed(loop, f"failed: {exc!r}", exc)
                if not loop.restart:
                    loop.finished = True
                    return
                await asyncio.sleep(delay_s)
                loop.last_beat_s = self._clock.now_s()
                continue
            loop.runs += 1
            loop.finished = True
            if not self._stopping:
                log.info("%s: task %s finished", self.service, loop.name)
            return

    # -- health ----------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """{"ok": bool, "service", "stuck": [names], "loops": {name: details}} for /healthz."""
        now_s = self._clock.now_s()
        loops: dict[str, Any] = {}
        stuck: list[str] = []
        for loop in self._loops.values():
            age_s = now_s - loop.last_beat_s
            problem: str | None = None
            if not self._started:
                problem = "not started"
            elif loop.task is not None and loop.task.done() and not loop.finished:
                problem = "task ended unexpectedly"
            elif loop.period_s is None and loop.finished and loop.last_error is not None:
                problem = f"task gave up: {loop.last_error}"
            elif loop.deadline_s is not None and not loop.finished and age_s > loop.deadline_s:
                problem = f"no heartbeat for {age_s:.1f}s (deadline {loop.deadline_s:.1f}s)"
                if loop.last_error:
                    problem += f"; last error: {loop.last_error}"
            if problem is not None:
                stuck.append(loop.name)
            loops[loop.name] = {
                "kind": "periodic" if loop.period_s is not None else "task",
                "ok": problem is None,
                "problem": problem,
                "last_beat_age_s": round(age_s, 3),
                "deadline_s": loop.deadline_s,
                "runs": loop.runs,
                "failures": loop.failures,
                "consecutive_failures": loop.consecutive_failures,
                "last_error": loop.last_error,
            }
        return {"ok": not stuck and not self._stopping, "service": self.service, "stopping": self._stopping,
                "stuck": stuck, "loops": loops}

    # -- stopping --------------------------------------------------------------------------------------

    async def stop(self, timeout_s: float | None = None) -> StopReport:
        """Cancel every loop and wait up to `timeout_s` (default: the constructor's) for them to end."""
        self._stopping = True
        tasks = {loop.name: loop.task for loop in self._loops.values() if loop.task is not None}
        for task in tasks.values():
            task.cancel()
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks.values(), timeout=timeout_s or self._stop_timeout_s)
        stuck = tuple(name for name, task in tasks.items() if task in pending)
        stopped = tuple(name for name in tasks if name not in stuck)
        for name, task in tasks.items():
            if task.done() and not task.cancelled():
                exc = task.exception()
                if exc is not None:
                    log.error("%s: loop %s ended with %r", self.service, name, exc)
        if stuck:
            log.error("%s: loops still running %.1fs after stop: %s", self.service,
                      timeout_s or self._stop_timeout_s, ", ".join(stuck))
        return StopReport(stopped=stopped, stuck=stuck)


def install_signal_handlers(on_signal: Callable[[], None],
                            signals: Iterable[signal.Signals] = (signal.SIGINT, signal.SIGTERM)) -> Callable[[], None]:
    """Call `on_signal` when one of `signals` arrives; returns a function that removes the handlers."""
    ev = asyncio.get_running_loop()
    installed = []
    for sig in signals:
        ev.add_signal_handler(sig, on_signal)
        installed.append(sig)

    def remove() -> None:
        for sig in installed:
            with contextlib.suppress(Exception):
                ev.remove_signal_handler(sig)

    return remove


async def run_until_signalled(supervisor: Supervisor, *, stop: asyncio.Event | None = None,
                              stop_timeout_s: float | None = None) -> StopReport:
    """Start `supervisor`, wait for SIGINT/SIGTERM (or `stop` to be set), then stop it gracefully."""
    event = stop or asyncio.Event()
    remove = install_signal_handlers(event.set)
    try:
        supervisor.start()
        await event.wait()
        log.info("%s: stopping", supervisor.service)
    finally:
        remove()
        report = await supervisor.stop(stop_timeout_s)
    return report
