"""The HeteroScale study configs: the shipped ones load, a policy comparison is not taken for a study, and a
bad field is an error naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from opscale.experiments.comparison import ExperimentError, find_experiment
from opscale.experiments.heteroscale_study_config import MetricsStudyConfig, RatioStudyConfig, load_study

pytestmark = pytest.mark.unit


def test_the_shipped_studies_load() -> None:
    metrics = load_study(find_experiment("heteroscale-metrics"))
    ratio = load_study(find_experiment("heteroscale-ratio"))
    assert isinstance(metrics, MetricsStudyConfig) and isinstance(ratio, RatioStudyConfig)
    assert metrics.decode_instances >= 1 and metrics.load.steps_s
    assert len(ratio.mixes) >= 3 and ratio.instances >= 2
    assert load_study(find_experiment("sageserve")) is None  # a comparison of policies, not a study


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _ratio_study(**changes: object) -> dict:
    data = yaml.safe_load(find_experiment("heteroscale-ratio").read_text())
    data.update(changes)
    return data


@pytest.mark.parametrize(("changes", "named"), [
    ({"mixes": [{"name": "a", "lengths": "x.csv"}, {"name": "a", "lengths": "y.csv"}]}, "appear more than once"),
    ({"mixes": [{"name": "a"}]}, "give 'lengths'"),
    ({"instances": 1}, "instances"),
    ({"objective": "per_watt"}, "objective"),
    ({"study": "heteroscale-nope"}, "study"),
])
def test_a_bad_study_config_names_the_field(tmp_path: Path, changes: dict, named: str) -> None:
    with pytest.raises(ExperimentError, match=named):
        load_study(_write(tmp_path, _ratio_study(**changes)))


def test_a_bad_load_schedule_names_its_points(tmp_path: Path) -> None:
    data = yaml.safe_load(find_experiment("heteroscale-metrics").read_text())
    data["load"]["points"] = [[10, 0.2], [5, 1.0]]
    with pytest.raises(ExperimentError, match="points"):
        load_study(_write(tmp_path, data))
