"""The `operators` experiment end to end on a tiny configuration (two models, a few simulated minutes, the
synthetic traffic shape, fixed seed): the four variants run on the same traffic through the simulated
world, summary.json has the variants and the operator planner's tables, and the acceptance checks are
evaluated; a bad `operators` or `acceptance` field is one error naming it. The shipped config at full size
is `slow`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from opscale.cli import app
from opscale.experiments.comparison import find_experiment, load_experiment
from opscale.experiments.pipeline import run_and_write

pytestmark = pytest.mark.sim

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MODELS = ("Qwen2-7B", "Qwen2-57B-A14B")
VARIANTS = ("operator_level", "model_level", "static", "reactive")
runner = CliRunner()


def tiny_config() -> dict[str, Any]:
    """The shipped config's shape, shrunk: 4 simulated minutes, one host, the synthetic shape (no data)."""
    shipped = yaml.safe_load(find_experiment("operators").read_text())
    base = shipped["base"]
    duration_s = 240.0
    base.update({"duration_s": duration_s, "drain_s": 300.0, "sample_interval_s": 30.0,
                 "hosts": [{"region": "westus", "sku": "H100-80GB", "gpus": 8, "count": 1}]})
    for deployment in base["deployments"]:
        deployment["max_replicas"] = 3 if deployment["model"] == "Qwen2-7B" else 2
    base["shaped"].update({"duration_s": duration_s - 10.0, "data_dir": None})
    for stream, rps in zip(base["shaped"]["streams"], (3.0, 1.0), strict=True):
        stream["mean_rps"] = rps
    shipped["parallel"] = 1
    shipped["operators"]["oracle_rps"] = [1.0, 2.0]
    return shipped


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "operators.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("operators")
    config, base = load_experiment(write_config(tmp_path, tiny_config()))
    out = tmp_path / "out"
    run_and_write(config, base, out, parallel=1)
    return out


def test_every_variant_runs_the_same_traffic_and_nothing_is_dropped(tiny_run: Path) -> None:
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert [v["name"] for v in summary["variants"]] == list(VARIANTS)
    assert all(v["ok"] for v in summary["variants"]), summary["variants"]
    results = {v["name"]: v["result"] for v in summary["variants"]}
    assert len({r["requests"] for r in results.values()}) == 1 and results["static"]["requests"] > 200
    for name, r in results.items():
        assert r["dropped"] == 0 and r["completed"] == r["requests"], name
        assert 0 < r["mean_gpus"] <= r["peak_gpus"], name
        assert r["energy_kwh"] > 0 and r["gpu_hours"] > 0, name
        assert set(r["tiers"]) == {"interactive", "standard"}, name
        # the pools' GPU-hours and energy split the run's, by model
        assert sum(p["energy_kwh"] for p in r["pools"].values()) == pytest.approx(r["energy_kwh"], rel=1e-6)
    # static holds every pool at max_replicas: 3 x 1 + 2 x 2 GPUs, all the time
    assert results["static"]["peak_gpus"] == 7
    assert results["static"]["gpu_hours"] >= max(r["gpu_hours"] for r in results.values()) - 1e-9


def test_summary_has_the_operator_tables(tiny_run: Path) -> None:
    tables = json.loads((tiny_run / "summary.json").read_text())["operators"]
    assert tables["objective"] == {"ttft_slo_s": 1.0, "tbt_slo_s": 0.1}  # the strictest tier's
    assert [row["name"] for row in tables["variants"]] == list(VARIANTS)
    assert all(set(row["by_model"]) == set(MODELS) for row in tables["variants"])
    assert set(tables["models"]) == set(MODELS)
    for name, m in tables["models"].items():
        traffic = m["over_traffic"]
        for level in ("operator_level", "model_level"):
            t = traffic[level]
            assert 0 < t["mean_gpus"] <= t["peak_gpus"], (name, level)
            assert t["energy_kwh"] > 0 and set(t["phase_gpu_hours"]) == {"prefill", "decode"}, (name, level)
        assert [r["rate"] for r in m["at_rates"]] == ["mean", "peak"]
        assert m["at_rates"][0]["rps"] <= m["at_rates"][1]["rps"]
        assert all(r[f"{lvl}_level"]["meets_slo"] for r in m["at_rates"] for lvl in ("operator", "model"))
        fixed = m["throughput_at_fixed_gpus"]
        # the budget is the model-level plan's GPUs at the peak, so model level sustains at least the peak
        assert fixed["gpus"] >= 1 and fixed["model_level_rps"] >= m["peak_rps"] * 0.99
        scaleup = m["scaleup"]
        assert (scaleup["one_operator_s"] < scaleup["half_operators_s"] < scaleup["all_operators_s"]
                < scaleup["full_replica_warm_s"] < scaleup["full_replica_cold_s"]), name
        cases = m["oracle"]["cases"]
        assert [c["rps"] for c in cases] == [1.0, 2.0]
        assert all(c["greedy_cost"] >= c["oracle_cost"] - 1e-9 for c in cases)  # the oracle is exact
    assert set(tables["by_phase"]) == {"prefill", "decode"}
    assert set(tables["by_model"]) == set(MODELS)
    for name, row in tables["by_model"].items():
        assert row["simulated_gpu_hours_ratio"] > 0 and row["planner_gpu_hours_ratio"] > 0, name
    paper = tables["beside_paper"]
    assert paper["paper_gpu_ratio"] == pytest.approx(0.6) and paper["paper_throughput_ratio"] == 1.6
    assert set(paper["simulated_world"]) == {"gpu_hours_ratio", "energy_ratio"}


def test_acceptance_checks_are_evaluated_and_printed(tiny_run: Path) -> None:
    summary = json.loads((tiny_run / "summary.json").read_text())
    checks = summary["acceptance"]
    assert [c["metric"] for c in checks] == ["tiers.interactive.slo_attainment", "gpu_hours", "energy_kwh"]
    results = {v["name"]: v["result"] for v in summary["variants"]}
    for check in checks:
        assert check["passed"] in (True, False)
        assert check["bound"] == pytest.approx(check["factor"] * check["baseline_value"])
    gpu = checks[1]
    assert gpu["ours"] == results["operator_level"]["gpu_hours"]
    assert gpu["passed"] == (gpu["ours"] <= 0.85 * results["model_level"]["gpu_hours"])
    md = (tiny_run / "summary.md").read_text()
    assert "## Acceptance checks" in md and md.count("**PASS**") + md.count("**FAIL**") == 3
    for heading in ("Throughput at a fixed GPU budget", "Scale-up latency", "against the exhaustive oracle",
                    "Beside P1's figures", "OpScale, Qwen2-7B"):
        assert heading in md, heading


@pytest.mark.parametrize(("path", "value", "named"), [
    (("operators", "operator_variant"), "no_such_variant", "operators.operator_variant"),
    (("operators", "oracle_rps"), [0.0], "operators.oracle_rps"),
    (("operators", "unknown_field"), 1, "operators.unknown_field"),
    (("acceptance", 0, "variant"), "no_such_variant", "acceptance.0"),
    (("acceptance", 0, "relation"), "=~", "acceptance.0.relation"),
])
def test_a_bad_field_is_one_error_naming_it(tmp_path: Path, path: tuple[Any, ...], value: Any, named: str) -> None:
    data = tiny_config()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    result = runner.invoke(app, ["experiment", "run", str(write_config(tmp_path, data)), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_the_shipped_config_runs_at_full_size(tmp_path: Path) -> None:
    # The acceptance run: every variant, the real data when it is here (else the fallback shape).
    data_dir = SHARED_DATA if SHARED_DATA.is_dir() else tmp_path / "no-data"
    out = tmp_path / "out"
    started = time.perf_counter()
    result = runner.invoke(app, ["experiment", "run", "operators", "--out", str(out), "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [v["name"] for v in summary["variants"]] == list(VARIANTS)
    assert all(v["ok"] and v["result"]["dropped"] == 0 for v in summary["variants"]), summary["variants"]
    assert "error" not in summary["operators"] and set(summary["operators"]["models"]) == set(MODELS)
    print(f"operators experiment: {time.perf_counter() - started:.0f} s wall")
    assert all(isinstance(check["passed"], bool) for check in summary["acceptance"])
    if SHARED_DATA.is_dir():  # issue 14's acceptance, met on the real data (README: the `operators` experiment)
        assert all(check["passed"] for check in summary["acceptance"]), summary["acceptance"]
    slo = summary["acceptance"][0]
    if not slo["passed"]:  # the fallback shape, unmeasured against it
        pytest.xfail(f"operator_level's interactive SLO is below model_level's on the fallback shape: {slo}")
