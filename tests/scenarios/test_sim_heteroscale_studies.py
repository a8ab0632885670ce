"""HeteroScale's stress test, curation and the two studies, run small (seconds each) in the simulator:
curation gives a lighter mix a higher per-instance target, the ratio sweep moves its best split towards
prefill for a prefill-heavy mix, the metric study finds decode TPS proportional to the load and decode GPU
utilisation (time busy) pinned near 1, and both commands write their files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from opscale.cli import app
from opscale.experiments.comparison import find_experiment
from opscale.experiments.heteroscale_curation import curate_service
from opscale.experiments.heteroscale_study_config import MetricsStudyConfig, RatioStudyConfig
from opscale.experiments.stress import ProbeSettings, Service
from opscale.experiments.stress_traffic import RateSchedule, WorkloadMix
from opscale.model.tiers import INTERACTIVE
from opscale.planning.base import RolePoolSpec
from opscale.traces import LengthDistribution

pytestmark = pytest.mark.sim

SERVICE = Service("Llama-3-8B", RolePoolSpec(sku="L20"), RolePoolSpec(sku="H20"), INTERACTIVE)
SHORT = ProbeSettings(warmup_s=15.0, measure_s=45.0, drain_s=30.0, seed=3)
runner = CliRunner()


def _mix(name: str, prompt: float, output: float) -> WorkloadMix:
    return WorkloadMix(name=name, prompt_tokens=LengthDistribution(median_tokens=prompt, sigma=0.5, max_tokens=8192),
                       output_tokens=LengthDistribution(median_tokens=output, sigma=0.5, max_tokens=4096))


def test_curation_gives_a_lighter_mix_a_higher_per_instance_target() -> None:
    light = curate_service(SERVICE, _mix("light", 256, 128).sampler(None), instances=3, settings=SHORT)
    heavy = curate_service(SERVICE, _mix("heavy", 2048, 128).sampler(None), instances=3, settings=SHORT)
    assert light.service.decode_tps_per_instance > 1.5 * heavy.service.decode_tps_per_instance
    # the edge is measured: its latencies meet the tier's objectives
    for curated in (light.service, heavy.service):
        edge = curated.chosen.best
        assert edge is not None and edge.meets and edge.dropped == 0
        assert edge.ttft_p99_s is not None and edge.ttft_p99_s <= INTERACTIVE.ttft_slo_s


def _study(name: str, **changes: object) -> dict:
    data = yaml.safe_load(find_experiment(name).read_text())
    data.update(changes)
    return data


def test_the_ratio_sweep_moves_its_best_split_with_the_mix(tmp_path: Path) -> None:
    from opscale.experiments.heteroscale_studies import run_study

    config = RatioStudyConfig.model_validate(_study(
        "heteroscale-ratio", instances=4, data_dir=None,
        probe={"warmup_s": 15.0, "measure_s": 45.0, "drain_s": 30.0, "rel_tol": 0.05},
        mixes=[_mix("prefill-heavy", 2048, 16).model_dump(), _mix("decode-heavy", 128, 1024).model_dump()]))
    run_study(config, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    best = {v["name"]: v["result"]["best_split"]["prefill"] for v in summary["variants"]}
    assert best["prefill-heavy"] > best["decode-heavy"]
    assert (tmp_path / "tps_vs_ratio.png").stat().st_size > 10_000
    assert all(len(v["result"]["table"]) == 3 for v in summary["variants"])


def test_the_metric_study_finds_decode_tps_works_and_decode_gpu_utilisation_fails(tmp_path: Path) -> None:
    from opscale.experiments.heteroscale_studies import run_study

    config = MetricsStudyConfig.model_validate(_study(
        "heteroscale-metrics", data_dir=None, prefill_instances=3, decode_instances=1, window_s=20.0,
        load={"points": [[0, 0.2], [400, 1.0], [460, 1.0], [460, 0.3], [560, 0.3]], "peak_rps": 10.0,
              "steps_s": [460], "settle_s": 60.0}))
    run_study(config, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    signals = {v["name"]: v["result"] for v in summary["variants"]}
    # a short, noisy run: the verdict's thresholds are for the shipped ramp, the contrast shows here too
    tps, util = signals["decode_tps"], signals["decode_gpu_util"]
    assert tps["r2"] > 0.75 and 0.7 <= tps["elasticity"] <= 1.3 and tps["snr"] > 5
    assert util["verdict"] == "fails" and util["r2"] < 0.3 and abs(util["elasticity"]) < 0.1
    # time busy is near 1 from the lightest load on, while the decode TPS follows the load
    assert util["light_over_peak"] > 0.9 > 0.5 > signals["decode_tps"]["light_over_peak"]
    assert {p.name for p in tmp_path.iterdir()} >= {"summary.json", "summary.md", "series.json",
                                                    "signals_vs_load.png", "signals_over_time.png"}


def test_curate_command_writes_the_policy_parameters(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump({
        "duration_s": 60.0,
        "hosts": [{"region": "eu", "sku": "L20", "count": 1}, {"region": "eu", "sku": "H20", "count": 1}],
        "deployments": [{"model": "Llama-3-8B", "prefill": {"sku": "L20"}, "decode": {"sku": "H20"}}],
        "workload": {"duration_s": 60.0, "streams": [{"model": "Llama-3-8B", "region": "eu", "base_rps": 1.0}],
                     "prompt_tokens": {"median_tokens": 512, "sigma": 0.5, "max_tokens": 4096},
                     "output_tokens": {"median_tokens": 128, "sigma": 0.5, "max_tokens": 1024}}}))
    out = tmp_path / "curated.yaml"
    result = runner.invoke(app, ["heteroscale", "curate", "--scenario", str(scenario), "--model", "Llama-3-8B",
                                 "--instances", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    params = yaml.safe_load(out.read_text())
    assert set(params) == {"Llama-3-8B"}
    assert set(params["Llama-3-8B"]) == {"decode_tps_per_instance", "prefill_missed_tps_per_instance", "pd_ratio"}
    assert params["Llama-3-8B"]["decode_tps_per_instance"] > 0
    table = json.loads(out.with_suffix(".table.json").read_text())["Llama-3-8B"]["table"]
    assert [row["ratio"] for row in table] == ["1:2", "2:1"]
    bad = runner.invoke(app, ["heteroscale", "curate", "--scenario", str(scenario), "--model", "nope",
                              "--out", str(out)])
    assert bad.exit_code == 2 and "--model" in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(app, ["heteroscale", "curate", "--scenario", str(scenario), "--model", "Llama-3-8B",
                                  "--lengths", "absent.csv", "--data-dir", str(tmp_path), "--out", str(out)])
    assert missing.exit_code == 2 and "--lengths" in missing.output


def test_experiment_run_runs_a_study_config(tmp_path: Path) -> None:
    config = tmp_path / "tiny-metrics.yaml"
    config.write_text(yaml.safe_dump(_study(
        "heteroscale-metrics", data_dir=None, load={"points": [[0, 0.3], [200, 1.0]], "peak_rps": 6.0})))
    result = runner.invoke(app, ["experiment", "run", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [v["name"] for v in summary["variants"]][:2] == ["decode_tps", "prefill_tps"]
    hours = runner.invoke(app, ["experiment", "run", str(config), "--hours", "1", "--out", str(tmp_path / "o2")])
    assert hours.exit_code == 2 and "--hours" in hours.output


def test_rate_schedule_steps_and_ramps() -> None:
    schedule = RateSchedule(points=((0, 1.0), (10, 3.0), (10, 0.5), (20, 0.5)))
    assert schedule.rate(5) == pytest.approx(2.0)
    assert schedule.rate(10) == 0.5  # after the step
    assert schedule.mean_rate(0, 10) == pytest.approx(2.0)
    assert schedule.duration_s == 20 and schedule.peak_rps == 3.0
