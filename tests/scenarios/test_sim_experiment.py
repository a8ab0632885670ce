"""`opscale experiment run` end to end on a tiny experiment (two policies, a few simulated minutes, one
synthetic pool): every output is written, a failing variant is a row of the table and not an exception,
the same config gives the same result.json in this process and in worker processes, and the shipped
SageServe config loads and runs, shortened, through the command line."""

from __future__ import annotations

import json
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
MINUTES = 5.0

runner = CliRunner()


def tiny_config(variants: list[dict[str, Any]]) -> dict[str, Any]:
    duration_s = MINUTES * 60
    return {
        # copies: a test that edits its config's variants must not edit a list other tests share
        "name": "tiny", "parallel": 1, "variants": [dict(v) for v in variants],
        "base": {
            "name": "tiny pool", "seed": 11, "duration_s": duration_s, "sample_interval_s": 30.0,
            "hosts": [{"region": "eu", "sku": "H100-80GB", "gpus": 8, "count": 1}],
            "deployments": [{"model": "Llama-3-8B", "sku": "H100-80GB", "tp": 1, "min_replicas": 1,
                             "max_replicas": 3, "typical_prompt_tokens": 512, "typical_output_tokens": 128}],
            "workload": {"seed": 11, "start_s": 10.0, "duration_s": duration_s - 10.0, "amplitude": 0.6,
                         "period_s": duration_s,
                         "streams": [{"model": "Llama-3-8B", "region": "eu", "base_rps": 4.0}],
                         "prompt_tokens": {"median_tokens": 512, "sigma": 0.6, "max_tokens": 2048},
                         "output_tokens": {"median_tokens": 128, "sigma": 0.6, "max_tokens": 512}},
        },
        "reference": [{"claim": "fewer GPU-hours", "source": "a paper", "metric": "gpu_hours",
                       "variants": [variants[-1]["name"]], "baseline": variants[0]["name"],
                       "paper_change_pct": -25}],
    }


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(tmp_path: Path, data: dict[str, Any], out: str, parallel: int = 1) -> Path:
    config, base = load_experiment(write_config(tmp_path, data))
    run_and_write(config, base, tmp_path / out, parallel=parallel)
    return tmp_path / out


def without_wall(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "wall_s"}


TWO = [{"name": "static", "policy": "static"}, {"name": "reactive", "policy": "reactive"}]


def test_tiny_experiment_writes_every_output_in_process_and_in_workers(tmp_path: Path) -> None:
    in_process = run(tmp_path, tiny_config(TWO), "one", parallel=1)
    workers = run(tmp_path, tiny_config(TWO), "two", parallel=2)
    for out in (in_process, workers):
        for name in ("static", "reactive"):
            result = json.loads((out / name / "result.json").read_text())
            assert result["variant"] == name and result["policy"] == name
            assert result["requests"] > 500 and result["dropped"] == 0
            cdf = result["ttft_cdf"]["interactive"]
            assert [p for p, _ in cdf] == sorted(p for p, _ in cdf) and cdf[-1][0] == 100.0
            assert [s for _, s in cdf] == sorted(s for _, s in cdf)
            assert (out / name / "load_vs_capacity.png").stat().st_size > 5_000
        for png in ("demand_vs_capacity.png", "ttft_cdf.png", "gpus_by_sku.png"):
            assert (out / png).stat().st_size > 5_000, png
        table = (out / "summary.md").read_text()
        assert "| static | static |" in table and "| reactive | reactive |" in table
        assert "SLO interactive" in table and "Beside the published figures" in table
        summary = json.loads((out / "summary.json").read_text())
        assert [v["name"] for v in summary["variants"]] == ["static", "reactive"]
        assert all(v["ok"] for v in summary["variants"])
        static, reactive = (v["result"]["gpu_hours"] for v in summary["variants"])
        ours = summary["reference"][0]["ours_change_pct"]["reactive"]
        assert ours == pytest.approx((reactive - static) / static * 100, rel=1e-6)
    # the same config and seed: the same result in this process and in workers (wall time aside)
    for name in ("static", "reactive"):
        one = json.loads((in_process / name / "result.json").read_text())
        two = json.loads((workers / name / "result.json").read_text())
        assert without_wall(one) == without_wall(two)


def test_a_failing_variant_is_reported_and_the_others_complete(tmp_path: Path) -> None:
    variants = [{"name": "reactive", "policy": "reactive"}, {"name": "broken", "policy": "no_such_policy"}]
    out = run(tmp_path, tiny_config(variants), "out")
    summary = json.loads((out / "summary.json").read_text())
    ok, broken = summary["variants"]
    assert ok["ok"] and ok["result"]["requests"] > 500
    assert not broken["ok"] and "unknown planning policy 'no_such_policy'" in broken["error"]
    assert "reactive" in broken["error"]  # the message lists the known policies
    table = (out / "summary.md").read_text()
    assert "| broken | no_such_policy | **failed**: unknown planning policy" in table
    assert summary["reference"][0]["ours_change_pct"] == {"broken": None}
    assert (out / "reactive" / "result.json").exists() and not (out / "broken").exists()


def test_same_config_twice_gives_identical_results(tmp_path: Path) -> None:
    variants = [{"name": "kpa", "policy": "kpa"}]
    first = run(tmp_path, tiny_config(variants), "a")
    second = run(tmp_path, tiny_config(variants), "b")
    a = json.loads((first / "kpa" / "result.json").read_text())
    b = json.loads((second / "kpa" / "result.json").read_text())
    assert a["wall_s"] > 0 and without_wall(a) == without_wall(b)


@pytest.mark.slow
def test_cli_runs_the_shipped_sageserve_config_shortened(tmp_path: Path) -> None:
    # A few simulated minutes of the shipped config, with the real data when it is here and on the
    # documented fallback otherwise (an empty folder): both must run.
    data_dir = SHARED_DATA if SHARED_DATA.is_dir() else tmp_path / "no-data"
    out = tmp_path / "out"
    result = runner.invoke(app, ["experiment", "run", "sageserve", "--out", str(out), "--hours", "0.05",
                                 "--parallel", "1", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    shipped = yaml.safe_load(find_experiment("sageserve").read_text())
    assert [v["name"] for v in summary["variants"]] == [v["name"] for v in shipped["variants"]]
    assert all(v["ok"] for v in summary["variants"]), summary["variants"]
    sources = summary["traffic_sources"]
    assert set(sources) == {"Llama-3-8B", "Llama-2-7B", "Llama-3-70B", "Llama-2-70B"}
    real = SHARED_DATA.is_dir()
    assert all(("ServeGen" in s["rate_shape"]) == real for s in sources.values()), sources
    assert "SageServe, arXiv 2502.14617" in (out / "summary.md").read_text()


def test_cli_rejects_a_bad_config_naming_the_field(tmp_path: Path) -> None:
    data = tiny_config(TWO)
    data["variants"][0]["overrides"] = {"seed": 3}
    result = runner.invoke(app, ["experiment", "run", str(write_config(tmp_path, data))])
    assert result.exit_code == 2
    assert "variants.0.overrides" in result.output and "seed" in result.output
    assert "Traceback" not in result.output
