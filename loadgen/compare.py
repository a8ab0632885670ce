"""`opscale loadgen compare A.json B.json`: two latency reports side by side.

Either file may be a load generator report (report.json) or a simulator result (result.json): both build
their TTFT/TBT/E2E figures with one builder (opscale.reporting.latencies), so a live replay and a
simulation of the same trace line up row by row with no translation. A metric only one file measures
(the replay's inter-token latency and send counts) shows as "-" on the other side.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from opscale.reporting.latencies import LATENCY_KEYS, PERCENTILES

_COUNTS = ("requests", "sent", "completed", "dropped", "not_sent")
_LATENCIES = (*LATENCY_KEYS, *(f"itl_p{q}_s" for q in PERCENTILES))
_REPLAY = ("intended_rps", "achieved_rps", "send_lateness_p50_s", "send_lateness_p99_s", "send_lateness_max_s")


class ReportFileError(ValueError):
    """A file that is not a latency report; the message names it."""


def load_report(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportFileError(f"report file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportFileError(f"report file {path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ReportFileError(f"report file {path}:{exc.lineno}: not JSON: {exc.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("tiers"), dict) or "requests" not in data:
        raise ReportFileError(f"report file {path}: not a latency report (needs 'requests' and a 'tiers' mapping)")
    return data


@dataclass(frozen=True, slots=True)
class Row:
    scope: str  # "all", a tier name, or "replay"
    metric: str
    a: float | int | None
    b: float | int | None


def comparison_rows(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Row]:
    """The rows to show: the whole run, then each tier either report has, then the replay block."""
    rows: list[Row] = []
    scopes: list[tuple[str, Mapping[str, Any], Mapping[str, Any]]] = [("all", a, b)]
    for tier in sorted(set(a["tiers"]) | set(b["tiers"])):
        scopes.append((tier, a["tiers"].get(tier, {}), b["tiers"].get(tier, {})))
    for scope, block_a, block_b in scopes:
        for metric in (*_COUNTS, *_LATENCIES, "slo_attainment"):
            va, vb = _number(block_a.get(metric)), _number(block_b.get(metric))
            if va is not None or vb is not None:
                rows.append(Row(scope, metric, va, vb))
    replay_a, replay_b = a.get("replay") or {}, b.get("replay") or {}
    for metric in _REPLAY:
        va, vb = _number(replay_a.get(metric)), _number(replay_b.get(metric))
        if va is not None or vb is not None:
            rows.append(Row("replay", metric, va, vb))
    return rows


def _number(value: Any) -> float | int | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _show(metric: str, value: float | int | None) -> str:
    if value is None:
        return "-"
    if metric == "slo_attainment":
        return f"{value * 100:.2f}%"
    if metric.endswith("_s"):
        return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.3f} s"
    if metric.endswith("_rps"):
        return f"{value:.2f}/s"
    return f"{value:,}"


def _delta(a: float | int | None, b: float | int | None) -> str:
    if a is None or b is None:
        return "-"
    if a == 0:
        return "=" if b == 0 else "n/a"
    return f"{(b - a) / abs(a) * 100:+.1f}%"


def comparison_table(a: Mapping[str, Any], b: Mapping[str, Any], name_a: str, name_b: str) -> Table:
    # The file names go in the caption, not the headers: paths would push the numbers off a narrow terminal.
    table = Table(title="latency reports", title_justify="left", caption=f"A: {name_a}\nB: {name_b}",
                  caption_justify="left")
    table.add_column("scope", no_wrap=True)
    table.add_column("metric", no_wrap=True)
    table.add_column("A", justify="right", no_wrap=True)
    table.add_column("B", justify="right", no_wrap=True)
    table.add_column("B vs A", justify="right", no_wrap=True)
    last_scope = None
    for row in comparison_rows(a, b):
        table.add_row(row.scope if row.scope != last_scope else "", row.metric, _show(row.metric, row.a),
                      _show(row.metric, row.b), _delta(row.a, row.b), end_section=False)
        last_scope = row.scope
    return table
