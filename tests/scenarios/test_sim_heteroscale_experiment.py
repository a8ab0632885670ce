"""The shipped `heteroscale` experiment: its config loads and every variant's scenario validates, a few
simulated minutes of all five variants run through the command line and write summary.json (the five
names, each with a result) with the paper's figures beside ours; and the result figures the experiment
compares (cost per output token, effective KV bandwidth, utilisation in percentage points) are what
their definitions say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opscale.cli import app
from opscale.experiments.comparison import ReferenceFigure, find_experiment, load_experiment, variant_scenario
from opscale.experiments.summary import change_pct
from opscale.experiments.variant_runner import VariantOutcome

pytestmark = pytest.mark.sim

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
VARIANTS = ["heteroscale", "pd_hpa", "colocated_reactive", "heteroscale_topology_blind", "heteroscale_homogeneous"]
runner = CliRunner()


def test_the_shipped_config_loads_and_every_variant_validates() -> None:
    config, base = load_experiment(find_experiment("heteroscale"))
    assert [v.name for v in config.variants] == VARIANTS
    scenarios = {v.name: variant_scenario(base, v) for v in config.variants}
    # the disaggregated variants keep prefill and decode on their own SKUs; the homogeneous one uses one
    roles = {name: {(d.prefill.sku, d.decode.sku) for d in s.deployments if d.disaggregated}
             for name, s in scenarios.items()}
    assert roles["heteroscale"] == {("H100-80GB", "H20")} == roles["pd_hpa"] == roles["heteroscale_topology_blind"]
    assert roles["heteroscale_homogeneous"] == {("H20", "H20")}
    assert not roles["colocated_reactive"] and all(not d.disaggregated for d in scenarios["colocated_reactive"].deployments)
    assert scenarios["heteroscale"].planner.topology_aware and not scenarios["heteroscale_topology_blind"].planner.topology_aware
    # the curated parameters are the policy's, per service
    assert set(scenarios["heteroscale"].policy_params["services"]) == {d.model for d in base.deployments}
    metrics = {f.metric for f in config.reference}
    assert {"mean_gpu_util", "mean_sm_activity", "usd_per_m_output_tokens", "kv_effective_gbps"} <= metrics


def test_a_few_minutes_of_every_variant_run_and_summarise(tmp_path: Path) -> None:
    data_dir = SHARED_DATA if SHARED_DATA.is_dir() else tmp_path / "no-data"
    out = tmp_path / "out"
    result = runner.invoke(app, ["experiment", "run", "heteroscale", "--out", str(out), "--hours", "0.04",
                                 "--parallel", "1", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [v["name"] for v in summary["variants"]] == VARIANTS
    assert all(v["ok"] and v["result"]["completed"] > 100 for v in summary["variants"]), summary["variants"]
    results = {v["name"]: v["result"] for v in summary["variants"]}
    for name in VARIANTS:
        r = results[name]
        assert r["usd_per_m_output_tokens"] > 0 and 0 < r["mean_gpu_util"] <= 1
        assert ("kv_effective_gbps" in r) == (name != "colocated_reactive")
    # utilisation is compared in percentage points, cost per token relative to the baseline
    rows = {row["metric"]: row for row in summary["reference"]}
    util = rows["mean_gpu_util"]["ours_change_pct"]["heteroscale"]
    assert util == pytest.approx((results["heteroscale"]["mean_gpu_util"] - results["pd_hpa"]["mean_gpu_util"]) * 100)
    table = (out / "summary.md").read_text()
    assert "+26.6 pp" in table and "+41.0%" in table and "$/M output tokens" in table and "KV GB/s" in table
    for png in ("demand_vs_capacity.png", "ttft_cdf.png", "gpus_by_sku.png"):
        assert (out / png).stat().st_size > 5_000, png


def _outcome(name: str, **result: float) -> VariantOutcome:
    return VariantOutcome(name=name, policy=name, result=dict(result))


def test_a_points_change_is_the_difference_of_two_fractions_and_a_relative_one_a_percentage() -> None:
    outcomes = [_outcome("base", util=0.5, cost=2.0), _outcome("ours", util=0.62, cost=3.0)]
    assert change_pct(outcomes, "util", "ours", "base", "points") == pytest.approx(12.0)
    assert change_pct(outcomes, "cost", "ours", "base") == pytest.approx(50.0)
    assert change_pct([_outcome("base", util=0.0), _outcome("ours", util=0.3)], "util", "ours", "base",
                      "points") == pytest.approx(30.0)  # from 0: points still defined, a relative change not
    assert change_pct([_outcome("base", util=0.0), _outcome("ours", util=0.3)], "util", "ours", "base") is None
    with pytest.raises(ValueError, match="change"):
        ReferenceFigure(claim="c", source="s", metric="m", variants=["a"], baseline="b", change="ratio")
