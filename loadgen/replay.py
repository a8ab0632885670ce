"""A whole replay: the trace slice, the connection pool, the scheduler, the progress bar and the report.

`replay` runs inside an event loop (the integration tests call it next to a live stack); `run_replay` is
the command line's entry: it owns the loop and turns Ctrl-C into a clean stop (the first stops sending
and lets answers in flight finish for up to `drain_s`; a second cancels them), after which the partial
report is still written. Output, in `out`: `report.json` (opscale.reporting.latency_report's shape
plus a `run` block saying what was replayed) and `requests.csv` (one row per trace request of the slice,
in completion order; never-sent requests last).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console

from opscale.model import DEFAULT_TIERS, Request, TierSpec
from opscale.reporting.latency_report import LatencyCsvWriter, LatencyRecord, LatencyReportBuilder

from opscale_loadgen.client import SendOptions, endpoint_base, send_request
from opscale_loadgen.clock import MonotonicClock, ReplayClock
from opscale_loadgen.progress import ReplayProgress
from opscale_loadgen.prompts import ApiKind
from opscale_loadgen.scheduler import OpenLoopScheduler, ReplayCounts
from opscale_loadgen.trace_source import TraceWindow, scan_slice, trace_slice

REPORT_FILE = "report.json"
REQUESTS_FILE = "requests.csv"
# How long to wait for the endpoint to accept a connection before the replay starts.
_PREFLIGHT_TIMEOUT_S = 10.0


class EndpointUnreachable(ValueError):
    """The endpoint refused the connection before any request was sent."""


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """What to replay, where, and how (the options of `opscale loadgen replay`)."""

    trace: Path
    url: str
    out: Path
    format: str | None = None
    compress: float = 1.0
    window: TraceWindow = field(default_factory=TraceWindow)
    max_requests: int | None = None
    concurrency_limit: int | None = None
    api: ApiKind = ApiKind.CHAT
    timeout_s: float = 300.0
    model: str | None = None
    extras: bool = True
    tiers: dict[str, TierSpec] = field(default_factory=lambda: dict(DEFAULT_TIERS))
    token_gaps: bool = False
    drain_s: float = 30.0
    progress: bool = True
    api_key: str | None = field(default=None, repr=False)  # sent as a bearer token; never written out

    def __post_init__(self) -> None:
        if not (self.compress > 0 and math.isfinite(self.compress)):
            raise ValueError(f"--compress must be a positive number, got {self.compress!r}")
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError(f"--max-requests must be >= 1, got {self.max_requests}")
        if self.concurrency_limit is not None and self.concurrency_limit < 1:
            raise ValueError(f"--concurrency-limit must be >= 1, got {self.concurrency_limit}")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ValueError(f"--timeout must be a positive number of seconds, got {self.timeout_s!r}")
        if self.drain_s < 0:
            raise ValueError(f"drain_s must be >= 0, got {self.drain_s!r}")


@dataclass(frozen=True, slots=True)
class ReplayResult:
    report: dict[str, Any]
    report_path: Path
    requests_path: Path
    counts: ReplayCounts


async def replay(config: ReplayConfig, *, stop: asyncio.Event | None = None, abort: asyncio.Event | None = None,
                 clock: ReplayClock | None = None, console: Console | None = None) -> ReplayResult:
    """Replay the slice of `config.trace` against `config.url` and write the report (see the module
    docstring). Raises ValueError (TraceFormatError, EndpointError, EndpointUnreachable) before sending
    anything when the input is wrong."""
    base_url = endpoint_base(config.url)
    if not config.trace.is_file():
        raise ValueError(f"trace file {config.trace} does not exist")
    console = console or Console(stderr=True)
    with console.status(f"reading {config.trace}"):
        summary = scan_slice(config.trace, config.format, config.window, config.max_requests)
    if summary.requests == 0:
        raise ValueError(f"{config.trace}: no request in window {config.window.describe()}")
    origin_s = config.window.start_s if config.window.start_s is not None else summary.first_arrival_s
    assert origin_s is not None
    try:
        config.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {config.out}: cannot create the folder: {exc.strerror or exc}") from None
    builder = LatencyReportBuilder(config.tiers)
    options = SendOptions(base_url, config.api, config.model, config.extras, config.timeout_s)
    # The pool holds as many connections as there may be requests in flight: a smaller aiohttp limit
    # would queue sends inside the client, out of sight of the scheduler (coordinated omission).
    connector = aiohttp.TCPConnector(limit=config.concurrency_limit or 0, limit_per_host=0)
    requests_path = config.out / REQUESTS_FILE
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else None
    async with aiohttp.ClientSession(connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=None)) as session:
        await _preflight(session, base_url)
        # The replay clock starts after the set-up, so the first send is due at once, not already late.
        started_at = datetime.now(UTC)
        replay_clock: ReplayClock = clock or MonotonicClock()
        with requests_path.open("w", encoding="utf-8", newline="") as handle, \
                ReplayProgress(summary.requests, enabled=config.progress, console=console) as progress:
            writer = LatencyCsvWriter(handle, with_gaps=config.token_gaps)

            def sink(record: LatencyRecord) -> None:
                writer.write(record)
                builder.add(record)
                progress.finished(record)

            async def send(request: Request, scheduled_s: float) -> LatencyRecord:
                progress.sent(replay_clock.now() - scheduled_s)
                return await send_request(session, request, scheduled_s, replay_clock, options)

            scheduler = OpenLoopScheduler(
                _slice(config), send, sink, replay_clock, origin_s=origin_s, compress=config.compress,
                concurrency_limit=config.concurrency_limit, stop=stop, abort=abort, drain_s=config.drain_s)
            progress.watch(lambda: scheduler.in_flight)
            counts = await scheduler.run()
    report = builder.report()
    report["run"] = _run_block(config, base_url, summary.requests, origin_s, started_at, replay_clock.now(), counts)
    report_path = config.out / REPORT_FILE
    report_path.write_text(json.dumps(_jsonable(report), indent=2) + "\n", encoding="utf-8")
    return ReplayResult(report, report_path, requests_path, counts)


def _slice(config: ReplayConfig) -> Iterator[Request]:
    return trace_slice(config.trace, config.format, config.window, config.max_requests)


async def _preflight(session: aiohttp.ClientSession, base_url: str) -> None:
    """Fail before the first send when nothing listens at the URL (any HTTP answer is good enough:
    a server without /v1/models is still a server)."""
    try:
        async with asyncio.timeout(_PREFLIGHT_TIMEOUT_S):
            async with session.get(base_url + "/v1/models") as resp:
                await resp.read()
    except TimeoutError:
        raise EndpointUnreachable(f"{base_url} did not answer within {_PREFLIGHT_TIMEOUT_S:g} s") from None
    except aiohttp.ClientError as exc:
        raise EndpointUnreachable(f"cannot reach {base_url}: {exc}") from None


def _run_block(config: ReplayConfig, base_url: str, slice_requests: int, origin_s: float, started_at: datetime,
               wall_s: float, counts: ReplayCounts) -> dict[str, Any]:
    return {
        "url": base_url,
        "api": str(config.api),
        "trace": str(config.trace),
        "format": config.format,
        "window": config.window.describe(),
        "origin_s": origin_s,
        "max_requests": config.max_requests,
        "slice_requests": slice_requests,
        "compress": config.compress,
        "concurrency_limit": config.concurrency_limit,
        "timeout_s": config.timeout_s,
        "model": config.model,
        "extras": config.extras,
        "started_at": started_at.isoformat(timespec="seconds"),
        "wall_s": wall_s,
        "stopped_early": counts.stopped_early,
        "cancelled": counts.cancelled,
    }


def _jsonable(value: Any) -> Any:
    """NaN and infinities become null (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def run_replay(config: ReplayConfig, console: Console | None = None) -> ReplayResult:
    """`replay` in a fresh event loop, with Ctrl-C (and SIGTERM) as a clean stop: the first stops
    sending, the second cancels the answers in flight; the partial report is written either way."""
    console = console or Console(stderr=True)

    async def main() -> ReplayResult:
        stop, abort = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()

        def interrupted() -> None:
            if stop.is_set():
                abort.set()
                console.print("[yellow]second interrupt: cancelling the requests in flight[/]")
            else:
                stop.set()
                console.print(f"[yellow]interrupted: no more sends; waiting up to {config.drain_s:g} s for "
                              "answers in flight (Ctrl-C again to cancel them)[/]")

        installed: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Only the main thread may own signals; elsewhere (embedded use) the caller stops the replay.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, interrupted)
                installed.append(sig)
        try:
            return await replay(config, stop=stop, abort=abort, console=console)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    return asyncio.run(main())
