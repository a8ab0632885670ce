"""The short summary a replay prints when it ends: per tier counts, latency percentiles and SLO
attainment, the errors by class, and how faithfully the trace clock was kept."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

_ROWS = (("requests", "requests"), ("completed", "completed"), ("dropped", "dropped"), ("not sent", "not_sent"),
         ("TTFT p50", "ttft_p50_s"), ("TTFT p99", "ttft_p99_s"), ("TBT p50", "tbt_p50_s"), ("TBT p99", "tbt_p99_s"),
         ("ITL p99", "itl_p99_s"), ("E2E p50", "e2e_p50_s"), ("E2E p99", "e2e_p99_s"),
         ("SLO attained", "slo_attainment"))


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "slo_attainment":
        return f"{value * 100:.2f}%"
    if key.endswith("_s"):
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:,}"


def print_report_summary(report: Mapping[str, Any], report_path: Path, requests_path: Path,
                         console: Console | None = None) -> None:
    console = console or Console()
    columns = [*report["tiers"].items(), ("all", report)]
    table = Table(title=f"replay of {report['run']['trace']} against {report['run']['url']}", title_justify="left")
    table.add_column("", no_wrap=True)
    for name, _ in columns:
        table.add_column(name, justify="right", no_wrap=True)
    for label, key in _ROWS:
        table.add_row(label, *(_cell(key, block.get(key)) for _, block in columns))
    console.print(table)
    if report["errors"]:
        console.print("errors: " + ", ".join(f"{name} {count}" for name, count in report["errors"].items()))
    replay = report.get("replay") or {}
    console.print(
        f"rate: intended {_rate(replay.get('intended_rps'))}, achieved {_rate(replay.get('achieved_rps'))}; "
        f"send lateness p99 {_cell('x_s', replay.get('send_lateness_p99_s'))}, "
        f"max {_cell('x_s', replay.get('send_lateness_max_s'))}")
    if report["run"]["stopped_early"]:
        console.print("[yellow]stopped early: the report covers the requests sent before the stop[/]")
    console.print(f"wrote {report_path} and {requests_path}")


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} req/s"
