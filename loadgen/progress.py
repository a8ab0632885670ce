"""The replay's progress bar (rich): requests sent of the slice, answers done, errors, requests in
flight and the worst send lateness so far. Disabled, it costs nothing and prints nothing."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from opscale.reporting.latency_report import LatencyRecord, RequestStatus


class ReplayProgress:
    def __init__(self, total: int, *, enabled: bool = True, console: Console | None = None) -> None:
        self._enabled = enabled
        self._done = self._errors = 0
        self._max_late_s = 0.0
        self._in_flight: Callable[[], int] = lambda: 0
        self._progress = Progress(
            TextColumn("sent"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(), console=console, disable=not enabled, refresh_per_second=4)
        self._task: TaskID = self._progress.add_task("replay", total=total, detail="")

    def watch(self, in_flight: Callable[[], int]) -> None:
        """Where to read the number of requests in flight from."""
        self._in_flight = in_flight

    def sent(self, lateness_s: float) -> None:
        if not self._enabled:
            return
        self._max_late_s = max(self._max_late_s, lateness_s)
        self._progress.advance(self._task)
        self._show()

    def finished(self, record: LatencyRecord) -> None:
        if not self._enabled:
            return
        if record.status == RequestStatus.NOT_SENT:
            return
        self._done += 1
        self._errors += record.status != RequestStatus.OK
        self._show()

    def _show(self) -> None:
        self._progress.update(self._task, detail=(
            f"done {self._done}  errors {self._errors}  in flight {self._in_flight()}  "
            f"max late {self._max_late_s * 1000:.0f} ms"))

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()
