"""The latency report that the load generator and the simulator share: one JSON shape, one CSV shape.

Role: turn per-request records (`LatencyRecord`: when a request was sent or arrived, its first token,
its finish, its output tokens, its status and optionally every gap between tokens) into a JSON-ready
dict of counts, errors by class, TTFT/TBT/E2E percentiles (p50, p90, p99) and SLO attainment, for the
whole run and per tier; and write the records as a per-request CSV. It does no network I/O and reads no
clock: the load generator (opscale_loadgen) measures, this module summarises. The TTFT/TBT/E2E
percentiles come from `opscale.reporting.latencies`, the builder the simulator's result.json uses too,
so a live replay and a simulated run of the same trace compare key for key (`opscale loadgen compare`);
`latency_report_from_outcomes` gives a simulation's outcomes this report's full shape.

Definitions, the same as the simulator's result.json:
- TTFT = first token - arrival; E2E = finish - arrival; TBT = a request's mean time between output
  tokens, (finish - first token) / (output tokens - 1), from requests with at least two tokens.
- ITL (inter-token latency) = every gap between consecutive tokens, pooled over requests, when the
  records carry gaps. A week of tokens is billions of gaps, so ITL percentiles come from a log-bucket
  sketch (`opscale.stats.LogHistogram`) with 1% relative error; TTFT, TBT and E2E are exact.
- SLO attainment = requests that completed within their tier's objectives (`TierSpec` via
  `RequestOutcome.meets`) / requests that were sent. Requests never sent (a replay stopped early) are
  counted under `not_sent` and judged neither way; a request whose tier has no spec is never met, and
  its tier is listed under `tiers_without_slo`.

Worked example (one tier, interactive: TTFT <= 2 s, TBT <= 0.1 s): records
    a: arrival 0, first 0.5, finish 1.4, 10 tokens, ok        -> TTFT 0.5, TBT 0.1, E2E 1.4, met
    b: arrival 1, first 4.0, finish 4.9, 10 tokens, ok        -> TTFT 3.0, TBT 0.1, E2E 3.9, not met
    c: arrival 2, no first token, status http_5xx             -> dropped
    d: never sent, status not_sent                            -> not judged
give requests 4, sent 3, completed 2, dropped 1, not_sent 1, errors {"http_5xx": 1},
ttft_p50_s 1.75 (between 0.5 and 3.0), slo_attainment 1/3.
"""

from __future__ import annotations

import csv
import math
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Self

from opscale.model import RequestOutcome, TierSpec
from opscale.reporting.latencies import PERCENTILES, LatencySamples
from opscale.stats import LogHistogram, percentile_sorted

REPORT_KIND = "opscale.latency_report"
REPORT_VERSION = 1
ITL_RELATIVE_ACCURACY = 0.01


class RequestStatus(StrEnum):
    """How a request ended. `ok` is a complete answer; every other value is an error class, except
    `not_sent`, which marks a trace request the replay never sent (it was stopped first)."""

    OK = "ok"
    CONNECT_ERROR = "connect_error"  # no connection to the endpoint (refused, DNS, reset before an answer)
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    TIMEOUT = "timeout"  # the per-request deadline passed
    STREAM_CUT = "stream_cut"  # the connection ended before the stream's [DONE]
    STREAM_ERROR = "stream_error"  # the server sent an error event mid-stream
    PROTOCOL_ERROR = "protocol_error"  # an answer that is not the OpenAI streaming format
    CANCELLED = "cancelled"  # in flight when the replay was stopped
    REJECTED = "rejected"  # simulator: refused at admission
    FAILED = "failed"  # simulator: failed after admission
    NOT_SENT = "not_sent"


@dataclass(frozen=True, slots=True)
class LatencyRecord:
    """What happened to one request. Times are seconds on one clock (any origin) per report.

    `arrival_s` is when the request entered the system: the simulator's arrival, the load generator's
    actual send. `scheduled_s` is the load generator's intended send on the replay clock (None from the
    simulator); `arrival_s - scheduled_s` is the send's lateness. `requested_tokens` is the output the
    request asked for (max_tokens; 0 when unknown). `token_gaps_s`, when measured, holds every gap
    between consecutive output tokens as received.
    """

    request_id: str
    tier: str
    arrival_s: float | None
    first_token_s: float | None
    finish_s: float | None
    output_tokens: int
    status: str = RequestStatus.OK
    model: str = ""
    prompt_tokens: int = 0
    requested_tokens: int = 0
    scheduled_s: float | None = None
    http_status: int | None = None
    error: str = ""
    token_gaps_s: tuple[float, ...] | None = field(default=None, repr=False)

    @property
    def sent(self) -> bool:
        return self.status != RequestStatus.NOT_SENT

    def as_outcome(self) -> RequestOutcome:
        """The simulator's view of this record, so SLO judgement has one definition (`meets`)."""
        arrival_s = self.arrival_s if self.arrival_s is not None else 0.0
        return RequestOutcome(
            request_id=self.request_id, model=self.model, tier=self.tier, region="", served_region="",
            instance_id="", arrival_s=arrival_s, first_token_s=self.first_token_s, finish_s=self.finish_s,
            prompt_tokens=self.prompt_tokens, output_tokens=self.output_tokens, status=self.status)


def _doubles() -> array[float]:
    return array("d")


@dataclass(slots=True)
class _Totals:
    """Running totals of one tier (or of the whole run)."""

    requests: int = 0
    sent: int = 0
    completed: int = 0
    met: int = 0
    output_tokens: int = 0
    short_outputs: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: LatencySamples = field(default_factory=LatencySamples)
    itl: LogHistogram = field(default_factory=lambda: LogHistogram(ITL_RELATIVE_ACCURACY))

    def block(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.requests,
            "sent": self.sent,
            "completed": self.completed,
            "dropped": self.sent - self.completed,
            "not_sent": self.requests - self.sent,
            "errors": dict(sorted(self.errors.items())),
            "output_tokens": self.output_tokens,
            "short_outputs": self.short_outputs,
        }
        out.update(self.latencies.figures())
        for q in PERCENTILES:
            out[f"itl_p{q}_s"] = self.itl.quantile(q)
        out["slo_attainment"] = self.met / self.sent if self.sent else None
        return out


class LatencyReportBuilder:
    """Accumulates records one at a time (memory: three doubles per completed request, plus a sketch of
    the token gaps) and builds the report dict. Records may come in any order."""

    def __init__(self, tiers: Mapping[str, TierSpec]) -> None:
        self._specs = dict(tiers)
        self._all = _Totals()
        self._tiers: dict[str, _Totals] = {}
        self._no_spec: set[str] = set()
        self._first_scheduled_s = math.inf
        self._last_scheduled_s = -math.inf
        self._scheduled = 0
        self._first_sent_s = math.inf
        self._last_sent_s = -math.inf
        self._lateness = _doubles()

    def add(self, record: LatencyRecord) -> None:
        totals = self._tiers.get(record.tier)
        if totals is None:
            totals = self._tiers[record.tier] = _Totals()
        spec = self._specs.get(record.tier)
        if spec is None:
            self._no_spec.add(record.tier)
        outcome = record.as_outcome()
        met = spec is not None and record.status == RequestStatus.OK and outcome.meets(spec)
        for t in (totals, self._all):
            self._count(t, record, outcome, met)
        self._count_replay(record)

    def add_all(self, records: Iterable[LatencyRecord]) -> Self:
        for record in records:
            self.add(record)
        return self

    @staticmethod
    def _count(t: _Totals, r: LatencyRecord, outcome: RequestOutcome, met: bool) -> None:
        t.requests += 1
        if not r.sent:
            return
        t.sent += 1
        if r.status != RequestStatus.OK:
            t.errors[r.status] = t.errors.get(r.status, 0) + 1
            return
        t.completed += 1
        t.met += met
        t.output_tokens += r.output_tokens
        if r.requested_tokens and r.output_tokens < r.requested_tokens:
            t.short_outputs += 1
        if r.arrival_s is None:
            return  # sent at an unknown time: no latency to measure
        t.latencies.add(outcome)
        for gap in r.token_gaps_s or ():
            t.itl.add(gap)

    def _count_replay(self, r: LatencyRecord) -> None:
        if r.scheduled_s is not None:
            self._scheduled += 1
            self._first_scheduled_s = min(self._first_scheduled_s, r.scheduled_s)
            self._last_scheduled_s = max(self._last_scheduled_s, r.scheduled_s)
        if r.sent and r.arrival_s is not None:
            self._first_sent_s = min(self._first_sent_s, r.arrival_s)
            self._last_sent_s = max(self._last_sent_s, r.arrival_s)
            if r.scheduled_s is not None:
                self._lateness.append(r.arrival_s - r.scheduled_s)

    def report(self) -> dict[str, Any]:
        """The report dict: the whole run's block at the top level, `tiers` per tier, `replay` when the
        records carry scheduled send times."""
        out: dict[str, Any] = {"kind": REPORT_KIND, "version": REPORT_VERSION, **self._all.block()}
        out["tiers"] = {name: t.block() for name, t in sorted(self._tiers.items())}
        out["tiers_without_slo"] = sorted(self._no_spec)
        if self._scheduled:
            out["replay"] = self._replay_block()
        return out

    def _replay_block(self) -> dict[str, Any]:
        lateness = sorted(self._lateness)
        return {
            "intended_rps": _rate(self._scheduled, self._first_scheduled_s, self._last_scheduled_s),
            "achieved_rps": _rate(self._all.sent, self._first_sent_s, self._last_sent_s),
            "send_lateness_p50_s": percentile_sorted(lateness, 50),
            "send_lateness_p99_s": percentile_sorted(lateness, 99),
            "send_lateness_max_s": lateness[-1] if lateness else None,
        }


def _rate(count: int, first_s: float, last_s: float) -> float | None:
    """Requests per second over the span of their times: n requests over a span make n - 1 intervals."""
    span_s = last_s - first_s
    if count < 2 or not span_s > 0:
        return None
    return (count - 1) / span_s


def build_latency_report(records: Iterable[LatencyRecord], tiers: Mapping[str, TierSpec]) -> dict[str, Any]:
    """The report of `records` judged against `tiers` (see the module docstring for the definitions)."""
    return LatencyReportBuilder(tiers).add_all(records).report()


# -- the simulator's records ------------------------------------------------------------------------

_SIM_STATUS = {"ok": RequestStatus.OK, "rejected": RequestStatus.REJECTED, "failed": RequestStatus.FAILED,
               "cancelled": RequestStatus.CANCELLED}


def latency_record_from_outcome(outcome: RequestOutcome) -> LatencyRecord:
    """A simulator outcome as a report record (an unknown status is kept as it is: an error class)."""
    return LatencyRecord(
        request_id=outcome.request_id, tier=outcome.tier, arrival_s=outcome.arrival_s,
        first_token_s=outcome.first_token_s, finish_s=outcome.finish_s, output_tokens=outcome.output_tokens,
        status=_SIM_STATUS.get(outcome.status, outcome.status), model=outcome.model,
        prompt_tokens=outcome.prompt_tokens)


def latency_report_from_outcomes(outcomes: Iterable[RequestOutcome], tiers: Mapping[str, TierSpec]) -> dict[str, Any]:
    """The shared report of a simulation run, from its `RequestOutcome`s (for the simulator to call)."""
    builder = LatencyReportBuilder(tiers)
    for outcome in outcomes:
        builder.add(latency_record_from_outcome(outcome))
    return builder.report()


# -- the per-request CSV ----------------------------------------------------------------------------

CSV_COLUMNS = (
    "request_id", "model", "tier", "status", "http_status", "error", "scheduled_s", "sent_s", "first_token_s",
    "finish_s", "ttft_s", "tbt_s", "e2e_s", "prompt_tokens", "requested_tokens", "output_tokens", "itl_max_s",
    "token_gaps_ms",
)


class LatencyCsvWriter:
    """Writes one CSV row per record, as records arrive (a replay writes each on completion, so the
    file is in completion order; not-sent requests come last). `token_gaps_ms` (space-separated gaps in
    milliseconds) is filled only with `with_gaps`, since it is the bulk of the file."""

    def __init__(self, handle: IO[str], *, with_gaps: bool = False) -> None:
        self._writer = csv.writer(handle, lineterminator="\n")
        self._writer.writerow(CSV_COLUMNS)
        self._with_gaps = with_gaps
        self.rows = 0

    def write(self, r: LatencyRecord) -> None:
        outcome = r.as_outcome()
        gaps = r.token_gaps_s or ()
        ok = r.status == RequestStatus.OK and r.arrival_s is not None
        self._writer.writerow((
            r.request_id, r.model, r.tier, r.status, _cell(r.http_status), r.error, _cell(r.scheduled_s),
            _cell(r.arrival_s), _cell(r.first_token_s), _cell(r.finish_s),
            _cell(outcome.ttft_s if ok else None), _cell(outcome.tbt_s if ok else None),
            _cell(outcome.e2e_s if ok else None), r.prompt_tokens, r.requested_tokens, r.output_tokens,
            _cell(max(gaps) if gaps else None),
            " ".join(f"{g * 1000:.3f}" for g in gaps) if self._with_gaps else "",
        ))
        self.rows += 1


def write_latency_csv(path: str | Path, records: Iterable[LatencyRecord], *, with_gaps: bool = False) -> int:
    """Write `records` as the per-request CSV at `path`; return the number of rows."""
    with Path(path).open("w", encoding="utf-8", newline="") as handle:
        writer = LatencyCsvWriter(handle, with_gaps=with_gaps)
        for record in records:
            writer.write(record)
    return writer.rows


def read_latency_csv(path: str | Path) -> Iterator[dict[str, str]]:
    """The rows of a per-request CSV as dicts keyed by `CSV_COLUMNS` (for checks and further analysis)."""
    with Path(path).open(encoding="utf-8", newline="") as handle:
        yield from csv.DictReader(handle)


def _cell(value: float | int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)
