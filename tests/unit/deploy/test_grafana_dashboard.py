"""deploy/grafana/opscale.json: it parses as a Grafana dashboard, covers what an operator watches (SLO
attainment, TTFT and TBT, replicas against demand, plans, errors), and every series it queries is one
that opscale's services expose.

The exposed series are found from the code: every prometheus_client metric defined with a literal name
in libs/ and services/ (Counter -> name_total, Histogram -> name_bucket/_sum/_count, ...), and the
aggregator's window gauges scraped from a real registry fed one window of each kind.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
from collections import Counter
from typing import Any

import pytest
from _paths import REPO
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from opscale.model.instance import Role
from opscale.services.actions import Publish
from opscale.services.events import PoolUtilisation, WindowStats

from opscale_services.aggregator.window_metrics import WindowCollector

pytestmark = pytest.mark.unit

DASHBOARD_PATH = REPO / "deploy" / "grafana" / "opscale.json"
_SUFFIXES = {
    "Counter": ("_total", "_created"), "CounterMetricFamily": ("_total",),
    "Gauge": ("",), "GaugeMetricFamily": ("",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"), "HistogramMetricFamily": ("_bucket", "_sum", "_count"),
    "Summary": ("_sum", "_count", "_created"), "SummaryMetricFamily": ("_sum", "_count"),
    "Info": ("_info",), "InfoMetricFamily": ("_info",),
}
_METRIC = re.compile(r"\bopscale_[a-z0-9_]+\b")


def _defined_series() -> set[str]:
    """Series names of every metric defined in the code with a literal name."""
    names: set[str] = set()
    for root in (REPO / "libs" / "opscale", REPO / "services"):
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
                    continue
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                name = node.args[0].value
                if func in _SUFFIXES and isinstance(name, str) and name.startswith("opscale_"):
                    base = name.removesuffix("_total") if func.startswith("Counter") else name
                    names.update(base + suffix for suffix in _SUFFIXES[func])
    return names


def _window_series() -> set[str]:
    collector = WindowCollector()
    for event in (WindowStats("m", "eu", "interactive", 60.0, 60.0, 1, 1, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01,
                              1.0, 1.0, 1.0),
                  PoolUtilisation("m", "eu", Role.UNIFIED, 60.0, 60.0, 1.0, 0.5, 0.5, 1.0, 1.0, 1.0)):
        asyncio.run(collector.observe(Publish("opscale.windows.eu", event)))
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


EXPOSED = _defined_series() | _window_series()
DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text())


def _panels() -> list[dict[str, Any]]:
    return [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def _queries() -> list[tuple[str, str]]:
    found = [(p["title"], t["expr"]) for p in _panels() for t in p["targets"]]
    for variable in DASHBOARD["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append((f"variable {variable['name']}", query["query"]))
    return found


def test_the_series_found_in_the_code_include_the_known_ones() -> None:
    """The scan itself works: series of each kind that the services register are found."""
    assert {"opscale_router_requests_total", "opscale_router_ttft_seconds_bucket", "opscale_bus_published_total",
            "opscale_loop_failures_total", "opscale_router_auth_failures_total", "opscale_window_slo_attainment",
            "opscale_pool_instances"} <= EXPOSED


def test_it_is_a_grafana_dashboard_with_unique_ids_and_a_prometheus_datasource() -> None:
    assert DASHBOARD["uid"] and DASHBOARD["title"] and isinstance(DASHBOARD["schemaVersion"], int)
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in _panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]


def test_panels_do_not_overlap() -> None:
    cells: Counter[tuple[int, int]] = Counter()
    for panel in DASHBOARD["panels"]:
        g = panel["gridPos"]
        cells.update((x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"]))
    assert max(cells.values()) == 1


@pytest.mark.parametrize(("where", "expr"), _queries())
def test_every_query_names_only_series_that_exist_and_is_balanced(where: str, expr: str) -> None:
    named = set(_METRIC.findall(expr))
    assert named, f"{where}: {expr} queries no opscale series"
    assert named <= EXPOSED, f"{where}: no service exposes {sorted(named - EXPOSED)}"
    depth = 0
    for char in expr:
        depth += {"(": 1, ")": -1, "{": 1, "}": -1}.get(char, 0)
        assert depth >= 0, f"{where}: unbalanced {expr}"
    assert depth == 0, f"{where}: unbalanced {expr}"


def test_it_shows_what_an_operator_watches() -> None:
    queried = {series for _, expr in _queries() for series in _METRIC.findall(expr)}
    for needed in ("opscale_window_slo_attainment", "opscale_router_ttft_seconds_bucket",
                   "opscale_router_tbt_seconds_bucket", "opscale_pool_instances", "opscale_window_arrival_rps",
                   "opscale_bus_published_total", "opscale_router_requests_total", "opscale_bus_consumed_total"):
        assert needed in queried, needed
    replicas = next(p for p in _panels() if p["title"] == "Replicas against demand")
    assert {_METRIC.findall(t["expr"])[0] for t in replicas["targets"]} == {"opscale_pool_instances",
                                                                            "opscale_window_arrival_rps"}
