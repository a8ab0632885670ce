"""`opscale experiment run CONFIG --scale NAME` and `--variants`: a config's `scales:` block lays scenario
fields over its base; sageserve's `paper` scale is SageServe's own fleet and week (PAPERS.md §2.8);
a scale or variant the config does not define is a clear error (exit 2, the name, no traceback).
Nothing here runs a simulation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from opscale.cli import app
from opscale.experiments.comparison import (
    ExperimentError,
    find_experiment,
    load_experiment,
    scaled_base,
    select_variants,
)
from opscale.experiments.shaped_workload import SHAPE_STEP_S

runner = CliRunner()
DAY_S = 86_400.0


def test_the_paper_scale_is_sageserves_fleet_models_and_week() -> None:
    config, base = load_experiment(find_experiment("sageserve"))
    paper = scaled_base(config, base, "paper")
    # 3 regions x 40 eight-GPU DGX-A100 servers
    assert paper.regions() == ["centralus", "eastus", "westus"]
    for region in paper.regions():
        groups = [h for h in paper.hosts if h.region == region]
        assert [(h.sku, h.gpus) for h in groups] == [("A100-80GB", 8)]
        assert sum(h.count for h in groups) == 40
    # 4 models, every pool's peak (what `static` holds) fits a region's 320 GPUs
    assert len(paper.deployments) == 4 and {d.sku for d in paper.deployments} == {"A100-80GB"}
    assert sum(d.max_replicas * d.tp for d in paper.deployments) <= 320
    # a week of traffic: the simulated duration times the compression
    shaped = paper.shaped
    assert shaped is not None
    assert paper.duration_s * shaped.compress == pytest.approx(7 * DAY_S)
    assert (shaped.start_s + shaped.duration_s) * shaped.compress == pytest.approx(7 * DAY_S, rel=0.01)
    # millions of requests per day of traffic (the streams' mean rates over the regions)
    rps = sum(s.mean_rps for s in shaped.streams) * len(shaped.region_offsets_s)
    per_traffic_day = rps * DAY_S / shaped.compress
    assert per_traffic_day >= 1e6
    # what the default scale keeps: the seed, the traffic's shape, tiers and compression
    assert (paper.seed, shaped.seed, shaped.compress, paper.tiers) == (base.seed, base.shaped.seed,
                                                                       base.shaped.compress, base.tiers)
    assert SHAPE_STEP_S / shaped.compress < paper.duration_s
    # and every variant builds its scenario at that scale
    assert paper.region_rtt_ms()[("eastus", "westus")] > 0


def test_without_a_scale_the_base_is_unchanged() -> None:
    config, base = load_experiment(find_experiment("sageserve"))
    assert scaled_base(config, base, None) is base


@pytest.mark.parametrize("scale", ["papr", "PAPER"])
def test_a_scale_the_config_does_not_define_is_named(scale: str) -> None:
    config, base = load_experiment(find_experiment("sageserve"))
    with pytest.raises(ExperimentError, match=f"--scale '{scale}'.*its scales: paper"):
        scaled_base(config, base, scale)


def test_a_config_without_scales_says_so() -> None:
    config, base = load_experiment(find_experiment("heteroscale"))
    with pytest.raises(ExperimentError, match="no 'scales' block"):
        scaled_base(config, base, "paper")


def _config_with_scale(tmp_path: Path, scale: dict) -> Path:
    data = yaml.safe_load(find_experiment("sageserve").read_text())
    data["scales"] = {"big": scale}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_scale_with_an_unknown_field_is_refused_naming_it(tmp_path: Path) -> None:
    path = _config_with_scale(tmp_path, {"base": {"fleet": []}})
    with pytest.raises(ExperimentError, match=r"scales\.big.*unknown scenario fields \['fleet'\]"):
        load_experiment(path)


def test_a_scale_that_makes_a_bad_scenario_is_refused_when_the_config_loads(tmp_path: Path) -> None:
    path = _config_with_scale(tmp_path, {"base": {"duration_s": -1}})
    with pytest.raises(ExperimentError, match=r"scales\.big.*duration_s"):
        load_experiment(path)


def test_variants_filter_keeps_the_chosen_and_what_they_can_answer() -> None:
    config, _ = load_experiment(find_experiment("sageserve"))
    chosen = select_variants(config, ["sageserve_mip_multi", "reactive"])
    assert [v.name for v in chosen.variants] == ["reactive", "sageserve_mip_multi"]  # the config's order
    assert chosen.reference and all(f.baseline == "reactive" and f.variants == ["sageserve_mip_multi"]
                                    for f in chosen.reference)
    with pytest.raises(ExperimentError, match="'nope'.*its variants: static, reactive"):
        select_variants(config, ["reactive", "nope"])


def test_variants_filter_trims_the_combined_section_to_the_variants_that_run() -> None:
    config, _ = load_experiment(find_experiment("opscale"))
    assert config.combined is not None and len(config.combined.single_paper) > 1
    trimmed = select_variants(config, ["opscale", "heteroscale", "reactive"])
    assert trimmed.combined is not None
    assert (trimmed.combined.single_paper, trimmed.combined.slo_exempt) == (("heteroscale",), ())
    # what the filter returns is a config the loader would accept (combined names only variants that run)
    type(config).model_validate(trimmed.model_dump())
    # without the combined variant, or without any single-paper one, there is nothing to judge
    assert select_variants(config, ["heteroscale", "reactive"]).combined is None
    assert select_variants(config, ["opscale", "reactive"]).combined is None


def test_cli_refuses_a_bad_scale_name_clearly(tmp_path: Path) -> None:
    result = runner.invoke(app, ["experiment", "run", "sageserve", "--scale", "huge", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "--scale 'huge'" in result.output and "its scales: paper" in result.output
    assert "Traceback" not in result.output
    assert not any(tmp_path.iterdir())  # nothing ran


def test_cli_refuses_an_unknown_variant_clearly(tmp_path: Path) -> None:
    result = runner.invoke(app, ["experiment", "run", "sageserve", "--variants", "reactive,nope", "--out",
                                 str(tmp_path)])
    assert result.exit_code == 2 and "'nope'" in result.output and "Traceback" not in result.output
